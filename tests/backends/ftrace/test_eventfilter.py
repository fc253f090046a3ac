"""The filter expression as an ftrace event filter (backends/ftrace/eventfilter.py).

The property that matters: the kernel never drops an event that user space keeps. It is
checked on packets built here, read as the kernel reads them (the fields at their places
from skb->data or the struct sock, little-endian, bitfields), the filter text evaluated by a
model of ftrace's filter (comparisons, &&, ||, parentheses: what 3.10 takes), against the
reference evaluator on the event user space decodes from the same bytes
(backends/ftrace/parse.py). Expressions and packets are drawn from small pools of addresses
and ports, with fixed seeds, so that primitives match often and a run is the same every time.
"""
import ipaddress
import random
import re
import struct

import pytest

import filtermodels
from filtermodels import cases
from legacytrace import filterexpr as fx
from legacytrace.backends.ftrace import eventfilter as ff, kprobe
from legacytrace.kernel import skbuff
from legacytrace.backends.ftrace.parse import FLOW_FIELDS, _sock, decode_ip
from legacytrace.model import FlowEvent

# --- a model of ftrace's event filter ---------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\(|\)|&&|\|\||==|!=|<=|>=|<|>)|([a-z][a-z0-9_]*)|([0-9]+))")


def filter_holds(text, values):
    """Evaluate filter `text` as ftrace does, `values` the fetched fields by name."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match and match.end() > pos, "cannot read {!r}".format(text[pos:pos + 20])
        tokens.append(match.group(1) or match.group(2) or int(match.group(3)))
        pos = match.end()
    tokens.append(None)
    at = [0]

    def peek():
        return tokens[at[0]]

    def take():
        at[0] += 1
        return tokens[at[0] - 1]

    def disjunction():
        value = conjunction()
        while peek() == "||":
            take()
            value = conjunction() or value
        return value

    def conjunction():
        value = primary()
        while peek() == "&&":
            take()
            value = primary() and value
        return value

    def primary():
        if peek() == "(":
            take()
            value = disjunction()
            assert take() == ")"
            return value
        name, op, number = take(), take(), take()
        left = values[name]
        return {"==": left == number, "!=": left != number, "<": left < number,
                "<=": left <= number, ">": left > number, ">=": left >= number}[op]
    value = disjunction()
    assert peek() is None
    return value


def fetch(field, memory, data, sock):
    """A field as a kprobe fetch reads it: `data` the index of skb->data in `memory`."""
    source, base = (sock, 0) if field.base == "sk" else (memory, data)
    raw = source[base + field.at:base + field.at + field.size]
    assert len(raw) == field.size and base + field.at >= 0
    value = int.from_bytes(raw, "little")
    if field.bits:
        width, shift = field.bits
        value = (value >> shift) & ((1 << width) - 1)
    return value


#: What lies around a packet in the kernel's memory: the kernel reads it where a view looks
#: past the packet's bytes.
GARBAGE = bytes((i * 37 + 11) % 256 for i in range(64))


def kernel_keeps(compiled, memory, data, eth=0, sock=b""):
    if compiled.text is None:
        return True
    memory, data = GARBAGE + memory + GARBAGE, data + len(GARBAGE)
    assert "!" not in compiled.text.replace("!=", "") and "&" not in compiled.text.replace("&&", "")
    assert len(compiled.text) <= ff.MAX_TEXT
    values = dict((f.name, fetch(f, memory, data, sock)) for f in compiled.fields)
    values["eth"] = eth
    return filter_holds(compiled.text, values)


# --- packets and expressions over small pools ---------------------------------------------------

V4 = [ipaddress.IPv4Address(a) for a in filtermodels.V4]
V6 = [ipaddress.IPv6Address(a) for a in filtermodels.V6]
PORTS, PROTOS = filtermodels.PORTS, filtermodels.PROTOS


def transport(rng, proto):
    if proto in (6, 17, 132):
        return struct.pack(">HH", rng.choice(PORTS), rng.choice(PORTS)) + bytes(
            rng.randrange(256) for _ in range(16))
    return bytes(rng.randrange(256) for _ in range(20))


def packet(rng, family, options=True):
    """(IP packet bytes, protocol number): options or extension headers at random."""
    proto = rng.choice(PROTOS)
    if family == 4:
        opts = bytes(4 * rng.choice((0, 0, 0, 1, 2))) if options else b""
        frag = rng.choice((0, 0, 0, 0x2000, 0x0010))
        header = struct.pack(">BBHHHBBH4s4s", 0x45 + len(opts) // 4, 0, 60, rng.randrange(65536),
                             frag, 64, proto, 0, rng.choice(V4).packed, rng.choice(V4).packed)
        return header + opts + transport(rng, proto), proto
    ext = b""
    next_header = proto
    if options and rng.random() < 0.3:
        ext, next_header = struct.pack(">BB6x", proto, 0), rng.choice((0, 60))
    header = struct.pack(">IHBB16s16s", 0x60000000, 40, next_header, 64, rng.choice(V6).packed,
                         rng.choice(V6).packed)
    return header + ext + transport(rng, proto), proto


def event_of(ip, eth_le=0):
    """The event user space decodes from the packet's IP header (all of it known)."""
    flow = decode_ip(ip, 0, eth_le) or (None,) * len(FLOW_FIELDS)
    return FlowEvent(**dict(zip(FLOW_FIELDS, flow)))


# the views the ftrace backend compiles for (kprobe.ip_views), by where skb->data points
L3 = list(kprobe.ip_views("ip_rcv"))
L2 = list(kprobe.ip_views("dev_queue_xmit"))
ANYWHERE = list(kprobe.ip_views("kfree_skb"))


# --- the property, per place the IP header can be -------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_at_the_ip_header_the_kernel_keeps_what_user_space_keeps(seed):
    """ip_rcv, ip_output...: skb->data at the IP header, options and extension headers too."""
    for rng, expr in cases(seed, 600):
        compiled = ff.compile_ip(expr, L3, eth="eth")
        for _ in range(8):
            ip, _ = packet(rng, rng.choice((4, 6)))
            eth = rng.choice((0, ff.ETH_P_IP_LE if ip[0] >> 4 == 4 else ff.ETH_P_IPV6_LE))
            if fx.evaluate(expr, event_of(ip)) is True:
                assert kernel_keeps(compiled, ip, 0, eth), (fx.text(expr), ip.hex())


@pytest.mark.parametrize("seed", range(4))
def test_at_the_link_header_the_kernel_keeps_what_user_space_keeps(seed):
    """__dev_queue_xmit: skb->data at the Ethernet header."""
    for rng, expr in cases(100 + seed, 600):
        compiled = ff.compile_ip(expr, L2, eth="eth")
        for _ in range(8):
            ip, _ = packet(rng, rng.choice((4, 6)))
            ethertype = b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd"
            frame = bytes(12) + ethertype + ip
            if fx.evaluate(expr, event_of(ip)) is True:
                assert kernel_keeps(compiled, frame, 0), (fx.text(expr), ip.hex())


@pytest.mark.parametrize("seed", range(4))
def test_at_the_transport_header_the_kernel_keeps_what_user_space_keeps(seed):
    """tcp_v4_rcv, udpv6_rcv...: skb->data after the IP header, which has no options or
    extension headers there (elsewhere the guard's two bytes decide, see the next test)."""
    for rng, expr in cases(200 + seed, 600):
        for function, (family, protos) in sorted(skbuff.TRANSPORT.items()):
            compiled = ff.compile_ip(expr, kprobe.ip_views(function), eth="eth")
            for _ in range(2):
                ip, proto = packet(rng, family, options=False)
                if protos and proto not in protos:
                    continue
                at = 20 if family == 4 else 40
                if fx.evaluate(expr, event_of(ip)) is True:
                    assert kernel_keeps(compiled, ip, at), (function, fx.text(expr), ip.hex())


@pytest.mark.parametrize("seed", range(4))
def test_where_data_may_point_anywhere_the_kernel_keeps_what_user_space_keeps(seed):
    """kfree_skb: a view for each place; the packet's real one is among them."""
    views = ANYWHERE
    assert views[:4] == L3 + L2
    l4 = dict((view.family, view.protos) for view in views[4:])
    for rng, expr in cases(300 + seed, 300):
        compiled = ff.compile_ip(expr, views, eth="eth")
        for _ in range(8):
            family = rng.choice((4, 6))
            ip, proto = packet(rng, family, options=False)
            layer = rng.choice(("l2", "l3", "l4") if proto in l4[family] else ("l2", "l3"))
            ethertype = b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd"
            memory = bytes(12) + ethertype + ip
            data = {"l2": 0, "l3": 14, "l4": 14 + (20 if ip[0] >> 4 == 4 else 40)}[layer]
            eth = rng.choice((0, ff.ETH_P_IP_LE if family == 4 else ff.ETH_P_IPV6_LE))
            real = {"l2": L2, "l3": L3, "l4": views[4:]}[layer][family // 6]
            if fx.evaluate(expr, event_of(ip)) is True and real not in compiled.left_out:
                assert kernel_keeps(compiled, memory, data, eth), (fx.text(expr), layer, ip.hex())


OFFSETS = {"skc_daddr": 0, "skc_rcv_saddr": 4, "skc_dport": 12, "skc_num": 14, "skc_family": 16,
           "skc_v6_daddr": 56, "skc_v6_rcv_saddr": 72}


def sock(rng):
    """The first 88 bytes of a struct sock with a random tuple (EL7's sock_common offsets)."""
    memory = bytearray(88)
    family = rng.choice((2, 10, 1))
    struct.pack_into("<H", memory, 16, family)
    struct.pack_into(">H", memory, 12, rng.choice(PORTS))
    struct.pack_into("<H", memory, 14, rng.choice(PORTS))
    memory[4:8], memory[0:4] = rng.choice(V4).packed, rng.choice(V4).packed
    memory[72:88], memory[56:72] = rng.choice(V6).packed, rng.choice(V6).packed
    return bytes(memory)


def sock_event(memory, func):
    """The event user space decodes from the socket's fields (parse._sock)."""
    family, dport, num = struct.unpack_from("<H", memory, 16)[0], \
        struct.unpack_from("<H", memory, 12)[0], struct.unpack_from("<H", memory, 14)[0]
    words = dict(skc_family=family, skc_saddr=struct.unpack_from("<I", memory, 4)[0],
                 skc_daddr=struct.unpack_from("<I", memory, 0)[0], skc_sport=num, skc_dport=dport,
                 skc_saddr6a=struct.unpack_from("<Q", memory, 72)[0],
                 skc_saddr6b=struct.unpack_from("<Q", memory, 80)[0],
                 skc_daddr6a=struct.unpack_from("<Q", memory, 56)[0],
                 skc_daddr6b=struct.unpack_from("<Q", memory, 64)[0])
    return FlowEvent(**dict(zip(FLOW_FIELDS, _sock(words, func))))


@pytest.mark.parametrize("seed", range(4))
def test_on_a_socket_the_kernel_keeps_what_user_space_keeps(seed):
    for rng, expr in cases(400 + seed, 600):
        for func, proto in (("tcp_connect", 6), ("udp_sendmsg", 17), ("inet_sendmsg", None)):
            compiled = ff.compile_sock(expr, ff.SockView(OFFSETS, proto))
            for _ in range(3):
                memory = sock(rng)
                if fx.evaluate(expr, sock_event(memory, func)) is True:
                    assert kernel_keeps(compiled, b"", 0, sock=memory), fx.text(expr)


# --- the filters themselves ---------------------------------------------------------------------

def test_the_filter_drops_other_flows_where_it_can_tell():
    expr = fx.parse("udp and dst port 53")
    compiled = ff.compile_ip(expr, L3, eth="eth")
    rng = random.Random(7)
    dns = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 17, 0, V4[0].packed, V4[1].packed) \
        + struct.pack(">HH", 4000, 53) + bytes(16)
    ping = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 1, 0, V4[0].packed, V4[1].packed) \
        + transport(rng, 1)
    assert kernel_keeps(compiled, dns, 0, ff.ETH_P_IP_LE)
    assert not kernel_keeps(compiled, ping, 0, ff.ETH_P_IP_LE)
    # an IPv4 header with options: the ports' place is unknown to the view, so it passes
    options = dns[:1].replace(b"\x45", b"\x46") + dns[1:20] + bytes(4) + dns[20:]
    assert kernel_keeps(compiled, options, 0, ff.ETH_P_IP_LE)
    # not IP at all (the guard fails): passed to user space, which decides
    assert kernel_keeps(compiled, bytes(60), 0, 0x0608)


def test_a_packet_not_laid_out_as_the_view_says_passes():
    """tcp_v4_rcv with an IPv4 header of options: the byte 20 before data is not 0x45."""
    compiled = ff.compile_ip(fx.parse("host 10.9.9.9"), [ff.IPView(4, -20, None, (6,))], eth="eth")
    header = struct.pack(">BBHHHBBH4s4s", 0x46, 0, 64, 0x1234, 0, 64, 6, 0, V4[0].packed,
                         V4[1].packed) + bytes(4)
    assert kernel_keeps(compiled, header + struct.pack(">HH", 80, 1000) + bytes(16), 24)


def test_fields_are_fetched_once_and_only_when_used():
    compiled = ff.compile_ip(fx.parse("src net 10.20.0.0/14 or port 53 or port 5353"),
                             [ff.IPView(4, 0, None, ())], eth="eth")
    names = [f.name for f in compiled.fields]
    assert len(names) == len(set(names))
    assert all(re.search(r"\b{}\b".format(n), compiled.text) for n in names)
    assert ff.Field("f40_sb0_8", "data", 12, 4, (8, 0)) in compiled.fields
    assert ff.Field("f40_sb10_6", "data", 12, 4, (6, 10)) in compiled.fields   # 20 >> 2 == 5
    assert "f40_sb10_6 == 5" in compiled.text


def test_no_expression_no_filter_and_an_impossible_one_drops_everything():
    assert ff.compile_ip(None, L3).text is None
    assert ff.compile_sock(None, ff.SockView(OFFSETS, 6)).text is None
    never = ff.compile_sock(fx.parse("icmp"), ff.SockView(OFFSETS, 6))
    assert never.text == "fs_family > 65535"
    assert not kernel_keeps(never, b"", 0, sock=sock(random.Random(1)))


def test_views_that_do_not_fit_a_page_are_left_out_last_first():
    expr = fx.parse(" or ".join("portrange {}-{}".format(p, p + 7) for p in range(1000, 1120, 8))
                    + " and not host 10.0.0.1 and net 2001:db8::/32")
    views = L3 + L2 + [ff.IPView(4, -20, None, (6, 17)), ff.IPView(6, -40, None, (6, 17))]
    compiled = ff.compile_ip(expr, views, eth="eth")
    assert compiled.text and len(compiled.text) <= ff.MAX_TEXT
    assert compiled.left_out and compiled.left_out == tuple(views[-len(compiled.left_out):])
    kept = views[:len(views) - len(compiled.left_out)]
    assert ff.compile_ip(expr, kept, eth="eth").text == compiled.text
    assert ff.compile_ip(expr, views, eth="eth", limit=10) == ff.Compiled((), None, tuple(views))
