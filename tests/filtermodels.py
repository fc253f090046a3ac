"""Models of the bpftrace and SystemTap conditions a filter expression compiles into, and the
values each mechanism reads from an event's packet: enough to evaluate the generated text
in Python (the operators and calls the compilers emit, nothing more)."""
import ipaddress
import random
import re
import struct

from legacytrace import filterexpr as fx
from legacytrace.model import FlowEvent

_LOGIC = [("&&", " and "), ("||", " or "), ("!(", " not (")]


def _python(text, names):
    """Generated condition text as a Python expression over `names` substitutions."""
    for old, new in names + _LOGIC:
        text = text.replace(old, new)
    assert "!" not in text.replace("!=", ""), text
    return text


def bpftrace_holds(text, values):
    """Evaluate a bpftrace condition over `values` ($family ... as plain names)."""
    return eval(_python(text, [("$", "v_")]), {}, dict(("v_" + k, v) for k, v in values.items()))


def bpftrace_values(ev):
    """What the bpftrace program reads for the packet of event `ev` (0 or -1 where unknown)."""
    values = {"family": ev.family or 0, "proto": 0 if ev.proto is None else ev.proto,
              "sport": -1 if ev.sport is None else ev.sport,
              "dport": -1 if ev.dport is None else ev.dport}
    for side, address in (("s", ev.saddr), ("d", ev.daddr)):
        packed = ipaddress.ip_address(address).packed if address else bytes(16)
        words = struct.unpack("<I", packed)[0:1] + (0,) if len(packed) == 4 else \
            struct.unpack("<QQ", packed)
        values[side + "0"], values[side + "1"] = words
    return values


def stap_holds(condition, ev):
    """Evaluate lt_flow_match()'s condition (backends/stap/condition.py) on the lt_pkt that
    the embedded C fills for the packet of event `ev`."""
    nets = dict((net["name"], net) for net in condition.nets)

    def addr_in(address, name, size):
        net = nets[name]
        return all(a & m == n for a, n, m in zip(address[:size], net["net"], net["mask"]))
    pkt = {"p_family": ev.family or 0, "p_proto": -1 if ev.proto is None else ev.proto,
           "p_sport": -1 if ev.sport is None else ev.sport,
           "p_dport": -1 if ev.dport is None else ev.dport,
           "p_saddr": ipaddress.ip_address(ev.saddr).packed if ev.saddr else bytes(16),
           "p_daddr": ipaddress.ip_address(ev.daddr).packed if ev.daddr else bytes(16),
           "addr_in": addr_in}
    text = re.sub(r"lt_addr_in\(p->(\w)addr, lt_(\w+)_net, lt_\w+_mask, (\d+)\)",
                  r"addr_in(p_\1addr, '\2', \3)", condition.text)
    return eval(_python(text, [("p->", "p_")]), {}, pkt)


V4 = ["10.0.0.1", "10.0.0.2", "10.1.7.9", "192.168.69.6", "127.0.0.1"]
V6 = ["::1", "fe80::1", "2001:db8::45", "2001:db8:1::6"]
PORTS = [0, 22, 53, 80, 443, 1024, 2048, 32768, 65535]
PROTOS = [1, 6, 17, 58, 132, 47]


def random_event(rng):
    """An event as a backend reports it: a tuple, or none; ports only for TCP, UDP, SCTP."""
    family = rng.choice((4, 6, 4, 6, None))
    if family is None:
        return FlowEvent(func="f")
    proto = rng.choice(PROTOS + [None])
    pool = V4 if family == 4 else V6
    ported = proto in (6, 17, 132) and rng.random() < 0.9
    return FlowEvent(family=family, proto=proto, saddr=rng.choice(pool), daddr=rng.choice(pool),
                     sport=rng.choice(PORTS) if ported else None,
                     dport=rng.choice(PORTS) if ported else None)


def random_expression(rng, depth=0):
    """An expression over the same pools, so that its primitives often match."""
    roll = rng.random()
    if depth > 2 or roll < 0.4:
        return _primitive(rng)
    if roll < 0.55:
        return fx.Not(random_expression(rng, depth + 1))
    terms = [random_expression(rng, depth + 1) for _ in range(rng.choice((2, 3)))]
    if roll < 0.8:
        return fx.conjoin(*terms)
    return fx.parse(" or ".join("({})".format(fx.text(term)) for term in terms))


def _primitive(rng):
    direction = rng.choice(fx.DIRECTIONS)
    kind = rng.choice(("family", "proto", "host", "net", "port", "portrange"))
    if kind == "family":
        return fx.Family(rng.choice((4, 6)))
    if kind == "proto":
        return fx.Proto(rng.choice((None, 4, 6)), rng.choice(PROTOS + [0, 43]))
    if kind in ("host", "net"):
        address = ipaddress.ip_address(rng.choice(V4 + V6))
        length = address.max_prefixlen if kind == "host" else rng.randrange(address.max_prefixlen + 1)
        return fx.Net(direction, ipaddress.ip_network((address, length), strict=False))
    low = rng.choice(PORTS)
    high = low if kind == "port" else rng.choice([p for p in PORTS if p >= low])
    return fx.Port(direction, low, high, rng.choice((None, None, 6, 17, 132)))


def cases(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        yield rng, random_expression(rng)
