"""Flow filter parsing and matching."""
import ipaddress

import pytest

from legacytrace.errors import UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.model import FlowEvent


def event(**kw):
    base = dict(family=4, proto=6, saddr="10.0.0.1", daddr="10.0.0.2", sport=1234, dport=80)
    base.update(kw)
    return FlowEvent(**base)


def test_parse_all_options():
    f = FlowFilter.parse(family="4", proto="tcp", saddr="10.0.0.0/8", daddr="10.0.0.2",
                         sport="1234", dport="80")
    assert f.proto == 6 and f.family == 4
    assert f.saddr == ipaddress.ip_network("10.0.0.0/8")
    assert f.daddr == ipaddress.ip_network("10.0.0.2/32")
    assert f.matches(event())
    assert not f.matches(event(dport=81))
    assert not f.matches(event(saddr="11.0.0.1"))
    assert not f.matches(event(proto=17))


@pytest.mark.parametrize("proto, number", [("tcp", 6), ("UDP", 17), ("icmp", 1),
                                           ("icmp6", 58), ("132", 132)])
def test_protocols(proto, number):
    assert FlowFilter.parse(proto=proto).proto == number


def test_ipv6_and_family_inferred():
    f = FlowFilter.parse(daddr="::1", proto="icmp6")
    assert f.family == 6
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
    (dict(proto="icmp", dport="80"), "--sport/--dport need -p tcp or -p udp"),
    (dict(family="6", proto="icmp"), "-p icmp does not exist over IPv6"),
])
def test_invalid_values_are_usage_errors(kwargs, expected):
    with pytest.raises(UsageError) as info:
        FlowFilter.parse(**kwargs)
    assert expected in str(info.value)
    assert info.value.exit_code == 2


def test_empty_filter_matches_events_without_tuple():
    tracepoint = FlowEvent(func="netif_receive_skb", source="tracepoint")
    assert FlowFilter().matches(tracepoint)
    assert not FlowFilter.parse(proto="udp").matches(tracepoint)


def test_describe():
    assert FlowFilter.parse(proto="udp", dport="53").describe() == "-p udp --dport 53"
    assert FlowFilter().describe() == "all flows"     # "tracing with ftrace (all flows)"
