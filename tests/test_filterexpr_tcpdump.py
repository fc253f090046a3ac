"""The filter language held to tcpdump itself: a differential test.

Random expressions from the supported grammar (in every spelling the parser takes:
&& and and, carried-over values, hex and octal numbers, short nets, IPv6 in several
forms) and random IPv4/IPv6 packets (TCP, UDP, SCTP, ICMP, ICMPv6 and a few others,
no extension headers, no fragments: where the evaluator claims to be exact) go into a
pcap file. `tcpdump -r FILE -w - EXPR` picks packets; `filterexpr.evaluate()` must pick
exactly the same ones from the events legacytrace's own decoder (the ftrace parser's decode_ip)
makes of those packets, for the expression and for its normalised text. Random token
sequences check the other direction: whatever the parser accepts, tcpdump accepts and
reads the same way. Fixed seeds: every run compares the same cases.

Needs /usr/bin/tcpdump (Debian's; `make test` installs it). Without it the tests skip,
or fail under LEGACYTRACE_REQUIRE_KERNEL=1.
"""
import ipaddress
import random
import shutil
import socket
import struct
import subprocess

import pytest

from conftest import require
from legacytrace import filterexpr
from legacytrace.errors import UsageError
from legacytrace.backends.ftrace.parse import decode_ip
from legacytrace.model import FlowEvent

LINKTYPE_RAW = 101          # the packet starts at its IP header
SEEDS = (1, 2, 3, 4)
EXPRESSIONS_PER_SEED = 40
PACKETS_PER_SEED = 64       # 4 x 40 x 64 = 10,240 cases, twice (as written, normalised)

V4_HOSTS = ["10.0.0.1", "10.0.0.2", "10.1.2.3", "192.168.1.1", "172.16.5.4", "127.0.0.1",
            "1.1.1.1", "0.0.0.0", "255.255.255.255"]
V6_HOSTS = ["::1", "fe80::1", "2001:db8::1", "2001:db8::2", "2001:db8:1::5", "::ffff:10.0.0.1",
            "::", "fe80::a:b:c:d"]
V4_NETS = ["10.0.0.0/8", "10.0.0.0/24", "10.1.0.0/16", "192.168.0.0/16", "172.16.0.0/12",
           "0.0.0.0/0", "127.0.0.0/8", "10.0.0.0/31", "1.1.1.1/32"]
V6_NETS = ["2001:db8::/32", "fe80::/10", "::/0", "2001:db8:1::/48", "::ffff:0:0/96", "::1/128"]
PORTS = [0, 22, 53, 80, 443, 853, 1024, 8080, 65535]
#: IP protocols of the generated packets (6 TCP, 17 UDP, 132 SCTP, 136 UDP-Lite, 47 GRE,
#: 2 IGMP, 1 ICMP and 58 ICMPv6 over both versions, 59 no next header).
PACKET_PROTOS = {4: [6, 6, 17, 17, 1, 1, 132, 136, 47, 2, 58], 6: [6, 6, 17, 17, 58, 58, 132,
                                                                  136, 47, 1, 59]}
PROTO_NUMBERS = [0, 1, 2, 6, 17, 47, 58, 59, 132, 136, 255]


# --- packets, pcap, tcpdump ------------------------------------------------------------

def ipv4(src, dst, proto, payload, options=b""):
    header = struct.pack(">BBHHHBBH4s4s", 0x40 | (5 + len(options) // 4), 0,
                         20 + len(options) + len(payload), 1, 0x4000, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + options + payload


def ipv6(src, dst, next_header, payload):
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), next_header, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def transport(proto, rng):
    """A transport header with random ports or ICMP type/code/id/seq, then a few bytes."""
    sport, dport = (_port(rng), _port(rng))
    if proto == 6:
        head = _tcp_header(sport, dport)
    elif proto in (17, 136):
        head = struct.pack(">HHHH", sport, dport, 16, 0)
    elif proto == 132:
        head = struct.pack(">HHII", sport, dport, 0, 0)
    elif proto in (1, 58):
        head = struct.pack(">BBHHH", rng.choice([0, 3, 8, 128, 129, 135]), 0, 0,
                           rng.randrange(65536), rng.randrange(65536))
    else:
        head = bytes(rng.randrange(256) for _ in range(8))
    return head + b"payload!"


def _tcp_header(sport=80, dport=1000):
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 512, 0, 0)


def _port(rng):
    return rng.choice(PORTS) if rng.random() < 0.7 else rng.randrange(65536)


def _address(rng, version):
    if rng.random() < 0.75:
        return rng.choice(V4_HOSTS if version == 4 else V6_HOSTS)
    bits = rng.getrandbits(32 if version == 4 else 128)
    if rng.random() < 0.5:          # inside one of the nets, to give nets something to match
        net = ipaddress.ip_network(rng.choice(V4_NETS if version == 4 else V6_NETS))
        bits = int(net.network_address) | (bits & int(net.hostmask))
    return str(ipaddress.ip_address(bits) if version == 4 else ipaddress.IPv6Address(bits))


def random_packets(rng, count):
    packets = []
    for _ in range(count):
        version = rng.choice((4, 6))
        proto = rng.choice(PACKET_PROTOS[version])
        src, dst = _address(rng, version), _address(rng, version)
        if version == 4:
            options = b"\x01\x01\x01\x00" if rng.random() < 0.2 else b""   # NOPs, EOL
            packets.append(ipv4(src, dst, proto, transport(proto, rng), options))
        else:
            packets.append(ipv6(src, dst, proto, transport(proto, rng)))
    return packets


def event_of(packet):
    """The event legacytrace's decoder makes of an IP packet (as an ftrace probe would)."""
    fields = decode_ip(packet, 0)
    return FlowEvent(backend="test", source="kprobe", time_ns=0, cpu=0, func="ip_rcv",
                     **dict(zip(("family", "proto", "saddr", "daddr", "sport", "dport",
                                 "icmp_type", "icmp_code", "icmp_id", "icmp_seq"), fields)))


def write_pcap(path, packets):
    """pcap (microsecond timestamps); a packet's timestamp is its index, which tcpdump keeps."""
    with open(str(path), "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for index, packet in enumerate(packets):
            out.write(struct.pack("<IIII", index, 0, len(packet), len(packet)) + packet)


def tcpdump_picks(path, expression, refused=None):
    """Indexes of the packets `tcpdump -r path expression` keeps (it writes them as pcap);
    `refused` when tcpdump refuses the expression (else that fails the test)."""
    proc = subprocess.Popen(["tcpdump", "-n", "-r", str(path), "-w", "-", expression],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode != 0:
        if b"expression rejects all packets" in err:      # libpcap's optimizer saw it
            return set()
        assert refused is not None, "tcpdump refused {!r}: {}".format(
            expression, err.decode("utf-8", "replace").strip())
        return refused
    picked, at = set(), 24
    while at < len(out):
        seconds, _, length, _ = struct.unpack_from("<IIII", out, at)
        picked.add(seconds)
        at += 16 + length
    return picked


def evaluator_picks(expr, events):
    test = filterexpr.evaluator(expr)
    answers = [test(event) for event in events]
    assert None not in answers, "unknown for a packet without fragments or extension headers"
    return set(index for index, answer in enumerate(answers) if answer)


@pytest.fixture(scope="module")
def tcpdump():
    require(shutil.which("tcpdump") is not None, "needs tcpdump (apt-get install tcpdump)")


# --- random expressions in the grammar's spellings -------------------------------------

class Expressions(object):
    """Random expression text. `carry` is the qualifier a bare value would take over
    (proto word, direction, type), or None where tcpdump has none to give."""

    PROTO_WORDS = ["ip", "ip6", "tcp", "udp", "sctp", "icmp", "icmp6"]

    def __init__(self, rng):
        self.rng = rng

    def expression(self, depth=0, carry=None):
        text, carry = self.term(depth, carry)
        for _ in range(self.rng.choice((0, 1, 1, 2, 3))):
            op = self.rng.choice(("and", "&&", "or", "||", "or", "||"))
            if carry is not None and self.rng.random() < 0.35:
                text += " {} {}".format(op, self.bare(carry, depth))
            else:
                right, carry = self.term(depth, carry)
                text += " {} {}".format(op, right)
        return text, carry

    def term(self, depth, carry):
        roll = self.rng.random()
        if depth < 3 and roll < 0.12:
            inner, _ = self.expression(depth + 1, carry)
            return "(" + inner + ")", carry         # a parenthesis passes on the carry before it
        if depth < 3 and roll < 0.22:
            inner, carry = self.term(depth + 1, carry)
            return self.rng.choice(("not ", "!", "! ")) + inner, carry
        if roll < 0.35:
            return self.rng.choice(self.PROTO_WORDS), None
        return self.primitive()

    def primitive(self):
        kind = self.rng.choice(("host", "host", "net", "net", "port", "port", "portrange",
                                "proto", "dir"))
        rng = self.rng
        if kind == "proto":
            proto = rng.choice((None, "ip", "ip6"))
            carry = (proto, None, "proto")
            return " ".join(w for w in (proto, "proto", self.value(carry)) if w), carry
        if kind in ("port", "portrange"):
            proto = rng.choice((None, None, "tcp", "udp", "sctp"))
        else:
            proto = rng.choice((None, None, "ip", "ip6"))
        direction = rng.choice((None, None, None, "src", "dst", "src", "dst", "src or dst",
                                "dst or src", "src and dst", "dst and src"))
        if kind == "dir":               # a direction without a type: host
            direction, kind = rng.choice(("src", "dst", "src or dst")), "host"
            words = (proto, direction)
        else:
            words = (proto, direction, kind)
        carry = (proto, direction, kind)
        return " ".join(w for w in words + (self.value(carry),) if w), carry

    def bare(self, carry, depth):
        """A value that takes over `carry`: alone, negated, or a parenthesised group."""
        roll = self.rng.random()
        if depth < 3 and roll < 0.15:
            return self.rng.choice(("not ", "!")) + self.bare(carry, depth + 1)
        if depth < 3 and roll < 0.3:
            parts = [self.value(carry)]
            for _ in range(self.rng.choice((1, 2))):
                parts.append(self.rng.choice(("and", "or")))
                parts.append(self.bare(carry, depth + 1))
            return "(" + " ".join(parts) + ")"
        return self.value(carry)

    def value(self, carry):
        proto, _, kind = carry
        rng = self.rng
        if kind == "proto":
            if rng.random() < 0.3:
                name = rng.choice(sorted(filterexpr.PROTO_BY_NAME))
                return ("\\" if name in filterexpr.TCPDUMP_KEYWORDS or rng.random() < 0.2
                        else "") + name
            return self.number(rng.choice(PROTO_NUMBERS))
        if kind == "port":
            return self.number(_port(rng))
        if kind == "portrange":
            if rng.random() < 0.2:
                return self.number(_port(rng))
            low, high = _port(rng), _port(rng)
            if rng.random() < 0.5:
                high = min(65535, low + rng.randrange(2000))
            return "{}-{}".format(low, high)
        version = {"ip": 4, "ip6": 6}.get(proto) or rng.choice((4, 6))
        if kind == "host":
            return self.address(rng.choice(V4_HOSTS if version == 4 else V6_HOSTS))
        return self.net(version)

    def number(self, value):
        roll = self.rng.random()
        if roll < 0.15:
            return self.rng.choice(("0x{:x}", "0X{:X}")).format(value)
        if roll < 0.25 and value:
            return "0{:o}".format(value)
        return str(value)

    def address(self, text):
        if ":" not in text:
            return text
        address = ipaddress.IPv6Address(text)
        roll = self.rng.random()
        if roll < 0.2:
            return address.exploded
        if roll < 0.35:
            return text.upper()
        if roll < 0.45 and text == "::ffff:10.0.0.1":
            return "::ffff:a00:1"
        return str(address)

    def net(self, version):
        rng = self.rng
        net = ipaddress.ip_network(rng.choice(V4_NETS if version == 4 else V6_NETS))
        address = self.address(str(net.network_address))
        if version == 4 and net.prefixlen in (8, 16, 24) and rng.random() < 0.3:
            octets = str(net.network_address).split(".")[:net.prefixlen // 8]
            return ".".join(octets)     # tcpdump's short net: 10, 10.1, 10.1.2
        if version == 4 and rng.random() < 0.25:
            return "{} mask {}".format(address, net.netmask)
        if rng.random() < 0.15 and net.prefixlen == net.max_prefixlen:
            return address              # a net without a length is a host
        return "{}/{}".format(address, net.prefixlen)


# --- the differential tests --------------------------------------------------------------

def compare(path, expression, events, mismatches):
    """tcpdump against the evaluator for one expression text; returns cases compared."""
    expr = filterexpr.parse(expression)
    normalised = str(expr)
    assert filterexpr.parse(normalised) == expr, (expression, normalised)
    want = evaluator_picks(expr, events)
    for text in (expression, normalised):
        got = tcpdump_picks(path, text)
        for index in sorted(got ^ want):
            mismatches.append("{!r} (normalised {!r}) on packet {} {}: tcpdump {}, evaluator "
                              "{}".format(text, normalised, index, events[index].key,
                                          index in got, index in want))
    return 2 * len(events)


@pytest.mark.parametrize("seed", SEEDS)
def test_evaluator_picks_what_tcpdump_picks(tcpdump, tmp_path, seed):
    rng = random.Random(seed)
    packets = random_packets(rng, PACKETS_PER_SEED)
    events = [event_of(packet) for packet in packets]
    path = tmp_path / "packets.pcap"
    write_pcap(path, packets)
    expressions = Expressions(rng)
    cases, mismatches = 0, []
    for _ in range(EXPRESSIONS_PER_SEED):
        cases += compare(path, expressions.expression()[0], events, mismatches)
    assert cases == 2 * EXPRESSIONS_PER_SEED * PACKETS_PER_SEED
    assert not mismatches, "\n".join(mismatches[:20])


#: Words of token soups: keywords, values, operators, and words tcpdump has that the
#: parser refuses.
SOUP = ["host", "net", "port", "portrange", "proto", "src", "dst", "ip", "ip6", "tcp", "udp",
        "sctp", "icmp", "icmp6", "and", "or", "not", "&&", "||", "!", "(", "(", ")", ")", "mask",
        "/", "10.0.0.1", "10.1", "10", "::1", "2001:db8::/32", "53", "0x50", "017", "80-90",
        "255.255.0.0", "\\tcp", "gre", "24", "1.1.1.1", "fe80::1", "6", "17"]


def mutated(rng, text):
    """`text` with a word deleted, inserted, replaced or swapped, or a run of words put in
    parentheses: near misses of the grammar (qualifiers dropped, values carried over)."""
    words = text.replace("(", " ( ").replace(")", " ) ").split()
    at, how = rng.randrange(len(words)), rng.randrange(5)
    if how == 0 and len(words) > 1:
        del words[at]
    elif how == 1:
        words.insert(at, rng.choice(SOUP))
    elif how == 2:
        words[at] = rng.choice(SOUP)
    elif how == 3 and at + 1 < len(words):
        words[at], words[at + 1] = words[at + 1], words[at]
    else:
        end = rng.randrange(at, len(words)) + 1
        words[at:end] = ["("] + words[at:end] + [")"]
    return " ".join(words)


@pytest.mark.parametrize("seed", SEEDS)
def test_what_the_parser_accepts_tcpdump_reads_alike(tcpdump, tmp_path, seed):
    """Word soups and mutated expressions: each one the parser accepts, tcpdump must accept
    (or find that it rejects every packet) and pick the same packets with."""
    rng = random.Random(1000 + seed)
    packets = random_packets(rng, PACKETS_PER_SEED)
    events = [event_of(packet) for packet in packets]
    path = tmp_path / "packets.pcap"
    write_pcap(path, packets)
    expressions = Expressions(rng)
    tried, accepted, mismatches = 0, 0, []
    while tried < 1000:
        if rng.random() < 0.3:
            text = " ".join(rng.choice(SOUP) for _ in range(rng.randrange(1, 8)))
        else:
            text = mutated(rng, expressions.expression()[0])
        tried += 1
        try:
            filterexpr.parse(text)
        except UsageError:
            continue
        accepted += 1
        compare(path, text, events, mismatches)
    assert accepted >= 100, "too few accepted texts to say anything ({})".format(accepted)
    assert not mismatches, "\n".join(mismatches[:20])


#: Spellings at the edges of what tcpdump reads: each one the parser accepts must mean for
#: tcpdump what it means for the evaluator (the parser may refuse more than tcpdump does).
SPELLINGS = [
    "host 2001:DB8::1", "host 2001:0db8:0000:0000:0000:0000:0000:0001", "host 2001:db8:0:0:0:0:0:1",
    "host 1:2:3:4:5:6:7::", "host ::2:3:4:5:6:7:8", "host 1::3:4:5:6:7:8", "host 1:2:3:4:5:6:7:8",
    "host ::ffff:10.0.0.1", "host ::10.0.0.1", "host 1:2:3:4:5:6:10.0.0.1", "host ::ffff:a00:1",
    "host ::ffff:010.0.0.1", "host 1::2::3", "host :::1", "host 12345::1", "host ::ffff:10.0.0",
    "host 1:2:3:4:5:6:7:8:9", "host fe80::1%lo", "host 10.0.0.1", "host 010.0.0.1",
    "host 10.0.0.256", "host 10.0.0", "host 10", "host 0x0a000001", "net 10", "net 0", "net 0x0a",
    "net 012", "net 256", "net 10.1", "net 10.1.2", "net 10.1/16", "net 10.1.2/24", "net 10.1/8",
    "net 10.0.0.0 mask 255.255", "net 10.0.0.0 mask 255.255.255.0", "net 10.0.0.0/0x10",
    "net 10.0.0.0 mask 255.0.255.0", "net ::/0", "net fe80::/10", "net fe80::1/10", "net ::1",
    "host ::1/128", "net 10.0.0.1", "port 0x50", "port 0120", "port 080", "port 65535",
    "port 65536", "port 0X1bb", "port 000000000000", "portrange 080-090", "portrange 90-80",
    "portrange 1-65536", "portrange 0x50", "portrange 1-0x10", "portrange 80-90x", "proto 0x11",
    "proto 021", "proto 255", "proto 256", "proto \\tcp", "proto tcp", "proto gre",
    "proto \\gre", "proto ipv6-icmp", "proto \\icmp6", "proto udplite", "ip6 proto \\esp",
    "proto esp", "ip proto \\sctp", "ip6 proto \\icmp", "proto \\ip",
] + ["proto {}{}".format("\\" if name in filterexpr.TCPDUMP_KEYWORDS else "", name)
     for name in sorted(filterexpr.PROTO_BY_NAME)]
SPELLING_PACKETS = [
    ipv6("2001:db8::1", "1:2:3:4:5:6:7:0", 6, _tcp_header(80, 90)),
    ipv6("0:2:3:4:5:6:7:8", "1:0:3:4:5:6:7:8", 17, _tcp_header(443, 16)[:8]),
    ipv6("1:2:3:4:5:6:7:8", "::ffff:10.0.0.1", 132, _tcp_header(8, 85)[:12]),
    ipv6("::10.0.0.1", "1:2:3:4:5:6:a00:1", 47, b"\0" * 8),
    ipv6("fe80::1", "::1", 58, b"\x80\0\0\0\0\1\0\1"),
    ipv6("fe80::2", "::2", 50, b"\0" * 8),
    ipv4("10.0.0.1", "10.1.2.3", 6, _tcp_header(80, 1000)),
    ipv4("0.0.0.10", "10.0.0.0", 17, _tcp_header(1000, 0x1bb)[:8]),
    ipv4("1.0.0.1", "10.0.1.1", 47, b"\0" * 8),
    ipv4("10.0.0.2", "11.0.0.1", 136, _tcp_header(16, 90)[:8]),
    ipv4("8.8.8.8", "10.0.0.1", 132, _tcp_header(65535, 53)[:12]),
    ipv4("10.1.2.4", "9.9.9.9", 1, b"\x08\0\0\0\0\1\0\1"),
    ipv4("0.0.0.0", "255.255.255.255", 17, _tcp_header(68, 67)[:8]),
    ipv4("10.0.0.3", "10.0.0.4", 255, b"\0" * 8),
    ipv6("fe80::3", "fe80::4", 1, b"\x08\0\0\0\0\1\0\1"),
] + [ipv4("10.9.9.9", "10.9.9.8", number, _tcp_header()[:12])
     for number in sorted(set(filterexpr.PROTO_BY_NAME.values()))]


def test_spellings_the_parser_takes_mean_the_same_to_tcpdump(tcpdump, tmp_path):
    path = tmp_path / "spellings.pcap"
    write_pcap(path, SPELLING_PACKETS)
    events = [event_of(packet) for packet in SPELLING_PACKETS]
    accepted, mismatches = [], []
    for text in SPELLINGS:
        try:
            expr = filterexpr.parse(text)
        except UsageError:
            continue
        accepted.append(text)
        got = tcpdump_picks(path, text, refused="refused")
        assert got != "refused", "the parser takes {!r}, tcpdump refuses it".format(text)
        want = evaluator_picks(expr, events)
        assert got, "no packet for {!r}: add one".format(text)
        if got != want:
            mismatches.append("{!r}: tcpdump {}, evaluator {}".format(text, got, want))
    assert not mismatches, "\n".join(mismatches)
    assert len(accepted) >= 50, accepted


# --- where the event knows less than the packet: the documented differences ---------------

HOP_BY_HOP, FRAGMENT = 0, 44
#: TCP from port 80 behind a hop-by-hop header (8 bytes: next header, length, PadN).
AFTER_HOP_BY_HOP = ipv6("::1", "::2", HOP_BY_HOP, bytes([6, 0, 1, 4, 0, 0, 0, 0]) + _tcp_header())
#: The first fragment (offset 0, more to come) and a later one (offset 16) of TCP over IPv6.
FIRST_FRAGMENT6 = ipv6("::1", "::2", FRAGMENT, bytes([6, 0, 0, 1, 0, 0, 0, 1]) + _tcp_header())
LATER_FRAGMENT6 = ipv6("::1", "::2", FRAGMENT, bytes([6, 0, 0, 0x11, 0, 0, 0, 1]) + _tcp_header())
#: A later fragment (offset 8) of TCP over IPv4.
LATER_FRAGMENT4 = ipv4("10.0.0.1", "10.0.0.2", 6, _tcp_header())[:6] + \
    b"\x00\x01" + ipv4("10.0.0.1", "10.0.0.2", 6, _tcp_header())[8:]

#: (packet, expression, tcpdump's answer, the evaluator's answer): the module docstring's
#: list of differences, each held to tcpdump.
DIFFERENCES = [
    (AFTER_HOP_BY_HOP, "tcp", False, True),           # libpcap sees next header 0
    (AFTER_HOP_BY_HOP, "port 80", False, True),
    (AFTER_HOP_BY_HOP, "ip6 proto 0", True, False),
    (FIRST_FRAGMENT6, "tcp", True, True),             # proto looks behind a fragment header
    (FIRST_FRAGMENT6, "port 80", False, True),        # port does not
    (LATER_FRAGMENT6, "tcp", True, True),
    (LATER_FRAGMENT6, "port 80", False, None),        # no ports in the event
    (LATER_FRAGMENT6, "not port 80", True, None),
    (LATER_FRAGMENT4, "tcp", True, True),
    (LATER_FRAGMENT4, "port 80", False, None),
    (LATER_FRAGMENT4, "not port 80", True, None),
]


def test_documented_differences_hold(tcpdump, tmp_path):
    packets = [packet for packet, _, _, _ in DIFFERENCES]
    path = tmp_path / "differences.pcap"
    write_pcap(path, packets)
    for index, (packet, expression, by_tcpdump, by_evaluator) in enumerate(DIFFERENCES):
        assert (index in tcpdump_picks(path, expression)) is by_tcpdump, expression
        assert filterexpr.evaluate(filterexpr.parse(expression), event_of(packet)) \
            is by_evaluator, expression
