"""Renderers: the output formats, column by column, against golden files.

The events are built here (the format is what is under test, not a parser).
The golden files regenerate as tests/conftest.py says.
"""
import io
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from conftest import GOLDEN, golden
from journeys import SKB_OUT, ev, journey, ping_in, ping_out, summary_of
from legacytrace.model import FlowEvent
from legacytrace.render import FlowsRenderer, JsonRenderer, LiveRenderer
from legacytrace.summary import Summary


def render(renderer, events, summary=None):
    for event in events:
        renderer.event(event)
    renderer.close(summary or Summary())


def live_text(events, **options):
    out = io.StringIO()
    render(LiveRenderer(out, **options), events)
    return out.getvalue()


def test_live_golden():
    golden("render/live.txt", live_text(journey()))


def test_live_color_golden():
    golden("render/live_color.txt", live_text(journey(), color=True))


def test_live_replay_has_no_command_lines():
    text = live_text(journey(), cmdline=False)
    assert "cmd=" not in text
    assert text.splitlines()[1:] == [line.split(" cmd=")[0] for line in live_text(journey()).splitlines()[1:]]


def test_live_columns_stay_under_their_header():
    events = journey()
    header, *lines = live_text(events).splitlines()
    assert header.split() == ["TIME", "CPU", "PROCESS", "FUNCTION", "LEN", "FLOW"]
    left = dict((title, header.index(title)) for title in ("PROCESS", "FUNCTION", "FLOW"))
    right = dict((title, header.index(title) + len(title)) for title in ("TIME", "CPU", "LEN"))
    expect = {
        "TIME": "3.607100", "CPU": "0", "PROCESS": "ping[4242]", "FUNCTION": "ip_output",
        "FLOW": "icmp 10.0.2.15 > 10.0.2.2 echo-request id=7 seq=1", "LEN": "84"}
    first = lines[0]
    for title, start in left.items():
        assert first[start:].startswith(expect[title] + " "), title
        assert first[start - 1] == " ", title
    for title, end in right.items():
        assert first[:end].endswith(" " + expect[title]), title
    # Every event: each cell where its header says, the flow and extras after LEN.
    for event, line in zip(events, lines):
        assert line[left["FUNCTION"]:].startswith(event.func)
        assert line[:right["CPU"]].endswith(" " + ("-" if event.cpu is None else str(event.cpu)))
        assert line[:right["LEN"]].endswith(" " + ("-" if event.length is None else str(event.length)))
        flow = line[left["FLOW"]:]
        assert flow.startswith("-" if event.family is None else
                               {1: "icmp ", 6: "tcp ", 17: "udp "}[event.proto])
        assert line == line.rstrip()


def test_live_interrupt_context_blames_no_task():
    line = live_text([ping_in(1000, "ip_rcv")]).splitlines()[1]
    assert "[softirq]" in line
    assert "swapper" not in line and "[0]" not in line and "cmd=" not in line


def test_live_exited_process_and_return_value():
    lines = live_text(journey()).splitlines()
    assert lines[11].endswith(" cmd=[exited]")
    assert " ip6_finish_output()=-1 " in lines[6]


def test_live_escapes_what_the_traced_system_wrote():
    text = live_text(journey())
    assert "\x1b" not in text and "\x07" not in text
    last = text.splitlines()[-1]
    assert "evil\\x1b[2Jcomm[666]" in last
    assert 'note="a b\\x07\\"c\\""' in last


def test_live_prints_nothing_without_events():
    assert live_text([]) == ""


def test_json_lines_are_to_dict_and_nothing_else():
    events = journey()
    out = io.StringIO()
    render(JsonRenderer(out), events)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(events)
    for event, line in zip(events, lines):
        assert json.loads(line) == json.loads(json.dumps(event.to_dict()))
        assert "type" not in json.loads(line)
    assert "\x1b" not in out.getvalue()
    golden("render/events.jsonl", out.getvalue())


def test_json_summary_only_when_asked():
    events = journey()
    summary = Summary()
    for event in events:
        summary.add(event)
    summary.add_lost({"ftrace overrun cpu1": 3})
    out = io.StringIO()
    render(JsonRenderer(out, summary=True), events, summary)
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["type"] == "summary"
    assert last["events"] == len(events) and last["lost_total"] == 3
    assert last["functions"]["ip_output"] == 2


def flows_text(events, summary=None, **options):
    out = io.StringIO()
    options.setdefault("egress", ("kfree_skb", "consume_skb"))
    render(FlowsRenderer(out, **options), events, summary)
    return out.getvalue()


def test_flows_golden():
    golden("render/flows.txt", flows_text(journey()))


def test_flows_color_golden():
    golden("render/flows_color.txt", flows_text(journey(), color=True))


def test_flows_block_printed_at_egress_not_before():
    out = io.StringIO()
    renderer = FlowsRenderer(out, egress=("kfree_skb",))
    for event in journey()[:8]:
        renderer.event(event)
    assert out.getvalue() == ""
    renderer.event(journey()[8])
    blocks = out.getvalue().split("\n\n")
    assert blocks[0].startswith("=== icmp 10.0.2.2 > 10.0.2.15 echo-reply id=7 seq=1  skb=0xffff8dcf81336a00")
    funcs = [line.split()[3] for line in blocks[0].splitlines()[1:-1]]
    assert funcs == ["ip_rcv", "icmp_rcv", "ip_local_deliver", "kfree_skb"]
    assert blocks[0].splitlines()[-1] == "--- 4 events in 13.250us, ended at kfree_skb"


def test_flows_deltas_and_owner():
    blocks = flows_text(journey()[:4]).split("\n\n")
    block = [b for b in blocks if "skb=0x{:x}".format(SKB_OUT) in b][0].splitlines()
    assert block[1].split() == ["by", "ping[4242]", 'cmd="ping', "-c", "1", '10.0.2.2"']
    assert [line.split()[0] for line in block[2:5]] == ["+0.000us", "+3.210us", "+55.500us"]


def test_flows_shows_nat_where_it_happens():
    block = flows_text(journey()).split("\n\n")[0].splitlines()
    nat = [line for line in block if "flow=" in line]
    assert len(nat) == 1 and " ip_local_deliver " in nat[0]
    assert nat[0].endswith('flow="icmp 10.0.2.2 > 192.168.7.1 echo-reply id=7 seq=1"')


def test_flows_evicts_least_recently_active_and_counts_it():
    summary = Summary()
    a, b, c = (ping_out(1000 * n, "ip_output", skb=0x1000 * n) for n in (1, 2, 3))
    again = ping_out(1500, "ip_finish_output", skb=a.skb)
    text = flows_text([a, b, again, c], summary=summary, max_open=2)
    blocks = text.strip("\n").split("\n\n")
    assert "skb=0x2000" in blocks[0] and "printed early: more than 2 packets open" in blocks[0]
    assert [block.splitlines()[0].split("skb=")[1].split()[0] for block in blocks] == \
        ["0x2000", "0x1000", "0x3000"]
    assert summary.evicted == 1


def test_flows_max_functions_caps_lines_and_memory():
    events = [ping_out(1000 + n, "f{}".format(n)) for n in range(10)]
    block = flows_text(events, max_functions=3).splitlines()
    assert [line.split()[3] for line in block[2:5]] == ["f0", "f1", "f2"]
    assert block[5].strip() == "... 7 more"
    assert block[6] == "--- 10 events in 0.009us, still open when the trace ended"


def test_flows_event_without_skb_is_its_own_block():
    text = flows_text([journey()[-1]])
    assert text.startswith("=== udp 10.0.2.15:5353 > 10.0.2.2:53  skb=-  at 3.607500")
    assert "no sk_buff to follow" in text


@pytest.mark.parametrize("name", ["live.txt", "flows.txt", "events.jsonl"])
def test_plain_output_has_no_escape_sequences(name):
    with io.open(os.path.join(GOLDEN, "render", name), encoding="utf-8") as saved:
        assert "\x1b" not in saved.read()



def test_json_odd_values_still_give_what_to_dict_says():
    # FlowEvent's constructor refuses the first three: _replace (as a buggy parser) does not.
    odd = [
        ev(func="f", time_ns=1, cpu=0)._replace(length="84"),        # a str where an int belongs
        ev(func="f")._replace(time_ns=1.5, cpu=True),                # a float, a bool
        ev(func="f", time_ns=1, cpu=0)._replace(comm=17),            # an int where a str belongs
        ev(func="f", proto=132, time_ns=1, cpu=0, fields={"b": b"\x01", "n": None}),
        ev(func="f\u00e9\x1b", time_ns=1, cpu=0, proto=None, fields=None),
    ]
    out = io.StringIO()
    render(JsonRenderer(out), odd)
    for event, line in zip(odd, out.getvalue().splitlines()):
        assert json.loads(line) == json.loads(json.dumps(event.to_dict(), default=str)), line
    assert max(map(ord, out.getvalue())) < 128


_text = st.text(max_size=20)


_maybe_int = st.none() | st.integers(min_value=-2 ** 63, max_value=2 ** 64)


_events = st.builds(
    FlowEvent, backend=st.sampled_from(["stap", "ftrace", "bpf"]),
    source=st.sampled_from(["kprobe", "kretprobe", "tracepoint"]),
    time_ns=st.none() | st.integers(min_value=0, max_value=2 ** 64), cpu=_maybe_int,
    pid=_maybe_int, tid=_maybe_int, comm=st.none() | _text,
    context=st.sampled_from(["task", "softirq", "hardirq", "nmi"]), func=_text,
    kind=st.sampled_from(["entry", "return"]), retval=_maybe_int,
    skb=st.none() | st.integers(min_value=0, max_value=2 ** 64 - 1),
    family=st.sampled_from([None, 4, 6]), proto=st.sampled_from([None, 1, 6, 17, 58, 132]),
    saddr=st.none() | _text, daddr=st.none() | _text, sport=_maybe_int, dport=_maybe_int,
    icmp_type=_maybe_int, icmp_code=_maybe_int, icmp_id=_maybe_int, icmp_seq=_maybe_int,
    length=_maybe_int, dev=st.none() | _text,
    fields=st.dictionaries(_text, _text | st.integers(), max_size=3), cmdline=st.none() | _text)


@settings(max_examples=100, deadline=None)
@given(st.lists(_events, max_size=8))


def test_any_events_render_in_every_format(events):
    summary = summary_of(events)
    live, lines, flows = io.StringIO(), io.StringIO(), io.StringIO()
    for renderer in (LiveRenderer(live), LiveRenderer(io.StringIO(), color=True),
                     JsonRenderer(lines, summary=True),
                     FlowsRenderer(flows, egress=("kfree_skb",), max_open=2)):
        render(renderer, events, summary)
    assert len(live.getvalue().splitlines()) == (len(events) + 1 if events else 0)
    parsed = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert parsed[:-1] == [json.loads(json.dumps(e.to_dict())) for e in events]
    assert parsed[-1]["type"] == "summary"
    for text in (live.getvalue(), flows.getvalue()):
        assert all(c.isprintable() or c == "\n" for c in text)
    assert flows.getvalue().count("\n=== ") + flows.getvalue().startswith("=== ") == \
        flows.getvalue().count("\n--- ")


def test_the_owner_stands_beside_the_task_in_both_views():
    """A datagram the UDP server of the owners-6.18 capture received in softirq, and the
    client's send in its own task, with their owners (tests/test_owners.py)."""
    from test_owners import attributed, pid_of
    events, record, _ = attributed()
    server, client = pid_of(record, "udp_server"), pid_of(record, "udp_client")
    udp = [e for e in events if e.dport == record["ports"]["udp"]][:2]
    udp[0] = udp[0]._replace(cmdline="python client.py")
    udp[1] = udp[1]._replace(owner_cmdline="python server.py")
    sent, received = live_text(udp).splitlines()[1:]
    assert " python[{}] ".format(client) in sent and " for " not in sent
    assert sent.endswith('cmd="python client.py"')
    assert " [softirq] for python[{}] ".format(server) in received
    assert received.endswith('cmd="python server.py"')
    block = flows_text(udp, egress=()).splitlines()
    assert block[1].split() == ["by", "python[{}]".format(client), 'cmd="python', 'client.py"']
    assert block[2].split() == ["for", "python[{}]".format(server), 'cmd="python', 'server.py"']
