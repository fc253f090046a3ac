"""The flow filter: which packets a trace keeps, from the CLI's flags and tcpdump's language.

The flags (`--proto tcp -d 10.0.0.0/8 --dport 80`) and the expression (`'tcp port 80 and not
host 10.0.0.1'`, legacytrace.filterexpr) make one expression: each flag a primitive, all of
them and the expression joined by `and`. Backends compile it into their in-kernel filter,
which may keep more than it; the tracer checks every event against it in user space
(`FlowFilter.matches()`), so both paths give the same result. The expression holds numbers
and `ipaddress` objects only: nothing a user typed reaches generated code as text.
"""
import ipaddress
import re

from legacytrace import filterexpr
from legacytrace.errors import UsageError
from legacytrace.model import PROTO_NUMBERS

#: ASCII digits only: str.isdigit() also accepts "²" and "١", which int() refuses or reads.
_DIGITS = re.compile(r"[0-9]+\Z")


def parse_proto(text):
    """`tcp`, `udp`, `icmp`, `icmp6` or an IP protocol number 0..255 -> int."""
    if text is None:
        return None
    name = str(text).strip().lower()
    if name in PROTO_NUMBERS:
        return PROTO_NUMBERS[name]
    if _DIGITS.match(name) and int(name) <= 255:
        return int(name)
    raise UsageError("invalid protocol {!r}: use tcp, udp, icmp, icmp6 or a number 0-255"
                     .format(text))


def parse_net(text, what):
    """An address or CIDR, IPv4 or IPv6 -> ip_network (an address becomes a /32 or /128)."""
    if text is None:
        return None
    try:
        return ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        raise UsageError("invalid {} {!r}: use an IPv4 or IPv6 address or CIDR "
                         "(10.0.0.1, 10.0.0.0/8, fe80::/10)".format(what, text))


def parse_port(text, what):
    """A port number 0..65535 -> int."""
    if text is None:
        return None
    value = str(text).strip()
    if _DIGITS.match(value) and int(value) <= 65535:
        return int(value)
    raise UsageError("invalid {} {!r}: use a number from 0 to 65535".format(what, text))


def parse_family(text):
    """4 or 6 (also `ipv4`, `ipv6`, ipftrace's -iv spelling) -> int."""
    if text is None:
        return None
    value = str(text).strip().lower().lstrip("ipv")
    if value in ("4", "6"):
        return int(value)
    raise UsageError("invalid IP version {!r}: use 4 or 6".format(text))


class FlowFilter(object):
    """Which packets to keep: `expr`, an expression of legacytrace.filterexpr, or None for all.

    The flags name the primitives of tcpdump's `ip`/`ip6` (family), `proto` (an IP protocol
    number: 1 icmp, 6 tcp, 17 udp, 58 icmp6), `src net`/`dst net` (ipaddress networks, an
    address a /32 or /128) and `src port`/`dst port`; `expr` is joined to them with `and`.
    """

    __slots__ = ("expr", "_keep")

    def __init__(self, family=None, proto=None, saddr=None, daddr=None, sport=None, dport=None,
                 expr=None):
        family = _check_flags(family, proto, saddr, daddr, sport, dport)
        self.expr = filterexpr.conjoin(
            _flags_expression(family, proto, saddr, daddr, sport, dport), expr)
        self._keep = None if self.expr is None else filterexpr.evaluator(self.expr)

    @classmethod
    def parse(cls, family=None, proto=None, saddr=None, daddr=None, sport=None, dport=None,
              expression=None):
        """Build a filter from command-line text; raise UsageError naming the bad value."""
        return cls(family=parse_family(family), proto=parse_proto(proto),
                   saddr=parse_net(saddr, "source address"),
                   daddr=parse_net(daddr, "destination address"),
                   sport=parse_port(sport, "source port"),
                   dport=parse_port(dport, "destination port"),
                   expr=filterexpr.parse(expression) if expression else None)

    def is_empty(self):
        return self.expr is None

    def matches(self, event):
        """True when `event` (a FlowEvent) is kept: the expression is true of it. An event
        that does not tell (no tuple; ports a later fragment lacks) is not kept by a filter."""
        return self._keep is None or self._keep(event) is True

    def describe(self):
        """The filter as tcpdump's normalised expression, for headers and errors."""
        return "all flows" if self.expr is None else filterexpr.text(self.expr)


def _check_flags(family, proto, saddr, daddr, sport, dport):
    """Reject flags that can never match together, so a typo is not a silent empty trace;
    return the family the flags imply (an address's version)."""
    families = set(net.version for net in (saddr, daddr) if net is not None)
    if family is not None:
        families.add(family)
    if len(families) > 1:
        raise UsageError("the filter mixes IPv4 and IPv6 (addresses and -4/-6 must agree)")
    if (sport is not None or dport is not None) and \
            proto not in (None, PROTO_NUMBERS["tcp"], PROTO_NUMBERS["udp"]):
        raise UsageError("--sport/--dport need --proto tcp or udp (or no --proto)")
    icmp = {4: PROTO_NUMBERS["icmp"], 6: PROTO_NUMBERS["icmp6"]}
    family = families.pop() if families else None
    if family in icmp and proto in icmp.values() and proto != icmp[family]:
        raise UsageError("--proto {} does not exist over IPv{}".format(
            "icmp6" if family == 4 else "icmp", family))
    return family


def _flags_expression(family, proto, saddr, daddr, sport, dport):
    """The flags as tcpdump's primitives joined by `and` (None for no flag): `-4` is `ip`,
    `--proto N` `proto N` (`icmp` with -4), an address `src net`/`dst net`, a port `src
    port`/`dst port` of TCP, UDP (or SCTP without --proto)."""
    implied = saddr is not None or daddr is not None
    word_family = None if implied else family
    if filterexpr.Proto(family, proto) in filterexpr.PROTO_WORDS.values():   # -4 -p icmp: icmp
        word_family = family
    has_ports = sport is not None or dport is not None
    port_proto = proto if proto in filterexpr.PORT_PROTOS else None
    terms = []
    if proto is not None and not (has_ports and port_proto):
        terms.append(filterexpr.Proto(word_family, proto))
    elif word_family is not None:
        terms.append(filterexpr.Family(word_family))
    for direction, net in ((filterexpr.SRC, saddr), (filterexpr.DST, daddr)):
        if net is not None:
            terms.append(filterexpr.Net(direction, net))
    for direction, port in ((filterexpr.SRC, sport), (filterexpr.DST, dport)):
        if port is not None:
            terms.append(filterexpr.Port(direction, port, port, port_proto))
    return filterexpr.conjoin(*terms)
