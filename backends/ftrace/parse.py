"""Pure parsing of ftrace output lines (trace_pipe, trace) into FlowEvents.

One parser reads every kernel's format (docs/kernel-facts.md, "kprobe_events"):

    3.10/EL7: `            ping-72    [000] d.s1     3.288210: r: (ip_rcv+0x0/0x3e0) len=0x54`
    6.x:      `            ping-87    [000] ..s1.    3.607227: iprcv: (ip_rcv+0x0/0x1d0) skb=0xffff...`
    6.x with record-tgid: `ping-87  (     87) [000] ..s1. ...`

A kprobe line needs no Program to be understood: the argument names say what each
value is (see kprobe.py), so a capture written by the standalone sh
script parses like a live session. Numbers: `0x..` is hex; the `u*` types print hex
before 4.9 (`0x54` on EL7 and 4.4-4.8, `54` without `0x` on upstream 3.10) and decimal
from 4.9, so an unprefixed number is read as hex only when the line's pointer is.

Static tracepoints (net:*, skb:*; legacytrace.kernel.tracepoints) print their own formats, and
only their event's name: the event's `func` is the tracepoint's full name (`net:net_dev_queue`)
as every backend gives it. `len=%u` is decimal,
`skbaddr=%p` hex without `0x`, `reason: NAME` for kfree_skb from 5.17.
Arrays (`pi=+u0(...):x8[64]`, a peek) print as `{0x47,0x45,...}`: read as bytes.
"""
import functools
import operator
import re
import struct
from socket import AF_INET, AF_INET6, inet_ntop

from legacytrace.model import EVENT_FIELDS, FlowEvent
from legacytrace.payload import fields as payload_fields
from legacytrace.kernel.tracepoints import BY_EVENT as TRACEPOINTS
from legacytrace.kernel import sock

BACKEND = "ftrace"
_new_event = tuple.__new__

# COMM-TID [(TGID)] [CPU] [FLAGS] SECS[.FRACTION]: EVENT: [(KPROBE)] BODY, in one match per line.
# Of FLAGS only the third character (the context) is taken. KPROBE: `ip_rcv+0x0/0x1d0` of a
# kprobe, `ip_rcv_finish+0x2c/0x70 <- ip_rcv` of a kretprobe. ftrace pads with spaces; no
# part but BODY can hold a newline, so one findall over a batch of lines joined by newlines
# (LineParser.parse_lines) finds each line's match, none across two. An optional part is
# written `(?:...|)`, which the regex engine takes faster than `(?:...)?`.
_LINE = re.compile(
    r"^ *(.*?)-(\d+) +(?:\( *(-+|\d+)\) +|)\[(\d+)\] +(?:\S\S(\S)\S\S? +|)"
    r"(\d+)(?:\.(\d+)|): +(\w+): ?"
    r"(?:\(([\w.]+)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+(?: <- ([\w.]+)|)\) ?|)(.*)$", re.MULTILINE)
_ARG = re.compile(r'(\w+)=("[^"]*"|\(fault\)|\S*)')
_REASON = re.compile(r"\breason: (\w+)")
_HEX = re.compile(r"^(0x)?[0-9a-f]+\Z")

# Third flag character: h hardirq, H hardirq inside softirq, s softirq, z/Z NMI (newer kernels).
_CONTEXT = {"s": "softirq", "h": "hardirq", "H": "hardirq", "z": "nmi", "Z": "nmi"}

# skb->protocol (__be16) as a little-endian u16 fetch prints it: 0x0800 -> 0x0008.
ETH_P_IP_LE = 0x0008
ETH_P_IPV6_LE = 0xdd86
# struct sock_common.skc_family (Linux values)
SK_AF_INET = 2
SK_AF_INET6 = 10
# IPv6 extension headers whose length is (byte1 + 1) * 8: hop-by-hop, routing, destination options.
_IPV6_EXT = (0, 43, 60)
_IPV6_FRAGMENT = 44
_PORTS = (6, 17, 132, 136)           # tcp, udp, sctp, udplite: ports first in the header
_ICMP = (1, 58)
_U64X2 = struct.Struct("<QQ")

#: skb:kfree_skb's `protocol` (an ethertype) -> IP version
_ETHERTYPE_FAMILY = {0x0800: 4, 0x86dd: 6}


class _Layout(object):
    """What each argument of one kprobe event definition is, by its place on the line.

    Every line of a kprobe event prints the same names in the same order (its
    kprobe_events definition), so what each name is (a value this parser reads, a
    window word, or one it has no use for; which one is the pointer that tells the
    radix) is worked out once per definition, not once per line (bench/ingest.py).
    `scalars`: (place, name) of the values read (the last of a repeated name counts,
    as in a dict); `fields`: (name, field) of the values that go to the event's fields
    (`c_NAME` as NAME, then `reason` and `caller`); `peek`: whether the line holds a
    peek; `pointers`: the places of `skb` then `sk`; `window`: the places of the window
    words when they are contiguous (8 bytes apart, ascending), else empty, and
    `window_start` the first one's offset from skb->data.
    """

    __slots__ = ("names", "scalars", "fields", "peek", "pointers", "window", "window_start",
                 "window_format")

    def __init__(self, names):
        self.names = names
        offsets = [_window_offset(name) for name in names]
        last = dict((name, place) for place, name in enumerate(names))
        self.scalars = [(place, name) for name, place in last.items()
                        if offsets[place] is None and _reads(name)]
        self.fields = ([(name, name[2:]) for name in last if name.startswith("c_")]
                       + [(name, name) for name in ("reason", "caller") if name in last])
        self.peek = "pi0" in last
        self.pointers = [last[name] for name in ("skb", "sk") if name in last]
        window = [(offset, place) for place, offset in enumerate(offsets) if offset is not None]
        self.window_start = window[0][0] if window else None
        contiguous = all(offset == self.window_start + 8 * index
                         for index, (offset, _) in enumerate(window))
        self.window = [place for _, place in window] if contiguous else []
        self.window_format = struct.Struct("<{}Q".format(len(self.window)))

    def radix(self, texts):
        """How this line's unprefixed numbers read: hex (16) where its first pointer that is
        not empty, a kernel address, shows hex digits without `0x` (upstream 3.10), else 10."""
        for place in self.pointers:
            pointer = texts[place]
            if pointer:
                return 16 if pointer[:2] != "0x" and not pointer.isdigit() else 10
        return 10

    def forms(self, texts):
        """The form (_FORMS) of each value this line's reader would take, None where unread."""
        radix = self.radix(texts)
        forms = [None] * len(texts)
        for place, _ in self.scalars:
            forms[place] = _form(texts[place], radix)
        for place in self.window + self.pointers:
            form = _form(texts[place], radix)
            forms[place] = form if form in ("x", "d", "h") else "?"
        return tuple(forms)


def _form(text, radix):
    """x: `0x` and hex digits; d: a decimal (radix 10); h: unprefixed hex (radix 16);
    s: a string, `(fault)` or nothing (each None but the string); ?: none of those, a
    value `_value` cannot read."""
    if _HEX_FORM.match(text):
        return "x"
    if (_DEC_FORM if radix == 10 else _UHEX_FORM).match(text):
        return "d" if radix == 10 else "h"
    if text in ("", "(fault)") or (text[:1] == '"' and text.count('"') == 2 and text[-1] == '"'):
        return "s"
    return "?"


_HEX_FORM = re.compile(r"0x[0-9a-fA-F]+\Z")
_DEC_FORM = re.compile(r"-?[0-9]+\Z")
_UHEX_FORM = re.compile(r"-?[0-9a-fA-F]+\Z")

#: form -> (pattern of a value of that form, taking what is converted; int's base, or
#: None for a string). Each takes only texts that _UNREAD takes, and that `_value` reads
#: the same: `0x1f` (x) and `1f` in a radix 16 line (h) as hex, `-5` (d) as decimal, a
#: string without its quotes, and `(fault)` or nothing as None.
_FORMS = {
    "x": (r"0x([0-9a-fA-F]+)", 16),
    "d": (r"(-?[0-9]+)", 10),
    "h": (r"(-?[0-9a-fA-F]+)", 16),
    "s": (r'(?:"([^"]*)"|\(fault\)|)', None),
}
#: A pointer's value must give the radix the line it was learnt from gave (_Layout.radix):
#: digits only (10), or hex digits with a letter among them (16).
_POINTER_FORMS = {"d": r"([0-9]+)", "h": r"([0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*)"}
#: A value this parser does not read: what _ARG would take at that place, never more. A
#: quoted string ends at its first quote, `(fault)` is a fault, other text has no quote
#: and does not begin with `(`, or the value is empty; so where a whole body matches,
#: each value is the one _ARG.findall gives (tests/test_properties.py).
_UNREAD = r'(?:"[^"]*"|\(fault\)|[^\s"(][^\s"]*|)'


class _Reader(object):
    """Reads the bodies of one kprobe definition whose values have the forms of the line
    it was learnt from, in C loops.

    A fetch type prints every value of an argument alike (`x64` as `0x..`, `u32` in
    decimal from 4.9, `string` quoted or `(fault)`), so a definition's lines all have
    the forms of its first. `pattern` matches a body of the layout's names whose
    values have those forms and takes only the values read; `read` converts them,
    all at once by `map(int, ...)`, to what `_numbers` makes of the same line. A body
    it does not match is learnt afresh (`LineParser`). No pattern where a value has no
    form (`?`) or a name repeats.
    """

    __slots__ = ("layout", "pattern", "_number_texts", "_bases", "_number_names",
                 "_string_texts", "_string_names", "_window_texts", "_window_bases")

    def __init__(self, layout, forms):
        self.layout = layout
        self.pattern = None
        if "?" in forms or len(set(layout.names)) < len(layout.names):
            return
        parts, taken = [], {}           # place -> its group's index
        for place, (name, form) in enumerate(zip(layout.names, forms)):
            if form is None:
                value = _UNREAD
            else:
                taken[place] = len(taken)
                value = _FORMS[form][0]
                if place in layout.pointers[:1]:
                    value = _POINTER_FORMS.get(form, value)
            parts.append(re.escape(name) + "=" + value)
        self.pattern = re.compile(" ".join(parts) + r"\Z")
        numbers = [(place, name) for place, name in layout.scalars if _FORMS[forms[place]][1]]
        strings = [(place, name) for place, name in layout.scalars if not _FORMS[forms[place]][1]]
        self._number_texts = _picker([taken[place] for place, _ in numbers])
        self._bases = [_FORMS[forms[place]][1] for place, _ in numbers]
        self._number_names = [name for _, name in numbers]
        self._string_texts = _picker([taken[place] for place, _ in strings])
        self._string_names = [name for _, name in strings]
        self._window_texts = _picker([taken[place] for place in layout.window])
        self._window_bases = [_FORMS[forms[place]][1] for place in layout.window]

    def read(self, groups):
        """(layout, values, window) of the groups of a body `pattern` matched, as _numbers."""
        layout = self.layout
        values = dict(zip(self._number_names, map(int, self._number_texts(groups), self._bases)))
        if self._string_names:
            values.update(zip(self._string_names, self._string_texts(groups)))
        window = None
        if layout.window:
            words = map(int, self._window_texts(groups), self._window_bases)
            window = layout.window_format.pack(*words)
        return layout, values, window


def _picker(places):
    """A C callable taking these places of a tuple, as a tuple (itemgetter of one place
    gives the item itself; a slice gives a tuple)."""
    if len(places) == 1:
        return operator.itemgetter(slice(places[0], places[0] + 1))
    return operator.itemgetter(*places) if places else lambda _: ()


#: Argument names the event is made from (_kprobe, _skb, _sock, _peeked); others,
#: such as a hand-written probe's `proto=+0x74(%di):u16`, are left unconverted.
_READ = frozenset(("skb", "sk", "len", "ret", "dev", "head", "nh", "data", "eth", "reason",
                   "caller"))
_READ_PREFIXES = ("c_", "skc_", "pi", "pu", "it")


def _reads(name):
    return name in _READ or name.startswith(_READ_PREFIXES)


def _window_offset(name):
    """`dp8` -> 8, `dm40` -> -40 (a window word's offset from skb->data); None for a value."""
    if name[0] == "d" and name[1:2] in ("m", "p") and name[2:].isdigit():
        return -int(name[2:]) if name[1] == "m" else int(name[2:])
    return None


@functools.lru_cache(maxsize=256)
def _layout(names):
    return _Layout(names)


@functools.lru_cache(maxsize=256)
def _reader(names, forms):
    return _Reader(_layout(names), forms)


#: Event names a LineParser remembers a reader for, at most.
_KNOWN_MAX = 256


def _values(event_name, body, known):
    """(layout, values, window) of one kprobe line's body (see _numbers).

    `known` remembers the reader each event name had last: a body that its pattern
    matches takes one regex match and a few C loops; any other body is split by
    _ARG.findall and converted a value at a time, and its names and value forms are
    learnt as the event's reader (a new or redefined event, or a value that faulted).
    """
    reader = known.get(event_name)
    if reader is not None and reader.pattern is not None:
        match = reader.pattern.match(body)
        if match is not None:
            return reader.read(match.groups())
    args = _ARG.findall(body)
    names, texts = zip(*args) if args else ((), ())
    layout = _layout(names)
    if len(known) >= _KNOWN_MAX:
        known.clear()
    known[event_name] = _reader(names, layout.forms(texts))
    return _numbers(layout, texts)


def _numbers(layout, texts):
    """(layout, values, window) of one kprobe line's argument texts.

    values: name -> int, or str for a string, None for `(fault)`, of the arguments the
    event is made from. window: the bytes of the window words, or None when the line
    has none or one faulted. `0x..` is hex. An unprefixed number is decimal (4.9+ `u*`
    types), except on kernels that print every `u*` as unprefixed hex (upstream 3.10):
    there the sk_buff or sock pointer, a kernel address, shows hex digits without `0x`.
    """
    radix = layout.radix(texts)
    values = {}
    for place, name in layout.scalars:
        values[name] = _value(texts[place], radix)
    window = None
    if layout.window:
        words = [_value(texts[place], radix) for place in layout.window]
        if None not in words:
            window = layout.window_format.pack(*words)
    return layout, values, window


def _value(text, radix):
    first = text[:1]
    if first == '"':
        return text[1:-1]
    if first == "(" or not first:
        return None
    if text[1:2] == "x":
        return int(text, 16)
    return int(text, radix)


class LineParser(object):
    """ftrace output lines -> FlowEvents; remembers the layout of each kprobe event it saw.

    `parse_lines` takes a batch of lines with one findall, in C, instead of one match
    call per line. Both give for each line what `parse_line` gives.
    """

    def __init__(self):
        self._known = {}

    def parse(self, line):
        """The FlowEvent for one ftrace output line, or None for anything else. Never raises."""
        match = _LINE.match(line)
        return None if match is None else self._event(match.groups(""))   # "" as findall

    def parse_lines(self, lines):
        """The FlowEvents of a list of lines (lines that are not events left out)."""
        events, known = [], self._known
        for groups in _LINE.findall("\n".join(lines)):
            try:
                event = _parse(groups, known)
            except _NOT_AN_EVENT:
                continue
            if event is not None:
                events.append(event)
        return events

    def _event(self, groups):
        try:
            return _parse(groups, self._known)
        except _NOT_AN_EVENT:
            return None


#: What a line that only looks like an event makes the parser raise (a value that is no
#: number, a window that does not pack...): the line is no event.
_NOT_AN_EVENT = (ValueError, IndexError, KeyError, struct.error, TypeError)


def parse_line(line):
    """The FlowEvent for one ftrace output line, or None for anything else. Never raises."""
    return LineParser().parse(line)


def _parse(groups, known):
    comm, tid, tgid, cpu, context, secs, fraction, event_name, symbol, returned_from, body = groups
    if not symbol and (body.startswith("(") or event_name not in TRACEPOINTS):
        return None                      # a kprobe body this parser does not know, or no event
    tid = int(tid)
    # time_ns, cpu, pid, tid, comm, context: EVENT_FIELDS from the line's header
    who = (int(secs + fraction) * _SCALE[len(fraction)], int(cpu),
           int(tgid) if tgid and tgid[0] != "-" else tid, tid, None if comm == "<...>" else comm,
           _CONTEXT.get(context, "task"))
    if symbol:
        return _kprobe(who, symbol, returned_from, *_values(event_name, body, known))
    return _tracepoint(who, event_name, body)


#: Nanoseconds per unit of a timestamp's last digit, by the number of digits after its point
#: (none: a counter-like trace clock's plain number, kept as it is).
_SCALE = dict([(0, 1)] + [(digits, 10 ** (9 - digits)) for digits in range(1, 10)])


#: family, proto, saddr, daddr, sport, dport, icmp_type, icmp_code, icmp_id, icmp_seq:
#: what a packet's headers tell, in EVENT_FIELDS order (decode_ip).
FLOW_FIELDS = EVENT_FIELDS[EVENT_FIELDS.index("family"):EVENT_FIELDS.index("icmp_seq") + 1]
_NO_FLOW = (None,) * len(FLOW_FIELDS)


def _kprobe(who, symbol, returned_from, layout, values, window):
    """The event of a kprobe line, `who` its header's fields (time_ns ... context)."""
    if returned_from:
        source, kind, func = "kretprobe", "return", returned_from
    else:
        source, kind, func = "kprobe", "entry", symbol
    ret = values.get("ret")
    if ret is not None and ret >= 1 << 63:
        ret -= 1 << 64
    fields = {}
    for name, field in layout.fields:          # c_NAME, and args: {reason: N}, caller: true
        fields[field] = values[name]
    if layout.peek:
        fields.update(_peeked(values))
    skb, dev, flow = values.get("skb"), None, _NO_FLOW
    if skb is not None:
        dev = values.get("dev")
        if not (isinstance(dev, str) and dev):
            dev = None
        if window is not None:
            flow = _skb(values, window, layout.window_start)
    elif values.get("sk") is not None:
        flow = _sock(values, func)
    # In EVENT_FIELDS order, made in one step (FlowEvent's docstring says why).
    return _new_event(FlowEvent, (BACKEND, source, *who, func, kind, ret, skb,
                                  values.get("sk") or None, *flow, values.get("len"), dev,
                                  fields, None, None, None, None))


def _peeked(values):
    """The fields of a peek's request line (or escaped bytes) (kprobe.msg_iter_args): the
    `pu` words when the iov_iter's type `itN` equals N (ITER_UBUF), else the `pi` words
    (ITER_IOVEC), each word 8 little-endian bytes at its offset; a faulted word ends the data."""
    view = "pi"
    for name, value in values.items():
        if name[:2] == "it" and name[2:].isdigit() and value == int(name[2:]):
            view = "pu"
    words = sorted((int(name[2:]), value) for name, value in values.items()
                   if name[:2] == view and name[2:].isdigit())
    data = bytearray()
    for at, value in words:
        if at != len(data) or not isinstance(value, int):
            break
        data += struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
    return payload_fields(bytes(data)) if data else {}


def _skb(values, window, start):
    """FLOW_FIELDS of an sk_buff probe's arguments (kprobe.py): the window
    bytes from skb->data + `start` on, and where the network header is in them."""
    head, nh, data = values.get("head"), values.get("nh"), values.get("data")
    if head is None or nh is None or data is None:   # not fetched, or faulted
        return _NO_FLOW
    return decode_ip(window, head + nh - data - start, values.get("eth") or 0) or _NO_FLOW


def decode_ip(buf, at, eth_le=0):
    """FLOW_FIELDS of an IP header at buf[at:], or None when there is none.

    `eth_le` is skb->protocol as fetched (0 when not yet set, e.g. early on transmit);
    when set it must agree with the header's version, so that stale bytes of a non-IP
    buffer (netlink, ARP) are never presented as a tuple.
    """
    if at < 0 or at + 20 > len(buf):
        return None
    version = buf[at] >> 4
    if version == 4 and eth_le in (0, ETH_P_IP_LE):
        ihl = (buf[at] & 0x0f) * 4
        if ihl < 20:
            return None
        proto = buf[at + 9]
        addresses = (inet_ntop(AF_INET, buf[at + 12:at + 16]),
                     inet_ntop(AF_INET, buf[at + 16:at + 20]))
        fragment_offset = struct.unpack_from(">H", buf, at + 6)[0] & 0x1fff
        if fragment_offset:
            return (4, proto) + addresses + _NO_L4
        return (4, proto) + addresses + _l4(proto, buf, at + ihl)
    if version == 6 and eth_le in (0, ETH_P_IPV6_LE) and at + 40 <= len(buf):
        addresses = (inet_ntop(AF_INET6, buf[at + 8:at + 24]),
                     inet_ntop(AF_INET6, buf[at + 24:at + 40]))
        proto, at = buf[at + 6], at + 40
        while at + 8 <= len(buf) and proto in _IPV6_EXT + (_IPV6_FRAGMENT,):
            if proto == _IPV6_FRAGMENT:
                if struct.unpack_from(">H", buf, at + 2)[0] & 0xfff8:
                    # a later fragment: no transport header
                    return (6, buf[at]) + addresses + _NO_L4
                proto, at = buf[at], at + 8
            else:
                proto, at = buf[at], at + (buf[at + 1] + 1) * 8
        if proto in _IPV6_EXT + (_IPV6_FRAGMENT,):
            return (6, None) + addresses + _NO_L4  # the chain runs past the fetched bytes
        return (6, proto) + addresses + _l4(proto, buf, at)
    return None


#: sport, dport, icmp_type, icmp_code, icmp_id, icmp_seq: none known.
_NO_L4 = (None,) * 6


def _l4(proto, buf, at):
    """sport, dport, icmp_type, icmp_code, icmp_id, icmp_seq of a transport header at buf[at:]."""
    if at + 4 > len(buf):
        return _NO_L4
    if proto in _PORTS:
        return struct.unpack_from(">HH", buf, at) + (None,) * 4
    if proto in _ICMP:
        if at + 8 <= len(buf):
            return (None, None, buf[at], buf[at + 1]) + struct.unpack_from(">HH", buf, at + 4)
        return (None, None, buf[at], buf[at + 1], None, None)
    return _NO_L4


def _sock(values, func):
    """FLOW_FIELDS of struct sock_common (socket-level functions: tcp_sendmsg, tcp_connect).

    skc_rcv_saddr/skc_daddr are the local and remote address, skc_num the local port in
    host order, skc_dport the remote port in network order. The protocol is not in
    sock_common: legacytrace.kernel.sock.protocol says it by the function's name.
    """
    family = values.get("skc_family")
    if family == SK_AF_INET:
        family = 4
        saddr = inet_ntop(AF_INET, struct.pack("<I", values["skc_saddr"]))
        daddr = inet_ntop(AF_INET, struct.pack("<I", values["skc_daddr"]))
    elif family == SK_AF_INET6 and values.get("skc_saddr6a") is not None:
        family = 6
        saddr = inet_ntop(AF_INET6, _U64X2.pack(values["skc_saddr6a"], values["skc_saddr6b"]))
        daddr = inet_ntop(AF_INET6, _U64X2.pack(values["skc_daddr6a"], values["skc_daddr6b"]))
    else:
        return _NO_FLOW
    sport = values["skc_sport"]
    dport = struct.unpack("<H", struct.pack(">H", values["skc_dport"]))[0]
    return (family, sock.protocol(func), saddr, daddr, sport, dport, None, None, None, None)


def _location(text):
    """skb:kfree_skb's `location`: `ping_rcv+0xab/0xd0` (%pS, 4.x+) as "ping_rcv+0xab",
    or a bare address (%p, 3.10) as an int that the orchestrator symbolizes."""
    if _HEX.match(text):
        return int(text, 16)
    return text.split("/", 1)[0]


def _tracepoint(who, name, body):
    """The event of a static net:/skb: tracepoint (packet identity, length, device, drop
    reason; no tuple), `who` its header's fields (time_ns ... context)."""
    tracepoint = TRACEPOINTS[name]
    skb = length = dev = None
    fields = {"meaning": tracepoint.meaning}
    reason = _REASON.search(body) if "reason: " in body else None
    if reason:
        fields["reason"] = reason.group(1)
        body = body[:reason.start()]
    for key, value in _ARG.findall(body):
        if key == "location":
            fields["caller"] = _location(value)
        elif key == "skbaddr":
            skb = int(value, 16)
        elif key == "len":
            length = int(value)
        elif key == "dev":
            dev = value
        elif key == "protocol":
            # Kept as a field: a family without addresses would claim a tuple it does not know.
            family = _ETHERTYPE_FAMILY.get(int(value, 0))
            if family:
                fields["family"] = family
        else:
            fields[key] = value
    return _new_event(FlowEvent, (BACKEND, "tracepoint") + who
                      + (tracepoint.name, "entry", None, skb, None)
                      + _NO_FLOW + (length, dev, fields, None, None, None, None))
