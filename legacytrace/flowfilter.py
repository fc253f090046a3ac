"""The flow filter: which packets a trace keeps, parsed strictly from user input.

Backends compile it into their in-kernel filter where they can; the tracer also
applies `FlowFilter.matches()` to every event in user space, so both paths give
the same result. Values here are numbers and `ipaddress` objects only: nothing a
user typed reaches generated code as text.
"""
import ipaddress
import re

from legacytrace.errors import UsageError
from legacytrace.model import PROTO_NAMES, PROTO_NUMBERS

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


def check_values(flow):
    """Raise UsageError unless `flow` holds only what FlowFilter.parse() makes: ints in range
    and ipaddress networks. A caller may set attributes directly, so a backend calls this
    before it compiles the filter into generated code."""
    if flow is None:
        return
    for name, high in (("proto", 255), ("sport", 65535), ("dport", 65535)):
        value = getattr(flow, name)
        if value is not None and (type(value) is not int or not 0 <= value <= high):
            raise UsageError("flow filter: {} {!r} is not a number from 0 to {}".format(
                name, value, high))
    if flow.family not in (None, 4, 6):
        raise UsageError("flow filter: IP version {!r} is not 4 or 6".format(flow.family))
    for name in ("saddr", "daddr"):
        net = getattr(flow, name)
        if net is not None and not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise UsageError("flow filter: {} {!r} is not a network".format(name, net))
        if net is not None and flow.family not in (None, net.version):
            raise UsageError("flow filter: {} {} is not IPv{}".format(name, net, flow.family))

class FlowFilter(object):
    """Which flows to keep; an attribute left None matches anything.

    family -- 4 or 6
    proto  -- IP protocol number (1 icmp, 6 tcp, 17 udp, 58 icmp6)
    saddr, daddr -- ipaddress networks (an address is a /32 or /128)
    sport, dport -- port numbers
    """

    __slots__ = ("family", "proto", "saddr", "daddr", "sport", "dport")

    def __init__(self, family=None, proto=None, saddr=None, daddr=None, sport=None, dport=None):
        self.family = family
        self.proto = proto
        self.saddr = saddr
        self.daddr = daddr
        self.sport = sport
        self.dport = dport
        self._check()

    @classmethod
    def parse(cls, family=None, proto=None, saddr=None, daddr=None, sport=None, dport=None):
        """Build a filter from command-line text; raise UsageError naming the bad value."""
        return cls(family=parse_family(family), proto=parse_proto(proto),
                   saddr=parse_net(saddr, "source address"),
                   daddr=parse_net(daddr, "destination address"),
                   sport=parse_port(sport, "source port"),
                   dport=parse_port(dport, "destination port"))

    def _check(self):
        """Reject combinations that can never match, so a typo is not a silent empty trace."""
        families = set(net.version for net in (self.saddr, self.daddr) if net is not None)
        if self.family is not None:
            families.add(self.family)
        if len(families) > 1:
            raise UsageError("the filter mixes IPv4 and IPv6 (addresses and -4/-6 must agree)")
        if families and self.family is None:
            self.family = families.pop()
        if (self.sport is not None or self.dport is not None) and \
                self.proto not in (None, PROTO_NUMBERS["tcp"], PROTO_NUMBERS["udp"]):
            raise UsageError("--sport/--dport need -p tcp or -p udp (or no -p)")
        icmp = {4: PROTO_NUMBERS["icmp"], 6: PROTO_NUMBERS["icmp6"]}
        if self.family in icmp and self.proto in icmp.values() and self.proto != icmp[self.family]:
            raise UsageError("-p {} does not exist over IPv{}".format(
                "icmp6" if self.family == 4 else "icmp", self.family))

    def is_empty(self):
        # Spelled out: matches() asks this for every event (a generator over
        # __slots__ cost 8,000 instructions an event; bench/ingest.py).
        return (self.family is None and self.proto is None and self.saddr is None
                and self.daddr is None and self.sport is None and self.dport is None)

    def matches(self, event):
        """True when `event` (a FlowEvent) belongs to a kept flow.

        An event without a tuple (a tracepoint that knows no addresses) matches
        only an empty filter: it cannot be shown to belong to the flow.
        """
        if self.is_empty():
            return True
        if event.family is None:
            return False
        if self.family is not None and event.family != self.family:
            return False
        if self.proto is not None and event.proto != self.proto:
            return False
        if self.sport is not None and event.sport != self.sport:
            return False
        if self.dport is not None and event.dport != self.dport:
            return False
        return _in(event.saddr, self.saddr) and _in(event.daddr, self.daddr)

    def describe(self):
        """The filter in the CLI's own words, for headers and errors."""
        parts = []
        if self.family is not None:
            parts.append("-{}".format(self.family))
        proto = PROTO_NAMES.get(self.proto, self.proto)
        for flag, value in (("-p", proto), ("-s", self.saddr), ("-d", self.daddr),
                            ("--sport", self.sport), ("--dport", self.dport)):
            if value is not None:
                parts.append("{} {}".format(flag, value))
        return " ".join(parts) or "all flows"


def _in(addr, net):
    if net is None:
        return True
    if addr is None:
        return False
    try:
        return ipaddress.ip_address(addr) in net
    except ValueError:
        return False
