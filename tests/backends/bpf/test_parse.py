"""The bpf backend's parser (backends/bpf/parse.py) on LTB2 lines bpftrace printed on a
real kernel (tests/data/bpf/README.md says how they were captured), and on damaged ones.
"""
import os

import pytest
from hypothesis import given, settings, strategies as st

from . import DATA
from legacytrace import backends
from legacytrace.backends.bpf import parse as bpf_parse


def captured(name="loopback-6.18.txt"):
    with open(os.path.join(DATA, name)) as capture:
        return [line.rstrip("\n") for line in capture if not line.startswith("#")]


def events(name="loopback-6.18.txt"):
    parser = backends.get("bpf")
    return [parser.parse(line) for line in captured(name)]


def test_every_captured_line_is_an_event():
    parsed = events()
    assert parsed and all(event is not None for event in parsed)
    assert all(event.backend == "bpf" and event.source == "tracepoint" for event in parsed)
    assert all(event.dev == "lo" for event in parsed)


def test_ping_request_is_attributed_to_ping_on_transmit():
    first = events()[0]
    assert (first.func, first.context, first.comm) == ("net:net_dev_queue", "task", "ping")
    assert (first.family, first.proto, first.saddr, first.daddr) == (4, 1, "127.0.0.1", "127.0.0.1")
    assert (first.icmp_type, first.icmp_code, first.icmp_seq) == (8, 0, 1)
    # A root ping uses its pid as the ICMP identifier (iputils, raw socket).
    assert first.icmp_id == first.pid == first.tid
    assert first.length == 98 and first.sport is None and first.skb > 0xffff000000000000


def test_receive_and_reply_run_in_softirq():
    ping4 = [e for e in events() if e.family == 4 and e.proto == 1 and e.comm == "ping"]
    assert [(e.func, e.icmp_type, e.context) for e in ping4] == [
        ("net:net_dev_queue", 8, "task"), ("net:netif_receive_skb", 8, "softirq"),
        ("net:net_dev_queue", 0, "softirq"), ("skb:consume_skb", 8, "softirq"),
        ("net:netif_receive_skb", 0, "softirq"), ("skb:kfree_skb", 0, "softirq")]
    assert ping4[3].fields == {"caller": "icmp_rcv"}
    assert ping4[5].fields == {"caller": "ping_rcv", "reason": 3}
    # The same sk_buff from transmit to receive on loopback.
    assert ping4[0].skb == ping4[1].skb == ping4[3].skb


def test_ipv6_addresses_and_icmpv6_echo():
    ping6 = [e for e in events() if e.family == 6]
    assert ping6 and all((e.saddr, e.daddr, e.proto) == ("::1", "::1", 58) for e in ping6)
    assert [e.icmp_type for e in ping6[:3]] == [128, 128, 129]
    assert ping6[0].icmp_id == ping6[0].pid and ping6[0].icmp_seq == 1


def test_udp_ports_and_the_port_unreachable_it_caused():
    parsed = events()
    udp = [e for e in parsed if e.proto == 17]
    assert udp and all((e.saddr, e.daddr, e.dport) == ("127.0.0.1", "127.0.0.1", 9999)
                       for e in udp)
    assert len(set(e.sport for e in udp)) == 1
    assert udp[-1].fields["caller"] == "__udp4_lib_rcv"
    unreachable = [e for e in parsed if e.proto == 1 and e.icmp_type == 3]
    assert unreachable and all(e.icmp_code == 3 and e.icmp_id is None for e in unreachable)


def test_tcp_ports_in_both_directions():
    tcp = [e for e in events() if e.proto == 6]
    client = tcp[0].sport, tcp[0].dport
    assert all((e.sport, e.dport) in (client, client[::-1]) for e in tcp)
    assert sum((e.sport, e.dport) == client[::-1] for e in tcp) >= 2


@pytest.mark.parametrize("line", [
    "", "Attaching 10 probes...", "LTB2\tBEGIN\tlt4242", "Lost 12 events", "\n", "LTB2",
    "LT2\ttracepoint\tx" + "\t0" * 23 + "\t-\tping",
    "LTB2\tuprobe\tx" + "\t0" * 23 + "\t-\tping",
    # the line protocol before the socket column
    "LTB1\ttracepoint\tnet:net_dev_queue\t1\t0\t1\t1\t0\tffff" + "\t0" * 15 + "\t-\tping",
])


def test_lines_that_are_not_events(line):
    assert backends.get("bpf").parse(line) is None


def test_comm_may_hold_tabs_and_is_the_rest_of_the_line():
    line = captured()[0].rsplit("\t", 1)[0] + "\tmy\tcomm "
    assert backends.get("bpf").parse(line).comm == "my\tcomm "


def test_truncated_and_damaged_captured_lines_never_raise():
    parser = backends.get("bpf")
    for line in captured():
        for cut in range(len(line)):
            parser.parse(line[:cut])
        fields = line.split("\t")
        for i in range(1, len(fields)):
            damaged = fields[:i] + ["zz"] + fields[i + 1:]
            parser.parse("\t".join(damaged))


def test_a_batch_parses_as_its_lines_one_by_one_damaged_ones_included():
    """The live trace parses what each read of bpftrace returns at once (parse_lines)."""
    lines = []
    for line in captured():
        lines += [line, line[:len(line) // 2], line.replace("\t4\t", "\tzz\t"), ""]
    parser = backends.get("bpf")
    alone = [parser.parse(line) for line in lines]
    assert parser.parse_lines(lines) == [event for event in alone if event is not None]
    assert len([event for event in alone if event is not None]) > len(captured())


@settings(max_examples=300, deadline=None)
@given(st.text())


def test_parse_never_raises(text):
    backends.get("bpf").parse("LTB2\t" + text)
    backends.get("bpf").parse(text)


def test_captured_custom_fields_become_ints_and_text():
    parser = backends.get("bpf")
    events = [parser.parse(line) for line in captured("fields-6.18.txt")]
    assert events and all(events)
    xmit = [e for e in events if e.func == "net:net_dev_queue"]
    assert xmit and all(e.fields["dev"] == "lo" and e.fields["ifindex"] == 1 for e in xmit)
    assert {e.fields["family"] for e in xmit} == {2, 10}
    assert all(e.fields["family"] == {4: 2, 6: 10}[e.family] for e in xmit)
    assert all(isinstance(e.fields["tstamp"], int) and e.fields["gso"] == 0 for e in xmit)
    drops = [e for e in events if e.func == "skb:kfree_skb"]
    assert {e.fields["caller"] for e in drops} >= {"__udp4_lib_rcv"}
    assert all(isinstance(e.fields["reason"], int) for e in drops)


@pytest.mark.parametrize("text, fields", [
    ("peek=\\x47\\x45\\x54\\x20\\x2f\\x20\\x48\\x54\\x54\\x50\\x2f\\x31\\x2e\\x31\\x0d\\x0a",
     {"request": "GET / HTTP/1.1"}),
    ("peek=\\x00\\x01\\x5c", {"peek": "\\x00\\x01\\\\"}),
    ("peek=", {}),
    ("reason=2,caller=__udp4_lib_rcv,mark=0", {"reason": 2, "caller": "__udp4_lib_rcv", "mark": 0}),
    ("dev=\\x6c\\x6f\\x00\\x00", {"dev": "lo"}),
])


def test_extras_column_decoding(text, fields):
    assert bpf_parse.extra_fields(text) == fields


@pytest.mark.parametrize("text", ["peek=\\x4", "peek=\\y41", "peek=x41x", "dev=\\x6"])
def test_a_damaged_hex_value_is_not_an_event(text):
    line = captured("fields-6.18.txt")[0].split("\t")
    line[23] = text
    assert backends.get("bpf").parse("\t".join(line)) is None
