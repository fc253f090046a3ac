"""What a trace saw, counted (legacytrace.summary): counts, the flow cap, the text and
the JSON object, on a journey built in tests/journeys.py.
"""
import json

from conftest import golden
from journeys import ev, journey, summary_of
from legacytrace.summary import Summary



def test_summary_counts():
    events = journey()
    summary = summary_of(events)
    summary.filtered += 5
    summary.add_lost({"ftrace overrun": 2})
    summary.add_lost({"ftrace overrun": 1, "rate limit": 4})
    data = summary.to_dict()
    assert data["events"] == len(events) == 12
    assert data["functions"]["ip_output"] == 2 and data["functions"]["kfree_skb"] == 1
    # ping out (seq 1 and 2 are one flow), ping in, NAT'd ping in, tcp6, udp; one without a tuple
    assert data["flows"] == 5 and data["no_flow_events"] == 1
    assert data["top_flows"][0] == dict(family=4, proto="icmp", saddr="10.0.2.15", sport=None,
                                        daddr="10.0.2.2", dport=None, events=4)
    assert data["lost"] == {"ftrace overrun": 3, "rate limit": 4} and data["lost_total"] == 7
    assert data["filtered"] == 5 and data["evicted"] == 0
    assert (data["first_ns"], data["last_ns"]) == (3607100000, 3607500000)
    json.dumps(data)


def test_summary_bounds_flows():
    summary = Summary(max_flows=2)
    for port in range(5):
        summary.add(ev(func="udp_sendmsg", proto=17, sport=port, dport=53))
    summary.add(ev(func="udp_sendmsg", proto=17, sport=0, dport=53))
    assert len(summary.flows) == 2 and summary.other_flow_events == 3
    assert summary.to_dict()["flows_capped"] is True
    assert summary.to_text().startswith("6 events in 2+ flows.")


def test_summary_text_golden():
    summary = summary_of(journey())
    summary.add_lost({"ftrace overrun cpu1": 3})
    summary.filtered = 2
    summary.evicted = 1
    golden("render/summary.txt", summary.to_text() + "\n")


def test_summary_text_says_when_nothing_was_lost():
    assert summary_of([]).to_text() == "0 events in 0 flows.\nlost events: none"


def test_a_batch_counts_as_its_events_one_by_one():
    events = journey()
    batch = Summary()
    batch.add_all(events[:5])
    batch.add_all(events[5:])
    assert batch.to_dict() == summary_of(events).to_dict()


def test_the_span_is_said_in_milliseconds_below_a_second_and_seconds_above():
    short = summary_of(journey())
    assert short.to_text().splitlines()[0] == "12 events in 5 flows over 0.400 ms."
    long = summary_of([ev(func="ip_rcv", time_ns=1000000000), ev(func="ip_rcv", time_ns=3500000000)])
    assert long.to_text().splitlines()[0] == "2 events in 1 flow over 2.500 s."


def test_events_without_a_tuple_are_counted_apart():
    summary = summary_of([ev(func="net:net_dev_queue", family=None, proto=None, saddr=None,
                             daddr=None)])
    assert summary.to_dict()["no_flow_events"] == 1 and summary.flows == {}
    assert "         1  events without an address tuple" in summary.to_text()


def test_what_user_space_dropped_and_the_view_evicted_is_said():
    summary = summary_of(journey())
    summary.filtered, summary.evicted = 3, 2
    text = summary.to_text()
    assert "filtered out in user space: 3" in text
    assert "packets printed before their end (too many open): 2" in text
