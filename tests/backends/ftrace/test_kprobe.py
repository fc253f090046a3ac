"""kprobe_events definitions and event filters (backends/ftrace/kprobe.py): the baseline
syntax of 3.10, offsets from the layout, the packet window by where skb->data points, the
filters against real packets.
"""
import ipaddress
import re
import struct
from pathlib import Path

import pytest

from conftest import DATA as ALL_DATA
from . import build
from legacytrace.backends.ftrace import kprobe as ftrace_kprobe
from legacytrace.errors import UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.model import Probe


DATA = Path(ALL_DATA) / "ftrace"


def test_el7_uses_baseline_syntax_only_within_limits():
    program = build(FlowFilter.parse(proto="tcp", saddr="10.0.0.1", dport="80"))
    for definition in program.part.definitions:
        line = definition.line("legacytrace_lt4242")
        assert len(definition.args) <= ftrace_kprobe.MAX_ARGS
        assert all(len(arg) <= 63 for arg in definition.args)
        assert not re.search(r":x\d+|\$comm|\$arg|:symbol|%return|\+u\d", line)
        assert all(re.match(r"^\w+=(%(di|si|dx|cx|r8|r9)|[-+]\d+\(|\$retval)", arg)
                   for arg in definition.args), line
    assert program.part.group == "legacytrace_lt4242"


def test_offsets_come_from_the_layout():
    line = build().part.definitions[0].line("g")
    assert "len=+104(%di):u32" in line and "nh=+194(%di):u16" in line and "data=+232(%di)" in line


@pytest.mark.parametrize("probe, words", [
    (Probe("ip_rcv", 1), ["dp0", "dp8", "dp16", "dp24", "dp32", "dp40"]),
    (Probe("dev_queue_xmit", 1), ["dp8", "dp16", "dp24", "dp32", "dp40", "dp48", "dp56"]),
    (Probe("tcp_v4_rcv", 1), ["dm40", "dm32", "dm24", "dm16", "dm8", "dp0"]),
    (Probe("kfree_skb", 1), ["dm40", "dm32", "dm24", "dm16", "dm8"] +
     ["dp{}".format(n) for n in range(0, 64, 8)]),
])


def test_window_placed_by_where_data_points(probe, words):
    args = build(probes=[probe]).part.definitions[0].args
    assert [a.split("=")[0] for a in args if re.match(r"d[mp]\d+=", a)] == words


@pytest.mark.parametrize("probe", [
    Probe("ip_rcv; rm -rf /", 1), Probe("ip_rcv", 7), Probe("", 1), Probe("ip rcv", 1),
    Probe("ip_rcv", 1, fields={"x": "skb->len"}), Probe("ip_rcv", 1, fields={"x; rm": "skb.len"}),
])


def test_bad_probes_are_one_line_usage_errors(probe):
    with pytest.raises(UsageError) as err:
        build(probes=[probe])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("path", ["skb.nosuchmember", "sk.len"])
def test_members_the_offsets_table_lacks_are_left_out(path):
    program = build(probes=[Probe("ip_rcv", 1, fields={"x": path})])
    assert not [a for a in program.part.definitions[0].args if a.startswith("c_x=")]
    assert [w for w in program.warnings if "field x ({}) left out".format(path) in w]


def test_custom_field_of_the_layout():
    program = build(probes=[Probe("ip_rcv", 1, fields={"dlen": "skb.data_len"})])
    assert "c_dlen=+108(%di):u32" in program.part.definitions[0].args


def _pcap_l3_packets():
    blob = (DATA / "lo-packets-6.18.pcap").read_bytes()
    at, packets = 24, []
    while at < len(blob):
        incl = struct.unpack_from("<IIII", blob, at)[2]
        packets.append(blob[at + 16 + 14:at + 16 + incl])     # the IP header onwards
        at += 16 + incl
    return packets


_FETCH = re.compile(r"^(\w+)=\+(\d+)\(\+\d+\(%di\)\):u(\d+)$")


def _kernel_filter_keeps(definition, l3):
    """Evaluate the event filter as the kernel would, on the bytes the f_* args fetch."""
    values = {}
    for arg in definition.args:
        match = _FETCH.match(arg)
        if match and match.group(1).startswith("f"):
            offset, size = int(match.group(2)), int(match.group(3)) // 8
            values[match.group(1)] = int.from_bytes(l3[offset:offset + size], "little")
    values["eth"] = 0x0008 if l3[0] >> 4 == 4 else 0xdd86     # skb->protocol, read little-endian
    expression = definition.filter.replace("&&", " and ").replace("||", " or ")
    return eval(expression, {"__builtins__": {}}, values)


def _flows_of(event):
    """Filters built from the packet's own tuple (all must keep it) and from others."""
    net = ipaddress.ip_network
    keep = [FlowFilter(family=event.family), FlowFilter(proto=event.proto),
            FlowFilter(saddr=net(event.saddr), daddr=net(event.daddr), proto=event.proto)]
    if event.sport is not None:
        keep += [FlowFilter(sport=event.sport), FlowFilter(proto=event.proto, dport=event.dport),
                 FlowFilter(daddr=net(event.daddr), dport=event.dport, sport=event.sport)]
    other = "10.9.9.9" if event.family == 4 else "fd00::99"
    drop = [FlowFilter(family=10 - event.family), FlowFilter(daddr=net(other)),
            FlowFilter(proto=6 if event.proto != 6 else 17)]
    if event.sport is not None:
        drop.append(FlowFilter(proto=event.proto, dport=event.dport + 1))
    return keep, drop


def test_l3_filter_keeps_every_matching_real_packet_and_drops_others():
    from legacytrace.backends.ftrace.parse import FLOW_FIELDS, decode_ip
    from legacytrace.model import FlowEvent
    checked = 0
    for l3 in _pcap_l3_packets():
        flow = decode_ip(l3, 0)
        assert flow
        event = FlowEvent(func="ip_rcv", **dict(zip(FLOW_FIELDS, flow)))
        keep, drop = _flows_of(event)
        for flow in keep + drop:
            assert flow.matches(event) == (flow in keep)
            definition = build(flow, probes=[Probe("ip_rcv", 1)]).part.definitions[0]
            assert _kernel_filter_keeps(definition, l3) == (flow in keep), (definition.filter, event)
            checked += 1
    assert checked > 100


def test_sock_filter_and_cidr_prefix():
    definition = build(FlowFilter.parse(daddr="127.0.0.1", dport="8088"),
                       probes=[Probe("tcp_sendmsg", sk_pos=1)]).part.definitions[0]
    assert definition.filter == "fs_family == 2 && fs4_d == 16777343 && fs4_dp == 38943"
    assert "fs4_d=+0(%di):u32" in definition.args
    cidr = build(FlowFilter.parse(daddr="10.0.0.0/8"), probes=[Probe("ip_rcv", 1)])
    definition = cidr.part.definitions[0]
    assert "f40_db0_8 == 10" in definition.filter
    assert "f40_db0_8=+16(+232(%di)):b8@0/32" in definition.args


def test_a_function_of_one_protocol_rejects_others_by_its_guard():
    definition = build(FlowFilter.parse(expression="udp"),
                       probes=[Probe("tcp_v4_rcv", 1)]).part.definitions[0]
    assert definition.filter == "f40_v != 69 || (eth != 0 && eth != 8) || f40_p != 6"


@pytest.mark.parametrize("probe", [Probe("ip_rcv", True), Probe("tcp_sendmsg", sk_pos=True),
                                   Probe("kfree_skb_reason", 1, args={"reason": True})])


def test_a_boolean_is_no_argument_position(probe):
    """`True in range(1, 7)` holds in Python: a position True once built `skb=%di`."""
    with pytest.raises(UsageError, match="must be an integer from 1 to 6, got True"):
        build(probes=[probe])
