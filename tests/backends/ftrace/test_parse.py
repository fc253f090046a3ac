"""The ftrace line parser on output captured from real kernels (tests/data/ftrace/README.md)."""
import collections
import re
import struct
from pathlib import Path

import pytest

from conftest import DATA as ALL_DATA
from legacytrace.backends.ftrace.parse import FLOW_FIELDS, LineParser, decode_ip, parse_line
from legacytrace.model import FlowEvent

DATA = Path(ALL_DATA) / "ftrace"

# Observed on 3.10.0-1160.el7 before the lab had it (kprobe `r` on ip_rcv, len=+104(%di):u32)
EL7_LINES = [
    "            ping-72    [000] d.s1     3.288210: r: (ip_rcv+0x0/0x3e0) len=0x54",
    "            ping-72    [000] dNs1     3.296373: r: (ip_rcv+0x0/0x3e0) len=0x54",
]
# Observed on the 6.1 lab kernel (len=...:u32, decimal)
LAB61_LINE = ("ping-87 [000] ..s1. 3.607227: iprcv: (ip_rcv+0x0/0x1d0) "
              "skb=0xffff8dcf81335800 len=84")


def test_el7_kprobe_lines_hex_values_and_four_flag_columns():
    events = [parse_line(line) for line in EL7_LINES]
    for event in events:
        assert (event.comm, event.pid, event.tid, event.cpu) == ("ping", 72, 72, 0)
        assert (event.func, event.source, event.kind) == ("ip_rcv", "kprobe", "entry")
        assert event.length == 0x54 == 84
        assert event.context == "softirq"
    assert [e.time_ns for e in events] == [3288210000, 3296373000]


def test_61_kprobe_line_decimal_value_five_flag_columns():
    event = parse_line(LAB61_LINE)
    assert event.skb == 0xffff8dcf81335800
    assert event.length == 84                       # decimal: the pointer has 0x
    assert (event.comm, event.pid, event.context) == ("ping", 87, "softirq")


def test_a_counter_clock_time_is_kept_as_printed_alone_and_in_a_batch():
    """A non-nanosecond trace_clock (counter, x86-tsc) prints a plain number instead of
    `secs.usecs` (docs/kernel-facts.md), here on the lab's real line."""
    line = LAB61_LINE.replace(" 3.607227: ", " 3607227: ")
    assert parse_line(line).time_ns == 3607227
    assert LineParser().parse_lines([line, LAB61_LINE]) == [parse_line(line), parse_line(LAB61_LINE)]
    assert parse_line(LAB61_LINE).time_ns == 3607227000


def _trace_lines(name):
    return (DATA / name).read_text().splitlines()


@pytest.mark.parametrize("name", ["tracepoints-6.18-lo.trace", "sh-capture-6.18.trace"])
def test_tracepoint_captures_every_event_line_parses(name):
    lines = _trace_lines(name)
    event_lines = [l for l in lines if not l.startswith("#") and l.strip()]
    events = [parse_line(l) for l in event_lines]
    assert events and all(isinstance(e, FlowEvent) for e in events)
    for line, event in zip(event_lines, events):
        assert event.source == "tracepoint"
        system, event_name = event.func.split(":")      # one name for every backend
        assert ": {}: ".format(event_name) in line and system in ("net", "skb")
        assert event.skb == int(re.search(r"skbaddr=([0-9a-f]+)", line).group(1), 16)
        assert event.family is None and event.saddr is None    # no tuple from a tracepoint
        length = re.search(r" len=(\d+)", line)
        assert event.length == (int(length.group(1)) if length else None)
    assert all(parse_line(l) is None for l in lines if l.startswith("#"))


def test_tracepoint_fields_drop_reason_context_and_device():
    events = [parse_line(l) for l in _trace_lines("tracepoints-6.18-lo.trace")]
    events = [e for e in events if e]
    drops = [e for e in events if e.func == "skb:kfree_skb"]
    assert {e.fields["reason"] for e in drops} >= {"NO_SOCKET", "QUEUE_PURGE"}
    assert any(e.fields["caller"] == "ping_rcv+0xab" for e in drops)   # location, as %pS
    assert all("location" not in e.fields for e in drops)
    assert {e.fields.get("family") for e in drops} == {4, 6}     # protocol=2048 / 34525
    first_queue = next(e for e in events if e.func == "net:net_dev_queue")
    assert (first_queue.comm, first_queue.pid, first_queue.dev, first_queue.length) == \
        ("ping", 10181, "lo", 98)
    assert first_queue.context == "task"             # `b....`: BH disabled, not softirq
    receive = next(e for e in events if e.func == "net:netif_receive_skb")
    assert receive.context == "softirq"              # `..s1.`
    assert receive.skb == first_queue.skb            # the same sk_buff, unhashed
    assert first_queue.time_ns == 360014627000


@pytest.mark.parametrize("line", [
    "", "# tracer: nop", "CPU:1 [LOST 12 EVENTS]", "garbage-1 [000] ..s1. 1.0: ip_rcv: (oops",
    "ping-1 [000] ..s1. 1.000001: ev: (ip_rcv+0x0/0x10) skb=0xzz len=0x1",
    "ping-1 [000] ..s1. 1.000001: unknown_tp: a=1",
])
def test_parse_never_raises_and_rejects_non_events(line):
    assert parse_line(line) is None


# -- IP/transport decoding on real packets (pcap), checked against tcpdump's text ----------

def _pcap_packets():
    blob = (DATA / "lo-packets-6.18.pcap").read_bytes()
    assert struct.unpack_from("<I", blob)[0] == 0xa1b2c3d4
    at, packets = 24, []
    while at < len(blob):
        incl = struct.unpack_from("<IIII", blob, at)[2]
        packets.append(blob[at + 16:at + 16 + incl])
        at += 16 + incl
    return packets


_ADDR = r"((?:\d+\.){3}\d+|[0-9a-f:]+)(?:\.(\d+))?"
_TCPDUMP = re.compile(r"^\S+ IP6? {0} > {0}: (.*)$".format(_ADDR))


def _truth():
    for line in (DATA / "lo-packets-6.18.txt").read_text().splitlines():
        src, sport, dst, dport, rest = _TCPDUMP.match(line).groups()
        proto = 58 if rest.startswith("ICMP6") else 1 if rest.startswith("ICMP") else \
            17 if rest.startswith("UDP") else 6
        yield src, dst, proto, int(sport) if sport else None, int(dport) if dport else None, rest


def _decode(buf, at):
    flow = decode_ip(buf, at)
    return None if flow is None else FlowEvent(**dict(zip(FLOW_FIELDS, flow)))


def test_pcap_and_ground_truth_agree_in_count():
    assert len(_pcap_packets()) == len(list(_truth())) == 21


@pytest.mark.parametrize("where", ["l3", "l2", "l4"])
def test_decode_ip_matches_tcpdump_whatever_data_points_at(where):
    """The same window bytes as the kprobes fetch, with skb->data at L3, L2 or L4."""
    for packet, (src, dst, proto, sport, dport, rest) in zip(_pcap_packets(), _truth()):
        l3 = packet[14:]
        header = 40 if l3[0] >> 4 == 6 else (l3[0] & 15) * 4
        if where == "l3":
            buf, at = l3[:48], 0                       # window data+0 .. +48
        elif where == "l2":
            buf, at = packet[8:64], 6                  # window data+8 .. +64, IP at +14
        else:
            room = bytes(40) + packet                   # the skb's headroom before L2
            data = 40 + 14 + header                     # data at the transport header
            buf, at = room[data - 40:data + 8], 40 - header
        event = _decode(buf, at)
        assert event is not None, rest
        assert (event.saddr, event.daddr, event.proto) == (src, dst, proto)
        assert (event.family == 6) == (":" in src)
        if proto in (6, 17):
            assert (event.sport, event.dport) == (sport, dport)
        else:
            assert event.sport is None
            kind = {"echo request": (8, 128), "echo reply": (0, 129)}
            for words, types in kind.items():
                if words in rest:
                    assert event.icmp_type in types
                    assert event.icmp_id == int(re.search(r"id (\d+)", rest).group(1))
                    assert event.icmp_seq == int(re.search(r"seq (\d+)", rest).group(1))


def test_decode_ip_refuses_what_is_not_an_ip_header():
    packet = _pcap_packets()[0]
    assert _decode(packet, 0) is None                   # the Ethernet header, not IP
    assert _decode(packet[14:], 0) is not None
    assert decode_ip(packet[14:], 0, eth_le=0xdd86) is None   # skb->protocol says IPv6
    assert decode_ip(packet[14:30], 0) is None          # shorter than the header
    assert decode_ip(packet[14:], -2) is None


#: kernel -> (ping's pid in its sh capture, the device queue function its capture probed)
LAB_CAPTURES = {"6.1": (131, "__dev_queue_xmit"), "el7": (153, "dev_queue_xmit")}


@pytest.mark.parametrize("kernel", sorted(LAB_CAPTURES))
def test_kprobe_capture_of_the_sh_script_gives_the_ping_tuples(kernel):
    """Real lines of our own probes (6.1: x-types hex; EL7: u-types printing hex, four flag
    characters): window words, dev string and (fault)."""
    pid = LAB_CAPTURES[kernel][0]
    lines = _trace_lines("kprobe-{}-sh-capture.trace".format(kernel))
    events = [parse_line(l) for l in lines[1:]]
    assert len(events) == 8 and all(events)
    for event in events:
        assert (event.family, event.proto, event.saddr, event.daddr) == (4, 1, "127.0.0.1", "127.0.0.1")
        assert (event.length, event.icmp_code, event.icmp_id) == (84, 0, pid)   # ping's id is its pid
        assert (event.comm, event.pid, event.source) == ("ping", pid, "kprobe")
        assert event.dev == ("lo" if event.func == "ip_rcv" else None)         # dev=(fault) at ip_output
    requests = [e for e in events if e.icmp_type == 8]
    replies = [e for e in events if e.icmp_type == 0]
    assert [e.icmp_seq for e in requests] == [1, 1, 2, 2] and [e.icmp_seq for e in replies] == [1, 1, 2, 2]
    # the requests leave ip_output from ping itself; the replies are sent in softirq context
    assert [e.context for e in requests if e.func == "ip_output"] == ["task", "task"]
    assert {e.context for e in replies} == {"softirq"}
    # each sk_buff is seen at ip_output and then at ip_rcv
    assert [e.skb for e in events if e.func == "ip_output"] == [e.skb for e in events if e.func == "ip_rcv"]


@pytest.mark.parametrize("kernel", sorted(LAB_CAPTURES))
def test_all_traffic_capture_agrees_with_tcpdump_and_the_senders(kernel):
    """Real lab lines of every probe: the tuple at ip_rcv and at the transmit functions is
    tcpdump's for every packet, and the echo requests leave ip_output from ping's pid."""
    import json
    name = "kprobe-{}-all-traffic".format(kernel)
    lines = [l for l in _trace_lines(name + ".trace") if l]
    events = [parse_line(l) for l in lines]
    assert all(events)
    truth = set()
    for line in (DATA / (name + ".tcpdump.txt")).read_text().splitlines():
        src, sport, dst, dport, rest = _TCPDUMP.match(line).groups()
        proto = 1 if rest.startswith("ICMP") else 17 if rest.startswith("UDP") else 6
        truth.add((src, dst, proto, int(sport) if sport else None, int(dport) if dport else None))
    for func in ("ip_rcv", "ip_local_deliver", "ip_output", "ip_finish_output", LAB_CAPTURES[kernel][1]):
        seen = set((e.saddr, e.daddr, e.proto, e.sport, e.dport) for e in events if e.func == func)
        assert seen == truth, func
    workloads = dict((w["name"], w) for w in json.loads((DATA / (name + ".workloads.json")).read_text()))
    echo = [e for e in events if e.func == "ip_output" and e.icmp_type == 8]
    assert [e.pid for e in echo] == [workloads["ping"]["pid"]] * 2
    closed = [e for e in events if e.func == "ip_output" and e.dport == workloads["udp-closed"]["dport"]]
    assert [e.pid for e in closed] == [workloads["udp-closed"]["pid"]]
    connect = [e for e in events if e.func == "tcp_connect"]
    assert [(e.pid, e.dport, e.proto, e.daddr) for e in connect] == \
        [(workloads["http"]["pid"], workloads["http"]["dport"], 6, "127.0.0.1")]
    sends = [e for e in events if e.func == "tcp_sendmsg"]
    assert {(e.pid, e.proto) for e in sends if e.dport == workloads["http"]["dport"]} == \
        {(workloads["http"]["pid"], 6)}


def test_61_kfree_skb_reason_of_null_has_no_tuple():
    events = [parse_line(l) for l in _trace_lines("kprobe-6.1-all-traffic.trace") if l]
    nulls = [e for e in events if e.func == "kfree_skb_reason" and e.skb == 0]
    assert nulls and all(e.family is None for e in nulls)


def test_el7_frees_the_clones_a_packet_socket_took_with_kfree_skb():
    """3.10 frees the clones tcpdump's packet socket takes of a loopback packet (one as it is
    sent, one as it is received) with kfree_skb, where later kernels consume_skb them: at least
    two kfree_skb events with the packet's tuple for every packet received."""
    events = [parse_line(l) for l in _trace_lines("kprobe-el7-all-traffic.trace") if l]
    tuple_of = lambda e: (e.saddr, e.daddr, e.proto, e.sport, e.dport)     # noqa: E731
    received = collections.Counter(tuple_of(e) for e in events if e.func == "ip_rcv")
    freed = collections.Counter(tuple_of(e) for e in events if e.func == "kfree_skb" and e.family)
    assert received and set(freed) == set(received)
    assert all(freed[flow] >= 2 * count for flow, count in received.items()), (freed, received)


def test_61_record_tgid_column():
    """`(TGID)` after COMM-PID; `(-------)` when the kernel has no tgid recorded (<idle>)."""
    lines = [l for l in _trace_lines("kprobe-6.1-record-tgid.trace") if l]
    events = [parse_line(l) for l in lines]
    assert all(events)
    unknown = 0
    for line, event in zip(lines, events):
        tid, tgid = re.match(r"^\s*\S+-(\d+)\s+\(\s*(\d+|-+)\)", line).groups()
        assert event.tid == int(tid)
        assert event.pid == (int(tgid) if tgid.isdigit() else int(tid))
        unknown += not tgid.isdigit()
    assert 0 < unknown < len(lines)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir()
                                        if p.suffix in (".trace", ".trace_pipe")))
def test_a_batch_and_a_parser_that_knows_the_layouts_parse_as_each_line_alone(name):
    """parse_lines (one findall) and a LineParser that remembers each event's layout (one
    match per body) give for every line what a parser that sees it first gives."""
    lines = _trace_lines(name)
    alone = [parse_line(line) for line in lines]
    assert any(alone)
    parser = LineParser()
    assert [parser.parse(line) for line in lines + lines] == alone + alone
    assert parser.parse_lines(lines) == [ev for ev in alone if ev is not None]
