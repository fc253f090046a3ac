"""The filter language: parsing, normalised text, errors, the evaluator, and any input
giving an AST or a UsageError (the flags as an expression: tests/test_flowfilter.py).

Each tcpdump reading asserted here was checked against Debian's tcpdump 4.99.3
(tests/test_filterexpr_tcpdump.py holds the parser and evaluator to it at random).
"""
import ipaddress
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from legacytrace import filterexpr
from legacytrace.errors import UsageError
from legacytrace.filterexpr import (BOTH, DST, EITHER, SRC, And, Family, Net, Not, Or, Port,
                                    Proto, evaluate, matches, parse)
from legacytrace.model import FlowEvent

BOUNDED = settings(max_examples=300, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])

TCP, UDP, ICMP, ICMP6 = Proto(None, 6), Proto(None, 17), Proto(4, 1), Proto(6, 58)


def host(address, direction=EITHER):
    return Net(direction, ipaddress.ip_network(address))


def port(number, direction=EITHER, proto=None):
    return Port(direction, number, number, proto)


# --- parsing ---------------------------------------------------------------------------

PARSED = [
    ("tcp", TCP),
    ("ip", Family(4)),
    ("ip6", Family(6)),
    ("icmp6", ICMP6),
    ("sctp", Proto(None, 132)),
    ("host 10.0.0.1", host("10.0.0.1")),
    ("ip host 10.0.0.1", host("10.0.0.1")),
    ("src host 2001:DB8::1", host("2001:db8::1", SRC)),
    ("src 10.0.0.1", host("10.0.0.1", SRC)),
    ("dst or src host ::1", host("::1")),
    ("src and dst host ::1", host("::1", BOTH)),
    ("net 10.0.0.0/8", Net(EITHER, ipaddress.ip_network("10.0.0.0/8"))),
    ("ip6 dst net 2001:db8::/32", Net(DST, ipaddress.ip_network("2001:db8::/32"))),
    ("net 10.1.0.0 mask 255.255.0.0", Net(EITHER, ipaddress.ip_network("10.1.0.0/16"))),
    ("net 10", Net(EITHER, ipaddress.ip_network("10.0.0.0/8"))),         # tcpdump's short nets
    ("net 172.16", Net(EITHER, ipaddress.ip_network("172.16.0.0/16"))),
    ("net 10.0.0.0 mask 255.255", Net(EITHER, ipaddress.ip_network("10.0.0.0/16"))),
    ("port 53", port(53)),
    ("port 0x35", port(53)),                                               # hex, as tcpdump
    ("port 065", port(53)),                                                # octal, as tcpdump
    ("udp dst port 53", port(53, DST, 17)),
    ("tcp src and dst port 80", port(80, BOTH, 6)),
    ("portrange 8000-8080", Port(EITHER, 8000, 8080, None)),
    ("portrange 8080-8000", Port(EITHER, 8000, 8080, None)),              # tcpdump swaps them
    ("portrange 53", port(53)),
    ("sctp src portrange 1-2", Port(SRC, 1, 2, 132)),
    ("proto 47", Proto(None, 47)),
    ("ip proto 6", Proto(4, 6)),
    ("ip proto 1", ICMP),
    ("ip6 proto 58", ICMP6),
    ("proto \\tcp", TCP),
    ("ip6 proto \\udp", Proto(6, 17)),
    ("proto gre", Proto(None, 47)),
    ("not tcp", Not(TCP)),
    ("! not tcp", Not(Not(TCP))),
    ("tcp&&udp||icmp", Or((And((TCP, UDP)), ICMP))),
    ("(tcp)", TCP),
]


@pytest.mark.parametrize("text,expr", PARSED)
def test_parse(text, expr):
    assert parse(text) == expr


# tcpdump: `and` and `or` have the same precedence and group from the left; `not` binds
# tightest; a bare value takes the qualifiers of the primitive before it.
PRECEDENCE = [
    ("tcp or udp and port 53", And((Or((TCP, UDP)), port(53)))),
    ("udp and port 53 or tcp", Or((And((UDP, port(53))), TCP))),
    ("tcp or (udp and port 53)", Or((TCP, And((UDP, port(53)))))),
    ("not tcp and udp", And((Not(TCP), UDP))),
    ("not (tcp and udp)", Not(And((TCP, UDP)))),
    ("tcp and udp and icmp", And((TCP, UDP, ICMP))),
    ("tcp and (udp and icmp)", And((TCP, UDP, ICMP))),
]
CARRIED = [
    ("port 53 or 853", Or((port(53), port(853)))),
    ("udp dst port 53 or 853", Or((port(53, DST, 17), port(853, DST, 17)))),
    ("host 10.0.0.1 or 10.0.0.2", Or((host("10.0.0.1"), host("10.0.0.2")))),
    ("src host 10.0.0.1 and 10.0.0.2", And((host("10.0.0.1", SRC), host("10.0.0.2", SRC)))),
    # the negation stays with its own primitive; the qualifiers carry over
    ("not host 10.0.0.1 or 10.0.0.2", Or((Not(host("10.0.0.1")), host("10.0.0.2")))),
    ("host 10.0.0.1 and not 10.0.0.2", And((host("10.0.0.1"), Not(host("10.0.0.2"))))),
    ("host (10.0.0.1 or 10.0.0.2)", Or((host("10.0.0.1"), host("10.0.0.2")))),
    ("host not 10.0.0.1", Not(host("10.0.0.1"))),
    ("port 80 or (81 and 82)", Or((port(80), And((port(81), port(82)))))),
    ("port ((80) or 81)", Or((port(80), port(81)))),
    ("ip proto 6 or 17", Or((Proto(4, 6), Proto(4, 17)))),
    # a parenthesis passes on the qualifiers before it, not those inside it
    ("host 10.0.0.1 or (port 80) or 10.0.0.2",
     Or((host("10.0.0.1"), port(80), host("10.0.0.2")))),
    ("port 80 and (tcp) or 81", Or((And((port(80), TCP)), port(81)))),
    ("port 81 or not (port 80) or 53", Or((port(81), Not(port(80)), port(53)))),
]


@pytest.mark.parametrize("text,expr", PRECEDENCE + CARRIED)
def test_precedence_and_carried_qualifiers_are_tcpdumps(text, expr):
    assert parse(text) == expr


NORMALISED = [
    ("port 53 or 853", "port 53 or port 853"),
    ("tcp or udp and port 53", "(tcp or udp) and port 53"),
    ("tcp or (udp and port 53)", "tcp or (udp and port 53)"),
    ("not (tcp or udp)", "not (tcp or udp)"),
    ("ip proto \\tcp", "ip proto 6"),
    ("ip proto 1 || ip6 proto 58", "icmp or icmp6"),
    ("proto \\icmp", "proto 1"),
    ("dst or src host 2001:0DB8:0000::0001", "host 2001:db8::1"),
    ("host ::ffff:a00:1", "host ::ffff:10.0.0.1"),
    ("net 10.0.0.0 mask 255.0.0.0", "net 10.0.0.0/8"),
    ("net 10.0.0.1", "host 10.0.0.1"),
    ("dst and src port 0x50", "src and dst port 80"),
    ("portrange 90-80", "portrange 80-90"),
    ("portrange 80-80", "port 80"),
    ("udp src portrange 1-2", "udp src portrange 1-2"),
    ("!tcp&&!udp", "not tcp and not udp"),
]


@pytest.mark.parametrize("text,normalised", NORMALISED)
def test_normalised_text(text, normalised):
    expr = parse(text)
    assert str(expr) == normalised
    assert parse(normalised) == expr


def test_nodes_are_values():
    a, b = parse("tcp and udp"), parse("tcp and udp")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert And((TCP, UDP)) != Or((TCP, UDP))          # same fields, other class
    assert Family(4) != Proto(4, None) and Family(4) != (4,)
    with pytest.raises(AttributeError):
        a.terms = ()


# --- errors ----------------------------------------------------------------------------

ERRORS = [
    ("gateway 10.0.0.1", "'gateway' is not supported (supported: host, net"),
    ("ether host 1:2:3:4:5:6", "'ether' is not supported"),
    ("icmp[icmptype] == icmp-echo", "'icmp[icmptype]': byte and field expressions"),
    ("tcp[13] & 2 != 0", "'tcp[13]': byte and field expressions"),
    ("len > 100", "'len': byte and field expressions"),
    ("port icmp-echo", "'icmp-echo': byte and field expressions"),
    ("ip and ip[9] = 6", "'ip[9]': byte and field expressions"),
    ("tcp & 2", "'&': byte and field expressions"),
    ("port http", "'http' is not a port: use a number from 0 to 65535"),
    ("port 80-90", "'80-90' is not a port"),
    ("port 65536", "'65536' is not a port: ports are 0 to 65535"),
    ("port 080", "'080' is not a number: a leading 0 makes it octal"),
    ("port 99999999999999999999", "'99999999999999999999' is too large"),
    ("portrange 80-90x", "'80-90x' is not a port range"),
    ("host localhost", "'localhost' is not an address"),
    ("host 10.1", "'10.1' is not a full address"),
    ("host 10.0.0.1/32", "'10.0.0.1' with a mask: a mask needs net"),
    ("host 010.0.0.1", "'010.0.0.1' is not an IPv4 address"),
    ("host 10.0.0.256", "'10.0.0.256' is not an IPv4 address"),
    ("host 1::2::3", "'1::2::3' is not an IPv6 address"),
    ("host fe80::1%eth0", "'fe80::1%eth0': IPv6 scope ids"),
    ("ip host ::1", "'::1' is an IPv6 address after ip"),
    ("ip6 host 10.0.0.1", "'10.0.0.1' is an IPv4 address after ip6"),
    ("net 10.0.0.1/8", "'10.0.0.1/8': bits set after the prefix"),
    ("net fe80::1/10", "'fe80::1/10': bits set after the prefix"),
    ("net 10.0.0.0/33", "'10.0.0.0/33': the prefix length must be at most 32"),
    ("net 10.0.0.0 mask 255.0.255.0", "mask '255.0.255.0' is not contiguous"),
    ("tcp host 10.0.0.1", "'tcp host' is not valid"),
    ("icmp port 80", "'icmp port' is not valid: ports belong to tcp, udp or sctp"),
    ("tcp proto 6", "'tcp proto' is not valid"),
    ("proto tcp", "'tcp' after proto: write proto \\tcp"),
    ("proto esp", "'esp' is a keyword of tcpdump: as a protocol name write proto \\esp"),
    ("proto 256", "protocol '256' is not a number from 0 to 255"),
    ("proto nosuch", "'nosuch' is not a protocol"),
    ("10.0.0.1", "'10.0.0.1' has no qualifier before it"),
    ("(host 10.0.0.1) or 10.0.0.2", "'10.0.0.2' has no qualifier to take over"),
    ("tcp or 80", "'80' has no qualifier to take over"),
    ("host ((10.0.0.1) or 10.0.0.2)", "unexpected '10.0.0.1'"),
    ("tcp udp", "unexpected 'udp': expected and, or, or the end"),
    ("tcp and", "the expression ends after 'and'"),
    ("(tcp", "the expression ends after 'tcp': expected ')'"),
    ("", "the expression is empty"),
    ("tcp; reboot", "'tcp;' is not supported"),
    ("port 80\u00b2", "'80\u00b2' is not supported"),
    ("host \x1b[31m", "'\\x1b[31m': byte and field expressions"),
    ("(" * 101 + "tcp" + ")" * 101, "nested deeper than 100"),
    ("tcp and udp or " * 60 + "icmp", "nested deeper than 100 levels (each change between"),
    ("(tcp or (udp and " * 30 + "tcp and udp or " * 30 + "icmp" + "))" * 30,
     "nested deeper than 100 levels"),
    ("host 1." + "9" * 5000, "'1.99999999999999999999999999999999999..."),
]


@pytest.mark.parametrize("text,message", ERRORS)
def test_errors_name_the_word(text, message):
    with pytest.raises(UsageError) as err:
        parse(text)
    assert str(err.value).startswith("filter expression: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_nesting_up_to_the_limit_parses():
    depth = filterexpr.MAX_DEPTH
    assert parse("(" * depth + "tcp" + ")" * depth) == TCP
    deep = parse("not " * (depth - 1) + "tcp")
    assert evaluate(deep, TCP4) is (depth % 2 == 1) and parse(str(deep)) == deep
    alternating = parse("tcp and udp or " * ((depth - 1) // 2) + "icmp")
    assert evaluate(alternating, PING4) is True and parse(str(alternating)) == alternating
    wide = parse("port 1 or " * 20000 + "80")                 # linear, however wide
    assert len(wide.terms) == 20001 and evaluate(wide, TCP4) is True


# --- the evaluator -----------------------------------------------------------------------

def event(**fields):
    base = dict(backend="test", source="kprobe", time_ns=1, cpu=0, func="ip_rcv")
    base.update(fields)
    return FlowEvent(**base)


TCP4 = event(family=4, proto=6, saddr="10.0.0.1", daddr="10.0.0.2", sport=40000, dport=80)
UDP6 = event(family=6, proto=17, saddr="2001:db8::1", daddr="::ffff:10.0.0.1", sport=53,
             dport=5353)
PING4 = event(family=4, proto=1, saddr="10.0.0.1", daddr="1.1.1.1", icmp_type=8, icmp_code=0,
              icmp_id=7, icmp_seq=1)
NO_TUPLE = event(func="net:netif_receive_skb", source="tracepoint")
NO_PORTS = event(family=4, proto=6, saddr="10.0.0.1", daddr="10.0.0.2")   # a later fragment
NO_PROTO = event(family=6, saddr="::1", daddr="::2")                      # chain not read

EVALUATED = [
    ("tcp", TCP4, True), ("tcp", UDP6, False), ("ip", TCP4, True), ("ip6", TCP4, False),
    ("icmp", PING4, True), ("icmp6", PING4, False), ("proto 1", PING4, True),
    ("ip6 proto 17", UDP6, True), ("ip proto 17", UDP6, False),
    ("host 10.0.0.2", TCP4, True), ("src host 10.0.0.2", TCP4, False),
    ("dst host 10.0.0.2", TCP4, True), ("src and dst net 10.0.0.0/8", TCP4, True),
    ("src and dst net 10.0.0.0/8", PING4, False), ("host ::ffff:a00:1", UDP6, True),
    ("host 10.0.0.1", UDP6, False), ("net 2001:db8::/32", UDP6, True),
    ("port 80", TCP4, True), ("port 80", PING4, False), ("src port 80", TCP4, False),
    ("udp port 53", UDP6, True), ("tcp port 53", UDP6, False), ("portrange 5000-6000", UDP6, True),
    ("src and dst portrange 53-5353", UDP6, True), ("src and dst port 53", UDP6, False),
    ("not port 80", TCP4, False), ("tcp and not port 22", TCP4, True),
    # no tuple: nothing is known
    ("tcp", NO_TUPLE, None), ("ip", NO_TUPLE, None), ("host 10.0.0.1", NO_TUPLE, None),
    ("port 80", NO_TUPLE, None), ("not tcp", NO_TUPLE, None), ("tcp or udp", NO_TUPLE, None),
    # ports unknown: Kleene logic decides what it can
    ("port 80", NO_PORTS, None), ("not port 80", NO_PORTS, None),
    ("tcp or port 80", NO_PORTS, True), ("udp and port 80", NO_PORTS, False),
    ("udp or port 80", NO_PORTS, None), ("udp port 80", NO_PORTS, False),
    ("host 10.0.0.1 and port 80", NO_PORTS, None), ("host 9.9.9.9 and port 80", NO_PORTS, False),
    # protocol unknown, addresses known
    ("tcp", NO_PROTO, None), ("ip6", NO_PROTO, True), ("icmp", NO_PROTO, False),
    ("host ::1", NO_PROTO, True), ("port 80", NO_PROTO, None),
]


@pytest.mark.parametrize("text,ev,answer", EVALUATED)
def test_evaluate(text, ev, answer):
    expr = parse(text)
    assert evaluate(expr, ev) is answer
    assert matches(expr, ev) is (answer is True)


def test_an_address_the_event_cannot_give_is_unknown():
    odd = event(family=4, proto=6, saddr="not an address", daddr="10.0.0.2", sport=1, dport=2)
    assert evaluate(parse("src host 10.0.0.1"), odd) is None
    assert evaluate(parse("host 10.0.0.2"), odd) is True
    assert evaluate(parse("host 10.0.0.3"), odd) is None
    mixed = event(family=6, proto=6, saddr="::a00:1", daddr="10.0.0.1", sport=1, dport=2)
    assert evaluate(parse("dst net ::/0"), mixed) is None      # not an IPv6 address
    assert evaluate(parse("src host ::10.0.0.1"), mixed) is True


def test_conjoin():
    assert filterexpr.conjoin() is None and filterexpr.conjoin(None, None) is None
    assert filterexpr.conjoin(TCP) == TCP
    assert filterexpr.conjoin(And((TCP, UDP)), None, ICMP) == And((TCP, UDP, ICMP))
    assert filterexpr.conjoin(Or((TCP, UDP)), ICMP) == And((Or((TCP, UDP)), ICMP))


# --- any input: an AST or a UsageError ---------------------------------------------------

#: What the normalised text (which generated code comments may show) is made of.
SAFE_TEXT = re.compile(r"[a-z0-9 .:/()-]+\Z")
WORDS = ["host", "net", "port", "portrange", "proto", "src", "dst", "ip", "ip6", "tcp", "udp",
         "icmp", "icmp6", "sctp", "and", "or", "not", "&&", "||", "!", "(", ")", "mask", "/",
         "10.0.0.1", "10.1", "::1", "fe80::/10", "53", "0x50", "80-90", "\\tcp", "gre",
         "255.255.0.0", "8"]
HOSTILE = ['"', "'", ";", "{", "}", "`", "$(id)", "\\", "\n", "\x00", "\u00b2", "\u0663",
           "\uff11", "\u2028", "*/", "%", "[", "]", "==", "<", "&", "|", "9" * 40, "(" * 30,
           ")" * 30, "not " * 30, "-1", "1e3", "\t", "\r", "tcp and udp or " * 40]
EXPRESSION_TEXT = st.one_of(
    st.lists(st.sampled_from(WORDS + HOSTILE), max_size=12).map(" ".join),
    st.lists(st.sampled_from(WORDS + HOSTILE), max_size=12).map("".join),
    st.text(max_size=40))


@BOUNDED
@given(EXPRESSION_TEXT)
def test_any_text_is_an_expression_or_a_usage_error(text):
    try:
        expr = parse(text)
    except UsageError as err:
        assert "\n" not in str(err)
        return
    normalised = str(expr)
    assert SAFE_TEXT.match(normalised), normalised
    assert parse(normalised) == expr
    for ev in (TCP4, UDP6, PING4, NO_TUPLE, NO_PORTS, NO_PROTO):
        assert evaluate(expr, ev) in (True, False, None)


ADDRESSES = st.one_of(
    st.integers(0, 2 ** 32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2 ** 128 - 1).map(ipaddress.IPv6Address))
NETS = st.builds(lambda address, length: type(ipaddress.ip_network(address))(
    (int(address), min(length, address.max_prefixlen)), strict=False),
    ADDRESSES, st.integers(0, 128))
PRIMITIVES = st.one_of(
    st.builds(Family, st.sampled_from([4, 6])),
    st.builds(Proto, st.sampled_from([None, 4, 6]), st.integers(0, 255)),
    st.builds(Net, st.sampled_from([EITHER, SRC, DST, BOTH]), NETS),
    st.builds(lambda direction, a, b, proto: Port(direction, min(a, b), max(a, b), proto),
              st.sampled_from([EITHER, SRC, DST, BOTH]), st.integers(0, 65535),
              st.integers(0, 65535), st.sampled_from([None, 6, 17, 132])))


def _joined(op):
    return lambda terms: filterexpr.conjoin(*terms) if op is And else \
        Or(tuple(t for term in terms for t in (term.terms if type(term) is Or else (term,))))


EXPRS = st.recursive(PRIMITIVES, lambda inner: st.one_of(
    st.builds(Not, inner),
    st.lists(inner, min_size=2, max_size=4).map(_joined(And)),
    st.lists(inner, min_size=2, max_size=4).map(_joined(Or))), max_leaves=12)


@BOUNDED
@given(EXPRS)
def test_any_expression_survives_its_normalised_text(expr):
    assert parse(str(expr)) == expr
