"""Property-based tests (hypothesis): any input gives a valid result or a clean error.

- manifests: any YAML document (and any text) parses to a valid Manifest or raises
  UsageError, never anything else;
- the flow filter: any command-line text gives a FlowFilter or a UsageError, and a
  built filter's matches() never raises on any event;
- every backend's line parser: any line, and any mutation of a line captured from a
  real kernel, gives a FlowEvent or None, never an exception;
- hostile identifiers (function names, custom field names and paths, run ids, filter
  values of the wrong type) either stop the build with a LegacytraceError or were safe
  already: nothing unvalidated reaches the stap script (kernel C), kprobe_events lines or
  the bpftrace program.

Bounded for CI: few examples per property, no deadline; the file runs in a few seconds.
"""
import glob
import ipaddress
import os
import re
import struct

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from legacytrace import backends, filterexpr as fx, flowfilter, manifest, validate
from legacytrace.backends.ftrace import parse as ftrace_parse

from legacytrace.kernel import offsets
from legacytrace.backends.ftrace import FtraceBackend
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import FlowEvent, Probe, TraceRequest
from legacytrace.procfilter import ProcessFilter
from legacytrace.backends.bpf import predicate as bpf_predicate
from legacytrace.backends.stap import condition as stap_condition

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
BOUNDED = settings(max_examples=150, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])

# --- what "safe" means for text that reaches generated code ------------------------
#: A kernel symbol, anchored at the very end (`$` would let a trailing newline through).
SAFE_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.(isra|constprop|part|cold|llvm)\.[0-9]+)*\Z")
SAFE_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]{0,31}\Z")
SAFE_FIELD_PATH = re.compile(r"(skb|sk|skb_shinfo\(skb\))(\.[a-z_][a-z0-9_]{0,63}){1,4}\Z")
SAFE_RUN_ID = re.compile(r"[a-z0-9_]+\Z")

# Text that would break out of a C string, a stap/bpftrace block or a kprobe_events line.
HOSTILE = ["\n", "\r", "\x00", '"', "'", "\\", "%{", "%}", "}", "{", ";", "*/", "//", " ",
           "\t", "$(id)", "`", "/", ":", "-:", "+0(%di)", "\u2028", "..", "(", ")"]


def hostile_text(valid):
    """Mostly-valid identifiers with hostile pieces inserted, and arbitrary text."""
    piece = st.sampled_from(HOSTILE)
    spliced = st.tuples(valid, piece, st.text(max_size=4)).map(lambda t: t[0] + t[1] + t[2])
    prefixed = st.tuples(piece, valid).map(lambda t: t[0] + t[1])
    return st.one_of(valid, spliced, prefixed, st.text(max_size=20))


SYMBOLS = st.from_regex(r"\A[a-z_][a-z0-9_]{0,20}\Z")
FIELD_NAMES = st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z")
FIELD_PATHS = st.sampled_from(["skb.len", "skb.mark", "skb.dev.mtu", "sk.sk_mark",
                               "skb_shinfo(skb).gso_size"])


# --- manifests -----------------------------------------------------------------------

KEYS = sorted(manifest._FUNCTION_KEYS | manifest._VARIANT_KEYS | manifest._TOP_KEYS) + ["color"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 300), st.floats(allow_nan=True),
                    SYMBOLS, hostile_text(SYMBOLS), st.sampled_from([">=4.4", "<4.4", "el7",
                                                                      "!el7", ">=5 <4", "skb.len"]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)),
                                            inner, max_size=5)),
    max_leaves=20)
FUNCTION = st.fixed_dictionaries(
    {"name": hostile_text(SYMBOLS)},
    optional={"skb_pos": st.one_of(st.integers(-1, 8), st.text(max_size=3)),
              "sk_pos": st.integers(0, 7), "egress": VALUES, "description": VALUES,
              "fields": st.dictionaries(hostile_text(FIELD_NAMES),
                                        st.one_of(FIELD_PATHS, hostile_text(FIELD_PATHS)),
                                        max_size=3),
              "variants": VALUES, "kernel": VALUES, "color": VALUES})
DOCUMENTS = st.one_of(
    VALUES,
    st.fixed_dictionaries({"functions": st.lists(st.one_of(FUNCTION, VALUES), max_size=4)},
                          optional={"name": VALUES, "description": VALUES}))


def check_manifest(parsed):
    """A manifest that passed validation carries only safe names, paths and positions."""
    assert parsed.functions
    for function in parsed.functions:
        assert isinstance(function.egress, bool)
        for variant in function.variants:
            assert SAFE_SYMBOL.match(variant.name) and len(variant.name) <= validate.SYMBOL_MAX
            for pos in (variant.skb_pos, variant.sk_pos):
                assert pos is None or (type(pos) is int and 1 <= pos <= validate.MAX_ARG_POS)
        for name, path in function.fields.items():
            assert SAFE_FIELD_NAME.match(name) and SAFE_FIELD_PATH.match(path), (name, path)


@BOUNDED
@given(DOCUMENTS)
def test_any_manifest_document_is_valid_or_a_usage_error(document):
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        parsed = manifest.parse(text, "prop.yaml")
    except UsageError as err:
        assert "\n" not in str(err).strip() or "prop.yaml" in str(err)
        return
    check_manifest(parsed)


@BOUNDED
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_manifest_text_is_valid_or_a_usage_error(text):
    try:
        parsed = manifest.parse(text, "prop.yaml")
    except UsageError:
        return
    check_manifest(parsed)


# --- the flow filter ---------------------------------------------------------------------

def flow_text(examples):
    return st.one_of(st.none(), st.sampled_from(examples), st.text(max_size=12),
                     st.integers(-5, 70000).map(str))


FLOW_ARGS = st.fixed_dictionaries({
    "family": flow_text(["4", "6", "ipv4", "ipv6", "5"]),
    "proto": flow_text(["tcp", "udp", "icmp", "icmp6", "17", "256", "\u00b2"]),
    "saddr": flow_text(["10.0.0.1", "10.0.0.0/8", "fe80::/10", "::1", "10.0.0.300", "1.2.3.4/33"]),
    "daddr": flow_text(["127.0.0.1", "::ffff:1.2.3.4", "0.0.0.0/0"]),
    "sport": flow_text(["53", "65535", "65536", "-1", "\u0663"]),
    "dport": flow_text(["80", "0", "08", "1e3"]),
})
TRICKY = st.sampled_from(["\u00b2", "\u0663", "\uff11", "1\n", " 80 ", "0x50", "+1", "1_0",
                          "10.0.0.1%lo", "fe80::1%eth0", "::ffff:1.2.3.4/200", "ipv", "4\x00"])


@BOUNDED
@given(st.sampled_from([(flowfilter.parse_proto, ()), (flowfilter.parse_family, ()),
                        (flowfilter.parse_port, ("port",)), (flowfilter.parse_net, ("address",))]),
       st.one_of(TRICKY, st.text(max_size=10), st.integers().map(str)))
def test_each_flow_value_parses_or_is_a_usage_error(parser, text):
    function, extra = parser
    try:
        value = function(text, *extra)
    except UsageError as err:
        assert "\n" not in str(err).replace(repr(text), "")
        return
    assert value is None or isinstance(value, (int, ipaddress.IPv4Network, ipaddress.IPv6Network))


IP4 = st.ip_addresses(v=4).map(str)
IP6 = st.ip_addresses(v=6).map(str)
EVENTS = st.builds(
    lambda family, proto, saddr, daddr, sport, dport: FlowEvent(
        family=family, proto=proto, saddr=saddr, daddr=daddr, sport=sport, dport=dport),
    st.sampled_from([None, 4, 6, 5]), st.one_of(st.none(), st.integers(0, 255)),
    st.one_of(st.none(), IP4, IP6, st.text(max_size=8)), st.one_of(st.none(), IP4, IP6),
    st.one_of(st.none(), st.integers(0, 65535)), st.one_of(st.none(), st.integers(0, 65535)))


@BOUNDED
@given(FLOW_ARGS, st.lists(EVENTS, max_size=5))
def test_any_filter_text_gives_a_filter_or_a_usage_error(args, events):
    try:
        flow = FlowFilter.parse(**args)
    except UsageError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert expr_is_safe(flow.expr)
    for event in events:
        assert flow.matches(event) in (True, False)


# --- line parsers: any line is an event or nothing --------------------------------------

def captured_lines():
    """Lines captured from real kernels (tests/data/*/, see each folder's README), and the
    kprobe lines seen in the 6.1 lab guest and an EL7 3.10 guest."""
    lines = [
        "            ping-72    [000] d.s1     3.288210: r: (ip_rcv+0x0/0x3e0) len=0x54",
        "ping-87 [000] ..s1. 3.607227: iprcv: (ip_rcv+0x0/0x1d0) skb=0xffff8dcf81335800 len=84",
    ]
    patterns = ["ftrace/*.trace", "ftrace/*.txt", "stap/*.txt", "bpf/*.txt"]
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(DATA, pattern))):
            with open(path, errors="replace") as handle:
                lines.extend(line.rstrip("\n") for line in handle if line.strip())
    return [line for line in lines if not line.startswith("#")][:400]


SEEDS = captured_lines()
SEPARATORS = st.sampled_from(["\t", " ", "=", ":", "-", "(", ")", "0x", "\\", "/", "[", "]"])


@st.composite
def mutated(draw):
    """A captured line with one of its tab/space separated fields replaced, cut or doubled."""
    line = draw(st.sampled_from(SEEDS))
    sep = "\t" if "\t" in line else " "
    parts = line.split(sep)
    index = draw(st.integers(0, len(parts) - 1))
    how = draw(st.sampled_from(["replace", "cut", "drop", "double", "splice"]))
    if how == "replace":
        parts[index] = draw(st.one_of(st.text(max_size=12), st.integers().map(str),
                                      st.sampled_from(["-1", "", "0x", "ffffffffffffffffffff",
                                                       "\u00b2", "nan", "(fault)", "9" * 40])))
    elif how == "cut":
        return sep.join(parts)[:draw(st.integers(0, len(line)))]
    elif how == "drop":
        del parts[index]
    elif how == "double":
        parts.insert(index, parts[index])
    else:
        parts[index] = parts[index] + draw(SEPARATORS) + draw(st.text(max_size=6))
    return sep.join(parts)


LINES = st.one_of(mutated(), st.sampled_from(SEEDS), st.text(max_size=120))


def check_parse(name, line):
    backend = backends.get(name)
    event = backend.parse(line, None)
    assert event is None or isinstance(event, FlowEvent), event
    if event is not None:
        assert event.family in (None, 4, 6), event
        assert event.context in ("task", "softirq", "hardirq", "nmi"), event


def test_every_seed_parses_in_its_own_backend():
    """The seeds are real events: the mutations start from lines that parse."""
    parsed = [line for line in SEEDS
              if any(backends.get(n).parse(line, None) for n in ("ftrace", "stap", "bpf"))]
    assert len(parsed) > 20


@BOUNDED
@given(LINES)
def test_ftrace_parse_never_raises(line):
    check_parse("ftrace", line)


@BOUNDED
@given(st.lists(LINES.filter(lambda line: "\n" not in line), max_size=8))
def test_ftrace_batches_parse_as_each_line_alone(lines):
    """A batch (one findall over the joined lines) and a parser that remembers layouts
    give for each line what a parser that sees it first gives. Lines never hold a
    newline: every reader splits on it."""
    alone = [ftrace_parse.parse_line(line) for line in lines]
    parser = ftrace_parse.LineParser()
    assert [parser.parse(line) for line in lines] == alone
    assert ftrace_parse.LineParser().parse_lines(lines) == [ev for ev in alone if ev is not None]


ARG_NAMES = st.sampled_from(["skb", "sk", "len", "dev", "dp8", "dp16", "c_mark", "x", "proto"])
ARG_VALUES = st.one_of(
    st.sampled_from(['"lo"', '"a b"', '"a"b"', '""', "(fault)", "(fault)x", "(fault", "0x1f",
                     "84", "", "a=b", '"', "x\"", "-1", "ffff8800", "1f", "0x", "-x1", "007"]),
    st.text(alphabet='ab"() =x0-', max_size=6))


@BOUNDED
@given(st.lists(st.tuples(ARG_NAMES, ARG_VALUES, ARG_VALUES), min_size=1, max_size=5))
@example([("skb", "12", "-1"), ("len", "84", "84")])        # -1 is no address: radix 16
@example([("skb", "ffff88", "123"), ("len", "84", "84")])   # 123 is one: radix 10
def test_a_learnt_reader_reads_what_the_generic_split_reads(args):
    """A reader learnt from one body, where its pattern matches another body, takes the
    values and window that the generic split (_ARG.findall, then _numbers, what a parser
    seeing the line first does) takes: the fast path never reads a body otherwise."""
    learnt = " ".join("{}={}".format(name, value) for name, value, _ in args)
    body = " ".join("{}={}".format(name, value) for name, _, value in args)
    known = {}
    try:
        ftrace_parse._values("event", learnt, known)
    except (ValueError, struct.error):
        pass                                 # the line is no event; its reader is learnt
    reader = known["event"]
    match = reader.pattern.match(body) if reader.pattern is not None else None
    if match is not None:
        found = ftrace_parse._ARG.findall(body)
        names = tuple(name for name, _ in found)
        assert names == reader.layout.names
        generic = ftrace_parse._numbers(ftrace_parse._layout(names), [t for _, t in found])
        assert reader.read(match.groups()) == generic


@BOUNDED
@given(LINES)
def test_stap_parse_never_raises(line):
    check_parse("stap", line)


@BOUNDED
@given(LINES)
def test_bpf_parse_never_raises(line):
    check_parse("bpf", line)


# --- hostile identifiers never reach generated code ---------------------------------------

LAB_61 = dict(release="6.1.0-56-amd64", root=True, tracefs="/sys/kernel/tracing",
              kprobe_events=True, kprobe_pmu=True, btf="/sys/kernel/btf/vmlinux",
              bpftrace="0.17.0", bpftrace_loads=True, instances=True, arch="x86_64",
              tracepoints=["net:netif_receive_skb", "net:net_dev_queue", "skb:kfree_skb"])
EL7 = dict(LAB_61, release="3.10.0-1160.el7.x86_64", btf=None, kprobe_pmu=False,
           tracefs="/sys/kernel/debug/tracing")

#: Real functions too: those where a backend compiles the flow filter into the kernel side
#: (the IP header at skb->data, a struct sock *), so that hostile filter values get there.
KNOWN = st.sampled_from(["ip_rcv", "ip_output", "tcp_sendmsg", "__dev_queue_xmit"])
PROBES = st.builds(
    lambda name, skb_pos, sk_pos, fields: Probe(name, skb_pos, sk_pos, fields=fields),
    st.one_of(KNOWN, KNOWN, hostile_text(SYMBOLS)),
    st.one_of(st.sampled_from([1, 1, 3, None]), st.integers(-2, 9), st.text(max_size=2),
              st.booleans()),
    st.one_of(st.none(), st.integers(0, 7)),
    st.dictionaries(hostile_text(FIELD_NAMES), st.one_of(FIELD_PATHS, hostile_text(FIELD_PATHS)),
                    max_size=2))
RUN_IDS = st.one_of(st.just("lt4242"), hostile_text(st.from_regex(r"\Alt[0-9]{1,6}\Z")))
NETS = st.one_of(
    st.none(),
    st.tuples(st.ip_addresses(), st.integers(0, 128)).map(
        lambda t: ipaddress.ip_network("{}/{}".format(t[0], min(t[1], t[0].max_prefixlen)),
                                       strict=False)))


DIRECTIONS = st.sampled_from(fx.DIRECTIONS)
PRIMITIVES = st.one_of(
    st.builds(fx.Family, st.sampled_from([4, 6])),
    st.builds(fx.Proto, st.sampled_from([None, 4, 6]), st.integers(0, 255)),
    st.builds(fx.Net, DIRECTIONS, NETS.filter(lambda net: net is not None)),
    st.tuples(DIRECTIONS, st.integers(0, 65535), st.integers(0, 65535),
              st.sampled_from([None, 6, 17, 132])).map(
        lambda t: fx.Port(t[0], min(t[1], t[2]), max(t[1], t[2]), t[3])))
EXPRESSIONS = st.recursive(PRIMITIVES, lambda inner: st.one_of(
    st.builds(fx.Not, inner),
    st.lists(inner, min_size=2, max_size=3).map(lambda terms: fx.conjoin(*terms)),
    st.lists(inner, min_size=2, max_size=3).map(lambda terms: fx.Or(tuple(terms)))),
    max_leaves=6)
WRONG = st.one_of(hostile_text(st.just("17")), st.integers(-5, 1 << 20), st.booleans(),
                  st.floats(), st.none(), st.just(4.0), st.text(max_size=4).map(
                      lambda t: t + "/8"))


def hostile_expressions():
    """Trees of the AST's node types holding values of the wrong type or range."""
    wrong_node = st.one_of(
        st.builds(fx.Family, WRONG),
        st.builds(fx.Proto, st.one_of(WRONG, st.sampled_from([None, 4, 6])), WRONG),
        st.builds(fx.Net, st.one_of(WRONG, DIRECTIONS), WRONG),
        st.builds(fx.Port, st.one_of(WRONG, DIRECTIONS), WRONG, WRONG, WRONG),
        st.builds(fx.Port, DIRECTIONS, st.integers(0, 65535), st.integers(0, 65535),
                  st.one_of(WRONG, st.sampled_from([None, 6, 17, 132]))),
        st.builds(fx.And, st.one_of(st.tuples(PRIMITIVES), st.lists(PRIMITIVES, max_size=2))),
        st.builds(fx.Not, WRONG))
    return st.recursive(wrong_node, lambda inner: st.one_of(
        st.builds(fx.Not, inner),
        st.tuples(EXPRESSIONS, inner).map(lambda terms: fx.Or(terms))), max_leaves=4)


@st.composite
def flows(draw):
    """Valid filters, and filters whose expression was replaced by a tree of wrong values (a
    caller that bypassed FlowFilter.parse): the backends must check them again."""
    flow = FlowFilter(expr=draw(st.one_of(st.none(), EXPRESSIONS)))
    if draw(st.booleans()):
        flow.expr = draw(hostile_expressions())
    return flow


def expr_is_safe(expr, depth=0):
    """True when `expr` is a tree the parser could have made: node types, directions, numbers
    of the right type and range, ipaddress networks, no deeper than filterexpr.MAX_DEPTH."""
    def number(value, low, high):
        return type(value) is int and low <= value <= high
    kind = type(expr)
    if expr is None:
        return depth == 0
    if depth > fx.MAX_DEPTH:
        return False
    if kind in (fx.And, fx.Or):
        return type(expr.terms) is tuple and len(expr.terms) >= 2 and all(
            expr_is_safe(term, depth + 1) for term in expr.terms)
    if kind is fx.Not:
        return expr_is_safe(expr.term, depth + 1)
    if kind is fx.Family:
        return number(expr.version, 4, 6) and expr.version != 5
    if kind is fx.Proto:
        return (expr.version is None or number(expr.version, 4, 6) and expr.version != 5) \
            and number(expr.number, 0, 255)
    if kind is fx.Net:
        return expr.direction in fx.DIRECTIONS and isinstance(
            expr.network, (ipaddress.IPv4Network, ipaddress.IPv6Network))
    if kind is fx.Port:
        return expr.direction in fx.DIRECTIONS and number(expr.low, 0, 65535) and \
            number(expr.high, expr.low, 65535) and expr.proto in (None, 6, 17, 132) and \
            (expr.proto is None or type(expr.proto) is int)
    return False


def request_is_safe(request, run_id_used=True):
    """True when every user-supplied value of the request would pass strict validation.

    `run_id_used`: the stap backend names its module by content hash, so the run id
    never reaches its script."""
    if run_id_used and (not isinstance(request.run_id, str) or not SAFE_RUN_ID.match(request.run_id)):
        return False
    for probe in request.probes:
        if not isinstance(probe.name, str) or not SAFE_SYMBOL.match(probe.name):
            return False
        if any(pos is not None and (type(pos) is not int or not 1 <= pos <= 6)
               for pos in (probe.skb_pos, probe.sk_pos)):
            return False
        for name, path in probe.fields.items():
            if not SAFE_FIELD_NAME.match(name) or not SAFE_FIELD_PATH.match(path):
                return False
    return expr_is_safe(request.flow.expr)


def el7_ftrace():
    return FtraceBackend(layout_for=lambda host: offsets.from_table(host.release))


BUILDERS = {
    "stap": (lambda: backends.get("stap"), LAB_61),
    "ftrace": (el7_ftrace, EL7),
    "bpf": (lambda: backends.get("bpf"), LAB_61),
}


def check_build(name, probes, flow, run_id):
    make, facts = BUILDERS[name]
    request = TraceRequest(probes, flow, HostFacts(**facts), run_id=run_id)
    try:
        program = make().build(request)
    except LegacytraceError:
        return
    assert request_is_safe(request, run_id_used=name != "stap"), \
        "built from unvalidated input:\n" + program.text
    if name == "ftrace":
        for definition in program.part.definitions:
            assert "\n" not in definition.line(program.part.group)


@settings(BOUNDED, max_examples=100)
@given(st.lists(PROBES, min_size=1, max_size=3), flows(), RUN_IDS)
def test_stap_builds_only_from_validated_input(probes, flow, run_id):
    check_build("stap", probes, flow, run_id)


@settings(BOUNDED, max_examples=100)
@given(st.lists(PROBES, min_size=1, max_size=3), flows(), RUN_IDS)
def test_ftrace_builds_only_from_validated_input(probes, flow, run_id):
    check_build("ftrace", probes, flow, run_id)


@settings(BOUNDED, max_examples=100)
@given(st.lists(PROBES, min_size=1, max_size=3), flows(), RUN_IDS)
def test_bpf_builds_only_from_validated_input(probes, flow, run_id):
    check_build("bpf", probes, flow, run_id)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("expr", [fx.Family(4.0), fx.Family(True), fx.Proto(6.0, 6),
                                  fx.Proto(None, 6.0), fx.Port(fx.SRC, 80, 80, 6.0),
                                  fx.Port(fx.SRC, True, 80, None)])
def test_numbers_of_the_wrong_type_never_reach_a_program(name, expr):
    """4.0 == 4 and True == 1 in Python: each would pass a check by value alone."""
    flow = FlowFilter()
    flow.expr = expr
    check_build(name, [Probe("ip_rcv", 1)], flow, "lt4242")


@BOUNDED
@given(st.sampled_from(sorted(BUILDERS)), st.sampled_from(HOSTILE[:4]))
def test_a_trailing_newline_never_passes(name, piece):
    """`$` in a regex matches before a final newline; every check must anchor with \\Z."""
    probes = [Probe("ip_rcv" + piece, 1)]
    check_build(name, probes, FlowFilter(), "lt4242")
    check_build(name, [Probe("ip_rcv", 1)], FlowFilter(), "lt4242" + piece)


@BOUNDED
@given(st.text(max_size=40))
def test_any_comm_text_is_refused_or_safe_in_every_program(text):
    """--comm reaches bpftrace and SystemTap as a quoted string: what validate.comm lets
    through holds no quote, backslash or newline and fits the kernel's 15 characters."""
    try:
        comm = validate.comm(text)
    except UsageError:
        return
    assert len(comm) <= 15 and not set(comm) & set('"\\\n\r\t\0%')
    processes = ProcessFilter((), [comm])
    assert 'comm == "{}"'.format(comm) in bpf_predicate.process_predicate(processes)
    assert 'execname() == "{}"'.format(comm) in stap_condition.process_condition(processes)


@BOUNDED
@given(st.text(max_size=12))
def test_any_pid_text_is_a_pid_or_a_usage_error(text):
    try:
        value = validate.pid_text(text)
    except UsageError:
        return
    assert type(value) is int and 0 < value < validate.PID_LIMIT
