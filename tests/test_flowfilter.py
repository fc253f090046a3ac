"""The flow filter: the CLI's flags and tcpdump's expression as one expression, and what it keeps."""
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from legacytrace import filterexpr
from legacytrace.errors import UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.model import FlowEvent

BOUNDED = settings(max_examples=300, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])


def event(**kw):
    base = dict(family=4, proto=6, saddr="10.0.0.1", daddr="10.0.0.2", sport=1234, dport=80)
    base.update(kw)
    return FlowEvent(**base)


def test_all_flags():
    f = FlowFilter.parse(family="4", proto="tcp", saddr="10.0.0.0/8", daddr="10.0.0.2",
                         sport="1234", dport="80")
    assert f.describe() == "src net 10.0.0.0/8 and dst host 10.0.0.2 and tcp src port 1234 " \
                           "and tcp dst port 80"
    assert f.matches(event())
    assert not f.matches(event(dport=81))
    assert not f.matches(event(saddr="11.0.0.1"))
    assert not f.matches(event(proto=17))


@pytest.mark.parametrize("proto, number", [("tcp", 6), ("UDP", 17), ("icmp", 1),
                                           ("icmp6", 58), ("132", 132)])
def test_protocols(proto, number):
    assert FlowFilter.parse(proto=proto).matches(event(proto=number, family=6 if number == 58 else 4))
    assert not FlowFilter.parse(proto=proto).matches(event(proto=number + 1))


def test_ipv6_and_the_family_an_address_implies():
    f = FlowFilter.parse(daddr="::1", proto="icmp6")
    assert f.matches(event(family=6, proto=58, saddr="::1", daddr="::1", sport=None, dport=None))
    assert not f.matches(event())


@pytest.mark.parametrize("kwargs, expected", [
    (dict(proto="tcpx"), "invalid protocol 'tcpx'"),
    (dict(proto="256"), "invalid protocol '256'"),
    (dict(saddr="10.0.0.300"), "invalid source address '10.0.0.300'"),
    (dict(daddr="bad::addr::"), "invalid destination address"),
    (dict(sport="65536"), "invalid source port '65536'"),
    (dict(dport="-1"), "invalid destination port '-1'"),
    (dict(dport="http"), "invalid destination port 'http'"),
    (dict(family="5"), "invalid IP version '5'"),
    (dict(family="4", daddr="::1"), "mixes IPv4 and IPv6"),
    (dict(saddr="10.0.0.1", daddr="::1"), "mixes IPv4 and IPv6"),
    (dict(proto="icmp", dport="80"), "--sport/--dport need --proto tcp or udp"),
    (dict(family="6", proto="icmp"), "--proto icmp does not exist over IPv6"),
    (dict(expression="tcp port"), "filter expression"),
])
def test_invalid_values_are_usage_errors(kwargs, expected):
    with pytest.raises(UsageError) as info:
        FlowFilter.parse(**kwargs)
    assert expected in str(info.value)
    assert info.value.exit_code == 2


def test_no_filter_keeps_events_without_a_tuple_and_a_filter_does_not():
    tracepoint = FlowEvent(func="net:netif_receive_skb", source="tracepoint")
    assert FlowFilter().matches(tracepoint) and FlowFilter().is_empty()
    assert not FlowFilter.parse(proto="udp").matches(tracepoint)
    assert not FlowFilter.parse(expression="not udp").matches(tracepoint)


def test_describe_gives_the_normalised_expression():
    assert FlowFilter.parse(proto="udp", dport="53").describe() == "udp dst port 53"
    assert FlowFilter().describe() == "all flows"     # "tracing with ftrace (all flows)"
    both = FlowFilter.parse(proto="tcp", expression="port 53 or 853")
    assert both.describe() == "tcp and (port 53 or port 853)"


def test_the_expression_joins_the_flags_with_and():
    f = FlowFilter.parse(daddr="10.0.0.2", expression="tcp port 80 or udp port 53")
    assert f.matches(event()) and f.matches(event(proto=17, dport=53))
    assert not f.matches(event(daddr="10.0.0.3"))
    assert not f.matches(event(dport=8080))


# --- the flags as tcpdump's primitives -------------------------------------------------------

FLAGS = [
    ({}, None),
    ({"proto": "tcp"}, "tcp"),
    ({"family": "4"}, "ip"),
    ({"family": "6", "proto": "udp"}, "ip6 proto 17"),
    ({"proto": "tcp", "dport": "80"}, "tcp dst port 80"),
    ({"family": "4", "proto": "udp", "sport": "53"}, "ip and udp src port 53"),
    ({"sport": "53", "dport": "5353"}, "src port 53 and dst port 5353"),
    ({"saddr": "10.0.0.0/8", "proto": "icmp"}, "icmp and src net 10.0.0.0/8"),
    ({"saddr": "::1", "daddr": "fe80::/10", "proto": "icmp6"},
     "icmp6 and src host ::1 and dst net fe80::/10"),
]


@pytest.mark.parametrize("flags,expected", FLAGS)
def test_flags_as_an_expression(flags, expected):
    expr = FlowFilter.parse(**flags).expr
    assert (None if expr is None else str(expr)) == expected


def flags_keep(flags, ev):
    """What the README says each flag keeps, flag by flag (an event that does not tell is not
    kept): the specification the expression of the flags must meet."""
    if not any(flags.values()):
        return True
    if ev.family is None:
        return False
    names = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58}
    proto = None if flags["proto"] is None else names.get(flags["proto"]) or int(flags["proto"])
    addresses = [(flags["saddr"], ev.saddr), (flags["daddr"], ev.daddr)]
    ports = [(flags["sport"], ev.sport), (flags["dport"], ev.dport)]
    if flags["family"] and ev.family != int(flags["family"]):
        return False
    if any(net and (ipaddress.ip_network(net).version != ev.family or
                    ipaddress.ip_address(address) not in ipaddress.ip_network(net))
           for net, address in addresses):
        return False
    if proto is not None and ev.proto != proto:
        return False
    if any(port for port, _ in ports) and ev.proto not in (6, 17, 132):
        return False
    return all(port is None or value == int(port) for port, value in ports)


PROTOS = st.sampled_from([None, 1, 6, 17, 58, 132, 47])
ADDRESS_PAIRS = {4: st.sampled_from(["10.0.0.1", "10.0.0.2", "127.0.0.1"]),
                 6: st.sampled_from(["::1", "2001:db8::1", "fe80::1"])}
EVENTS = st.sampled_from([None, 4, 6]).flatmap(lambda family: st.builds(
    lambda proto, saddr, daddr, sport, dport: event(
        family=family, proto=proto, saddr=saddr, daddr=daddr,
        sport=sport if proto in (6, 17, 132) else None,
        dport=dport if proto in (6, 17, 132) else None),
    PROTOS, ADDRESS_PAIRS[family], ADDRESS_PAIRS[family], st.sampled_from([53, 80, 1000]),
    st.sampled_from([53, 80, 1000])) if family else st.just(FlowEvent(func="f")))
FLAG_VALUES = st.fixed_dictionaries({
    "family": st.sampled_from([None, "4", "6"]),
    "proto": st.sampled_from([None, "tcp", "udp", "icmp", "icmp6", "47"]),
    "saddr": st.sampled_from([None, "10.0.0.0/8", "10.0.0.1", "::1", "2001:db8::/32"]),
    "daddr": st.sampled_from([None, "10.0.0.2", "0.0.0.0/0", "::/0"]),
    "sport": st.sampled_from([None, "53", "80"]),
    "dport": st.sampled_from([None, "1000", "80"]),
})


@BOUNDED
@given(FLAG_VALUES, st.lists(EVENTS, min_size=1, max_size=8))
def test_the_flags_keep_what_each_flag_says(flags, events):
    try:
        flow = FlowFilter.parse(**flags)
    except UsageError:
        return
    for ev in events:
        assert flow.matches(ev) == flags_keep(flags, ev), (flags, ev, flow.describe())
    assert flow.expr is None or filterexpr.parse(flow.describe()) == flow.expr
