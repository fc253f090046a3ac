"""tcpdump's filter language (pcap-filter) for the primitives that make sense at IP level.

One parser, one AST, one reference evaluator. The CLI and every backend take the
expression from here: `parse()` validates the user's text and builds an immutable AST of
numbers and `ipaddress` networks (nothing of the text survives), `str(expr)` is its
normalised text, and `evaluator(expr)` is the user-space check. The meaning of each
primitive is tcpdump's (Debian 12: tcpdump 4.99.3, libpcap 1.10.3), held to tcpdump itself
by tests/test_filterexpr_tcpdump.py. docs/filter-language.md explains the language.

Supported: `host`, `net A/LEN`, `net A mask M`, `net A` (a short net such as `net 10.1`),
`port`, `portrange A-B`, each with `src`, `dst`, `src or dst`, `src and dst`; `proto N`,
`ip proto N`, `ip6 proto N` (N a number or a name such as `\\tcp`, `gre`); the words `ip`,
`ip6`, `tcp`, `udp`, `sctp`, `icmp`, `icmp6`, also as qualifiers (`ip host A`, `tcp port 80`);
`and`/`&&`, `or`/`||`, `not`/`!`, parentheses. As in tcpdump, `and` and `or` have the same
precedence and group from the left, `not` binds tightest, and a bare value takes the
qualifiers of the primitive before it (`port 53 or 853`, `not host A or B` = `not host A or
host B`). Numbers are tcpdump's: `0x50` is hex, `0120` octal.

AST (namedtuples; hashable, equal by type and value):
  And(terms), Or(terms)       -- a tuple of two or more terms, none of the same class
  Not(term)
  Family(version)             -- `ip` (4), `ip6` (6)
  Proto(version, number)      -- version None (IPv4 or IPv6), 4 or 6; `tcp` = Proto(None, 6),
                                 `icmp` = Proto(4, 1), `icmp6` = Proto(6, 58)
  Net(direction, network)     -- an ipaddress network; a host is a /32 or /128
  Port(direction, low, high, proto) -- low <= high; proto None means TCP, UDP or SCTP
direction is one of SRC, DST, EITHER ("src or dst", the default) or BOTH ("src and dst").

Where the evaluator and tcpdump differ (the event knows less than the packet):
- IPv6 extension headers: legacytrace's events carry the protocol after the extension
  header chain; libpcap compares the IPv6 header's own next-header byte, and for `proto`
  (also `tcp`, `udp`, `sctp`, `icmp6`) a next-header byte behind one fragment header, while
  `port` and `portrange` only look at the IPv6 header's byte. So behind a hop-by-hop,
  routing or destination options header (or a fragment header, for ports) tcpdump tests the
  extension header's number where the evaluator tests the upper-layer protocol: `tcp` and
  `port 80` are False for tcpdump and True for the evaluator, `ip6 proto 0` the other way
  round. Without extension headers both agree exactly.
- Fragments after the first (IPv4 and IPv6) carry no ports: the event has none, so a port
  primitive is None (unknown) where tcpdump says False, and `not port 80` keeps no such
  fragment where tcpdump keeps it.
- An event without a tuple (a tracepoint, a probe with no IP header) makes every primitive
  None; tcpdump never sees such an event.
"""
import collections
import ipaddress
import re
import socket

from legacytrace.errors import UsageError
from legacytrace.model import EVENT_FIELDS

SRC, DST, EITHER, BOTH = "src", "dst", "src or dst", "src and dst"
DIRECTIONS = (SRC, DST, EITHER, BOTH)

#: IP protocols whose ports `port` and `portrange` compare (libpcap: TCP, UDP, SCTP).
PORT_PROTOS = (6, 17, 132)

#: Protocol names `proto` takes: a fixed table of IANA's numbers, which tcpdump finds in
#: /etc/protocols (checked on Debian 12), so the meaning does not depend on the host. A
#: name that is also a keyword needs a backslash: `proto \\tcp`.
PROTO_BY_NAME = {
    "icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "ipv6": 41, "gre": 47, "esp": 50, "ah": 51,
    "ipv6-icmp": 58, "ospf": 89, "pim": 103, "vrrp": 112, "sctp": 132, "udplite": 136,
}

#: Nesting beyond which an expression is refused: of parentheses and `not` while parsing,
#: of the tree (where `and` and `or` alternate, each change nests) after it.
MAX_DEPTH = 100

SUPPORTED = ("supported: host, net, port, portrange, proto, src, dst, ip, ip6, tcp, udp, sctp, "
             "icmp, icmp6, and (&&), or (||), not (!), parentheses")


class _Node(object):
    """Equality and hash by class and value: plain namedtuples of two classes with equal
    fields (And and Or) would compare equal."""

    __slots__ = ()

    def __eq__(self, other):
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((type(self).__name__, tuple(self)))

    def __str__(self):
        return text(self)


def _node(name, fields, doc):
    return type(name, (_Node, collections.namedtuple(name, fields)),
                {"__slots__": (), "__doc__": doc})


And = _node("And", "terms", "All terms hold.")
Or = _node("Or", "terms", "Some term holds.")
Not = _node("Not", "term", "The term does not hold.")
Family = _node("Family", "version", "An IPv4 (4) or IPv6 (6) packet.")
Proto = _node("Proto", "version number", "IP protocol `number` over IPv`version` (None: either).")
Net = _node("Net", "direction network",
            "The source and/or destination address lies in `network`.")
Port = _node("Port", "direction low high proto",
             "A TCP, UDP or SCTP port (only `proto`'s when set) from `low` to `high`.")


# --- words -------------------------------------------------------------------------------

#: Every keyword of libpcap 1.10's scanner: such a word is never a name (`proto tcp` is a
#: syntax error in tcpdump; `proto \\tcp` is the name).
TCPDUMP_KEYWORDS = frozenset("""
    aarp action addr1 addr2 addr3 addr4 address1 address2 address3 address4 ah and arp atalk
    bcc broadcast byte carp clnp connectmsg csnp decnet dir direction dpc dst es-is esis esp
    ether fddi fisu gateway geneve greater hdpc hfisu hlssu hmsu hopc host hsio hsls icmp icmp6
    ifindex ifname igmp igrp iih ilmic inbound ip ip6 ipx is-is isis iso l1 l2 lane lat len
    length less link llc lsp lssu lsu mask metac metaconnect mopdl moprc mpls msu multicast net
    netbeui not oam oamf4 oamf4ec oamf4sc on opc or outbound pim port portrange ppp pppoed
    pppoes proto protochain psnp ra radio rarp reason rnr rset rulenum ruleset sc sca sctp sio
    slip sls snp src srnr stp subrulenum subtype ta tcp tr type udp vci vlan vpi vrrp wlan
    """.split())

#: Protocol words: alone a protocol test, before a primitive its qualifier.
PROTO_WORDS = {"ip": Family(4), "ip6": Family(6), "tcp": Proto(None, 6),
                "udp": Proto(None, 17), "sctp": Proto(None, 132), "icmp": Proto(4, 1),
                "icmp6": Proto(6, 58)}
_KEYWORDS = frozenset(PROTO_WORDS) | frozenset(
    ("src", "dst", "host", "net", "port", "portrange", "proto", "mask"))
_TYPE_WORDS = ("host", "net", "port", "portrange", "proto")

# Token kinds: operators are their own text ("(", ")", "!", "/", "and", "or").
_KW, _NUM, _HID, _HID6, _RANGE, _NAME = "keyword", "number", "address", "IPv6 address", \
    "range", "name"
_VALUES = (_NUM, _HID, _HID6, _RANGE, _NAME)

_SPACE = " \t\n\r"                                # what tcpdump's scanner skips
_WORD = re.compile(r"[^ \t\n\r()!&|/]+")
_ESCAPED = re.compile(r"\\[^ !()\n\t]+")          # tcpdump's escaped name runs to these
_NUMBER = re.compile(r"(0[xX][0-9A-Fa-f]+|[0-9]+)\Z")
_DOTTED = re.compile(r"[0-9]+(\.[0-9]+){1,3}\Z")
_V6 = re.compile(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]*(:[0-9]+(\.[0-9]+){3})?\Z")
_RANGE_WORD = re.compile(r"([0-9]+)-([0-9]+)\Z")
_ID = re.compile(r"[A-Za-z0-9]([-_.A-Za-z0-9]*[.A-Za-z0-9])?\Z")
_MAC12 = re.compile(r"[0-9A-Fa-f]{12}\Z")          # libpcap reads 12 hex digits as a MAC
_BYTE_CHARS = re.compile(r"[\[\]=<>+*%^]")
_BYTE_WORDS = re.compile(r"(len|length|less|greater|byte|icmp6?type|icmp6?code|tcpflags"
                         r"|icmp6?-[a-z0-9]+|tcp-[a-z]+)\Z")


class _Token(collections.namedtuple("_Token", "kind value word")):
    __slots__ = ()


def _quote(word):
    """A word for a message: quoted, control characters escaped, at most 40 characters."""
    word = word if len(word) <= 40 else word[:37] + "..."
    return "'{}'".format(word) if word.isprintable() else ascii(word)


def _fail(message):
    raise UsageError("filter expression: " + message)


def _unsupported(word):
    if _BYTE_CHARS.search(word) or _BYTE_WORDS.match(word) or word in ("&", "|", "!="):
        _fail("{}: byte and field expressions (proto[offset], ==, <, &, len, icmp-echo, "
              "tcp-syn, ...) are not supported; {}".format(_quote(word), SUPPORTED))
    if word in PROTO_BY_NAME:
        _fail("{} is a keyword of tcpdump: as a protocol name write proto \\{}".format(
            _quote(word), word))
    _fail("{} is not supported ({})".format(_quote(word), SUPPORTED))


def _tokens(text):
    """The expression's tokens, cut where tcpdump's scanner cuts them."""
    tokens, at, end = [], 0, len(text)
    while at < end:
        char = text[at]
        if char in _SPACE:
            at += 1
        elif text.startswith(("&&", "||"), at):
            tokens.append(_Token("and" if char == "&" else "or", None, text[at:at + 2]))
            at += 2
        elif text.startswith("!=", at) or char in "&|":
            _unsupported(text[at:at + 2] if char == "!" else char)
        elif char in "()!/":
            tokens.append(_Token(char, None, char))
            at += 1
        else:
            match = (_ESCAPED if char == "\\" else _WORD).match(text, at)
            if match is None:                   # a backslash before nothing
                _unsupported(char)
            tokens.append(_word_token(match.group()))
            at = match.end()
    return tokens


def _word_token(word):
    if word in ("and", "or"):
        return _Token(word, None, word)
    if word == "not":
        return _Token("!", None, word)
    if word in _KEYWORDS:
        return _Token(_KW, word, word)
    if word[0] == "\\":
        return _Token(_NAME, word[1:], word)
    if word in TCPDUMP_KEYWORDS:
        _unsupported(word)
    if ":" in word and "%" in word:
        _fail("{}: IPv6 scope ids (%) are not supported".format(_quote(word)))
    if _MAC12.match(word):
        _fail("{} is read by tcpdump as an Ethernet address, which is not supported "
              "({})".format(_quote(word), SUPPORTED))
    if _NUMBER.match(word):
        return _Token(_NUM, _number(word), word)
    if _DOTTED.match(word):
        return _Token(_HID, word, word)
    if ":" in word and _V6.match(word):
        return _Token(_HID6, word, word)
    if _RANGE_WORD.match(word):
        return _Token(_RANGE, word, word)
    if _ID.match(word) and not _BYTE_WORDS.match(word):
        return _Token(_NAME, word, word)
    _unsupported(word)


def _decimal(digits):
    """A port range's bound: decimal, as tcpdump's sscanf reads it (leading zeros too)."""
    return int(digits, 10) if len(digits.lstrip("0")) <= 6 else 1 << 20


def _number(word):
    """A number as tcpdump reads it: 0x hex, a leading 0 octal, else decimal; 32 bits."""
    if word[:2] in ("0x", "0X"):
        digits, base = word[2:], 16
    elif word[0] == "0" and len(word) > 1:
        digits, base = word[1:], 8
        if not set(digits) <= set("01234567"):
            _fail("{} is not a number: a leading 0 makes it octal, as in tcpdump "
                  "(write it without the 0)".format(_quote(word)))
    else:
        digits, base = word, 10
    value = int(digits, base) if len(digits.lstrip("0")) <= 11 else 1 << 32
    if value >> 32:
        _fail("{} is too large: numbers are 32 bits".format(_quote(word)))
    return value


# --- grammar -----------------------------------------------------------------------------

#: What a bare value takes over from the primitive before it: protocol word, direction,
#: type. None where tcpdump has nothing to carry (after `tcp`, at the start).
_Qual = collections.namedtuple("_Qual", "proto direction type")


class _Parser(object):
    """Recursive descent over libpcap's yacc grammar (grammar.y), restricted to the subset:

        expr := term { (and|or) (term | id) }       -- same precedence, from the left
        term := not term | ( expr ) | protoword | head id
        head := [protoword] [direction] [type] | [ip|ip6] proto
        id   := value | not id | ( pid )            -- carries the qualifiers before it
        pid  := (value | not id | pnum) { (and|or) id }
        pnum := number | ( pnum )
    A term's qualifiers are its head's; `( expr )` and `not term` pass on those before them.
    """

    def __init__(self, text):
        self.tokens = _tokens(text)
        self.at = 0

    def keyword(self, ahead=0):
        """The keyword `ahead` tokens on, or None (an escaped `\\src` is a name)."""
        token = self.peek(ahead)
        return token.value if token.kind == _KW else None

    def peek(self, ahead=0):
        at = self.at + ahead
        return self.tokens[at] if at < len(self.tokens) else _Token("end", None, None)

    def take(self):
        token = self.peek()
        self.at += 1
        return token

    def expect(self, kind):
        token = self.take()
        if token.kind != kind:
            self.unexpected(token, "expected {!r}".format(kind))
        return token

    def unexpected(self, token, wanted):
        if token.kind == "end":
            where = "is empty"
            if self.tokens:
                where = "ends after {}".format(_quote(self.tokens[-1].word))
            _fail("the expression {}: {}".format(where, wanted))
        if token.kind == _KW and token.value in ("tcp", "udp", "icmp", "sctp") and \
                self.at >= 2 and self.tokens[self.at - 2].word == "proto":
            _fail("{} after proto: write proto \\{} (tcpdump's escape) or a number"
                  .format(_quote(token.word), token.word))
        _fail("unexpected {}: {}".format(_quote(token.word), wanted))

    def depth(self, depth):
        if depth >= MAX_DEPTH:
            _fail("nested deeper than {} parentheses or nots".format(MAX_DEPTH))
        return depth + 1

    def parse(self):
        node, _ = self.expr(None, 0)
        if self.peek().kind != "end":
            self.unexpected(self.peek(), "expected and, or, or the end")
        if _depth(node) > MAX_DEPTH:
            _fail("nested deeper than {} levels (each change between and and or nests, as "
                  "they group from the left)".format(MAX_DEPTH))
        return node

    def expr(self, qual, depth):
        node, qual = self.term(qual, depth)
        chain = _Chain(node)
        while self.peek().kind in ("and", "or"):
            op = And if self.take().kind == "and" else Or
            if self.id_follows():
                right = self.id(qual, depth)
            else:
                right, qual = self.term(qual, depth)
            chain.add(op, right)
        return chain.node(), qual

    def id_follows(self):
        """Whether a bare value (not a new primitive) comes after any run of ( and not."""
        ahead = 0
        while self.peek(ahead).kind in ("(", "!"):
            ahead += 1
        return self.peek(ahead).kind in _VALUES

    def term(self, qual, depth):
        token = self.peek()
        if token.kind == "!":
            self.take()
            node, qual = self.term(qual, self.depth(depth))
            return Not(node), qual
        if token.kind == "(":
            self.take()
            node, _ = self.expr(qual, self.depth(depth))
            self.expect(")")
            return node, qual
        if self.keyword() in PROTO_WORDS and \
                self.keyword(1) not in ("src", "dst") + _TYPE_WORDS:
            self.take()
            return PROTO_WORDS[token.value], None
        if token.kind == _KW and token.value != "mask":
            qual = self.head()
            return self.id(qual, depth), qual
        if token.kind == _NAME:
            _unsupported(token.word)
        if token.kind in _VALUES:
            _fail("{} has no qualifier before it: write e.g. host, net, port or proto "
                  "first".format(_quote(token.word)))
        self.unexpected(token, "expected a primitive ({})".format(SUPPORTED))

    def head(self):
        proto = direction = kind = None
        if self.keyword() in PROTO_WORDS:
            proto = self.take().value
        if self.keyword() in ("src", "dst"):
            direction = self.take().value
            other = DST if direction == SRC else SRC
            if self.peek().kind in ("and", "or") and self.keyword(1) == other:
                direction = BOTH if self.take().kind == "and" else EITHER
                self.take()
        if self.keyword() in _TYPE_WORDS and not (direction and self.keyword() == "proto"):
            kind = self.take().value
        if direction is None and kind is None:
            self.unexpected(self.peek(), "expected src, dst, host, net, port, portrange or proto")
        return _Qual(proto, direction or EITHER, kind or "host")

    def id(self, qual, depth):
        token = self.peek()
        if token.kind == "!":
            self.take()
            return Not(self.id(qual, self.depth(depth)))
        if token.kind == "(":
            self.take()
            node = self.pid(qual, self.depth(depth))
            self.expect(")")
            return node
        return self.value(qual)

    def pid(self, qual, depth):
        if self.peek().kind == "(":
            node = self.pnum(qual, depth)
        else:
            node = self.id(qual, depth)
        chain = _Chain(node)
        while self.peek().kind in ("and", "or"):
            op = And if self.take().kind == "and" else Or
            chain.add(op, self.id(qual, depth))
        return chain.node()

    def pnum(self, qual, depth):
        self.expect("(")
        if self.peek().kind == "(":
            node = self.pnum(qual, self.depth(depth))
        elif self.peek().kind == _NUM:
            node = self.value(qual)
        else:
            self.unexpected(self.peek(), "tcpdump takes only a number in these parentheses")
        self.expect(")")
        return node

    def value(self, qual):
        token = self.take()
        if token.kind not in _VALUES:
            self.unexpected(token, "expected a value (an address, a number, a port range)")
        if qual is None:
            _fail("{} has no qualifier to take over (tcpdump gives a bare value the "
                  "qualifiers of the primitive before it, and there is none): write host, "
                  "net, port or proto before it".format(_quote(token.word)))
        if qual.type == "proto":
            return _proto_value(qual, token)
        if qual.type in ("port", "portrange"):
            return _port_value(qual, token)
        mask = None
        if token.kind in (_HID, _HID6) and self.peek().kind == "/":
            self.take()
            mask = ("/", self.expect(_NUM))
        elif token.kind == _HID and self.keyword() == "mask":
            self.take()
            mask = ("mask", self.expect(_HID))
        return _net_value(qual, token, mask)


def _depth(expr):
    """The tree's depth, counted without recursion (the tree is not known to be shallow)."""
    deepest, todo = 0, [(expr, 1)]
    while todo:
        node, level = todo.pop()
        deepest = max(deepest, level)
        if type(node) in (And, Or):
            todo.extend((term, level + 1) for term in node.terms)
        elif type(node) is Not:
            todo.append((node.term, level + 1))
    return deepest


class _Chain(object):
    """A run of terms joined by and/or from the left, in linear time: `a and b and c` is one
    And, and a term of the same class (`a and (b and c)`) is taken apart (and, or associate);
    where the operator changes, what came before becomes the first term."""

    def __init__(self, first):
        self.op = None
        self.terms = [first]

    def add(self, op, term):
        if op is not self.op:
            self.terms = [self.node()]
            self.op = op
            if type(self.terms[0]) is op:
                self.terms = list(self.terms[0].terms)
        self.terms.extend(term.terms if type(term) is op else (term,))

    def node(self):
        return self.terms[0] if len(self.terms) == 1 else self.op(tuple(self.terms))


def _proto_value(qual, token):
    if qual.proto not in (None, "ip", "ip6"):
        _fail("'{} proto' is not valid: proto takes ip or ip6 before it".format(qual.proto))
    if token.kind == _NUM:
        number = token.value
    elif token.kind == _NAME and token.value in PROTO_BY_NAME:
        number = PROTO_BY_NAME[token.value]
    else:
        _fail("{} is not a protocol: use a number 0-255 or one of {}".format(
            _quote(token.word), ", ".join(("\\" if name in TCPDUMP_KEYWORDS else "") + name
                                  for name in sorted(PROTO_BY_NAME))))
    if number > 255:
        _fail("protocol {} is not a number from 0 to 255".format(_quote(token.word)))
    return Proto({None: None, "ip": 4, "ip6": 6}[qual.proto], number)


def _port_value(qual, token):
    if qual.proto not in (None, "tcp", "udp", "sctp"):
        _fail("'{} {}' is not valid: ports belong to tcp, udp or sctp".format(
            qual.proto, qual.type))
    if token.kind == _NUM:
        low = high = token.value
    elif token.kind == _RANGE and qual.type == "portrange":
        low, high = sorted(_decimal(part) for part in _RANGE_WORD.match(token.word).groups())
    else:
        _fail("{} is not a {}: use {} (service names are not looked up)".format(
            _quote(token.word), "port" if qual.type == "port" else "port range",
            "a number from 0 to 65535" if qual.type == "port" else "LOW-HIGH, e.g. 1024-2047"))
    if high > 65535:
        _fail("{} is not a port: ports are 0 to 65535".format(_quote(token.word)))
    proto = None if qual.proto is None else PROTO_WORDS[qual.proto].number
    return Port(qual.direction, low, high, proto)


def _net_value(qual, token, mask):
    """host (a full address) or net (tcpdump's short forms too) -> Net."""
    if qual.proto not in (None, "ip", "ip6"):
        _fail("'{} {}' is not valid: host and net take ip or ip6 before them".format(
            qual.proto, qual.type))
    if token.kind == _NAME:
        _fail("{} is not an address: host and net take IPv4 or IPv6 addresses "
              "(names are not looked up)".format(_quote(token.word)))
    version = 6 if token.kind == _HID6 else 4
    if qual.proto == {4: "ip6", 6: "ip"}[version]:
        _fail("{} is an IPv{} address after {}".format(_quote(token.word), version, qual.proto))
    if qual.type == "host":
        if mask is not None:
            _fail("{} with a mask: a mask needs net, not host".format(_quote(token.word)))
        if token.kind not in (_HID, _HID6) or (version == 4 and token.word.count(".") != 3):
            _fail("{} is not a full address: host takes a.b.c.d or an IPv6 address "
                  "(net takes a short one)".format(_quote(token.word)))
    if version == 6:
        address = _v6(token.word)
        length = 128 if mask is None else mask[1].value
        if length > 128:
            _fail("{}: the prefix length must be at most 128".format(
                _quote(token.word + "/" + mask[1].word)))
        return Net(qual.direction, _network(address, length, token, mask))
    if token.kind == _NUM:
        address, length = token.value, 32      # tcpdump moves a short net number left
        while address and not address & 0xff000000:
            address, length = address << 8, length - 8
        return Net(qual.direction, _network(ipaddress.IPv4Address(address), length, token, None))
    address, bits = _dotted(token.word)
    address <<= 32 - bits                      # a short address is the left part
    length = bits
    if mask is not None and mask[0] == "/":
        length = mask[1].value
        if length > 32:
            _fail("{}: the prefix length must be at most 32".format(
                _quote(token.word + "/" + mask[1].word)))
    elif mask is not None:
        value, mask_bits = _dotted(mask[1].word)
        value = (value << (32 - mask_bits)) & 0xffffffff
        length = 32 - (~value & 0xffffffff).bit_length()
        if value != (0xffffffff << (32 - length)) & 0xffffffff:
            _fail("mask {} is not contiguous (ones, then zeros): not supported".format(
                _quote(mask[1].word)))
    return Net(qual.direction, _network(ipaddress.IPv4Address(address), length, token, mask))


def _network(address, length, token, mask):
    try:
        if address.version == 4:
            return ipaddress.IPv4Network((int(address), length))
        return ipaddress.IPv6Network((int(address), length))
    except ValueError:
        written = token.word + ("" if mask is None else "/" + mask[1].word if mask[0] == "/"
                                else " mask " + mask[1].word)
        _fail("{}: bits set after the prefix (tcpdump refuses it too)".format(_quote(written)))


def _dotted(word):
    """(value, bits) of a.b[.c[.d]] with decimal parts 0-255."""
    value = 0
    for part in word.split("."):
        if len(part) > 3 or int(part) > 255 or (part[0] == "0" and len(part) > 1):
            _fail("{} is not an IPv4 address: parts are 0-255, decimal, without leading "
                  "zeros".format(_quote(word)))
        value = value << 8 | int(part)
    return value, 8 * (word.count(".") + 1)


def _v6(word):
    tail = word.rpartition(":")[2]
    if "." in tail:
        _dotted(tail)                          # tcpdump refuses leading zeros there too
    try:
        return ipaddress.IPv6Address(word)
    except ValueError:
        _fail("{} is not an IPv6 address".format(_quote(word)))


def parse(text):
    """The AST of `text`, a filter expression in tcpdump's language; UsageError (one line
    that names the offending word) for anything else."""
    if not isinstance(text, str):
        raise UsageError("filter expression: expected text, got {!r}".format(type(text)))
    return _Parser(text).parse()


# --- normalised text ---------------------------------------------------------------------

_DIRECTION_TEXT = {EITHER: "", SRC: "src ", DST: "dst ", BOTH: "src and dst "}
_PROTO_TEXT = dict((node, word) for word, node in PROTO_WORDS.items())
_PORT_PROTO_TEXT = {None: "", 6: "tcp ", 17: "udp ", 132: "sctp "}


def text(expr):
    """The normalised text: every qualifier spelled out, parentheses where and and or meet,
    canonical addresses. parse(text(expr)) == expr, and tcpdump reads it the same way."""
    kind = type(expr)
    if kind in (And, Or):
        return (" and " if kind is And else " or ").join(_operand(term) for term in expr.terms)
    if kind is Not:
        return "not " + _operand(expr.term)
    if kind is Family or kind is Proto and expr in _PROTO_TEXT:
        return _PROTO_TEXT[expr]
    if kind is Proto:
        return "{}proto {}".format({None: "", 4: "ip ", 6: "ip6 "}[expr.version], expr.number)
    if kind is Net:
        net = expr.network
        if net.prefixlen == net.max_prefixlen:
            return "{}host {}".format(_DIRECTION_TEXT[expr.direction], address_text(net))
        return "{}net {}/{}".format(_DIRECTION_TEXT[expr.direction], address_text(net),
                                    net.prefixlen)
    if kind is Port:
        if expr.low == expr.high:
            value = "port {}".format(expr.low)
        else:
            value = "portrange {}-{}".format(expr.low, expr.high)
        return _PORT_PROTO_TEXT[expr.proto] + _DIRECTION_TEXT[expr.direction] + value
    raise TypeError("not a filter expression: {!r}".format(expr))


def _operand(term):
    return "(" + text(term) + ")" if type(term) in (And, Or) else text(term)


def address_text(net):
    """A network's address as the kernel's parsers print one (inet_ntop)."""
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return socket.inet_ntop(family, net.network_address.packed)


# --- combining ---------------------------------------------------------------------------

def conjoin(*exprs):
    """`and` of the expressions that are not None (None when none is left)."""
    chain = None
    for expr in exprs:
        if expr is None:
            continue
        if chain is None:
            chain = _Chain(expr)
        else:
            chain.add(And, expr)
    return None if chain is None else chain.node()


# --- the reference evaluator -------------------------------------------------------------

_FAMILY, _PROTO, _SADDR, _DADDR, _SPORT, _DPORT = (
    EVENT_FIELDS.index(name) for name in ("family", "proto", "saddr", "daddr", "sport", "dport"))


class _Addresses(dict):
    """Address text -> integer (None for no address, an unreadable one or one of the other
    IP version), looked up in C; computed on a miss. Flows repeat, so the cache mostly
    hits; it starts over when full."""

    MAX = 65536

    def __init__(self, version):
        dict.__init__(self)
        self.address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address

    def __missing__(self, text):
        try:
            value = int(self.address(text))
        except (ValueError, TypeError):
            value = None
        if len(self) >= self.MAX:
            self.clear()
        self[text] = value
        return value


_ADDRESSES = {4: _Addresses(4), 6: _Addresses(6)}


def evaluator(expr):
    """A function event -> True, False or None (Kleene logic: None when the event does not
    tell), compiled once into closures for the per-event path."""
    return _COMPILERS[type(expr)](expr)


def evaluate(expr, event):
    """True, False or None: does `event` (a FlowEvent) match `expr`?"""
    return evaluator(expr)(event)


def matches(expr, event):
    """Only a definite match counts: what user space keeps."""
    return evaluator(expr)(event) is True


def _junction(decisive):
    """The compiler of `and` (decisive False) or `or` (decisive True) in Kleene logic: the
    first term that answers `decisive` decides; else an unknown term makes it unknown."""
    def compile_terms(expr):
        tests = [evaluator(term) for term in expr.terms]
        otherwise = not decisive

        def test(event):
            result = otherwise
            for each in tests:
                value = each(event)
                if value is decisive:
                    return decisive
                if value is None:
                    result = None
            return result
        return test
    return compile_terms


def _not(expr):
    inner = evaluator(expr.term)

    def test(event):
        value = inner(event)
        return None if value is None else not value
    return test


def _family(expr):
    version = expr.version

    def test(event):
        family = event[_FAMILY]
        return None if family is None else family == version
    return test


def _proto(expr):
    version, number = expr.version, expr.number

    def test(event):
        family = event[_FAMILY]
        if family is None:
            return None
        if version is not None and family != version:
            return False
        proto = event[_PROTO]
        return None if proto is None else proto == number
    return test


def _sides(direction, low, high):
    """(source value, destination value) -> True/False/None: is the value of the side(s)
    `direction` names within [low, high]; None for a value the event does not have."""
    if direction == SRC:
        return lambda src, dst: None if src is None else low <= src <= high
    if direction == DST:
        return lambda src, dst: None if dst is None else low <= dst <= high
    if direction == BOTH:
        def both(src, dst):
            if (src is not None and not low <= src <= high) or \
                    (dst is not None and not low <= dst <= high):
                return False
            return None if src is None or dst is None else True
        return both

    def either(src, dst):
        if (src is not None and low <= src <= high) or (dst is not None and low <= dst <= high):
            return True
        return None if src is None or dst is None else False
    return either


def _net(expr):
    net = expr.network
    version, addresses = net.version, _ADDRESSES[net.version]
    sides = _sides(expr.direction, int(net.network_address), int(net.broadcast_address))

    def test(event):
        family = event[_FAMILY]
        if family is None:
            return None
        if family != version:
            return False
        return sides(addresses[event[_SADDR]], addresses[event[_DADDR]])
    return test


def _port(expr):
    protos = PORT_PROTOS if expr.proto is None else (expr.proto,)
    sides = _sides(expr.direction, expr.low, expr.high)

    def test(event):
        if event[_FAMILY] is None:
            return None
        proto = event[_PROTO]
        if proto is None:
            return None
        if proto not in protos:
            return False
        return sides(event[_SPORT], event[_DPORT])
    return test


_COMPILERS = {And: _junction(False), Or: _junction(True), Not: _not, Family: _family,
              Proto: _proto, Net: _net, Port: _port}
