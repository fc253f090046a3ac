"""Parsing the bpftrace program's lines (tab-separated, documented at the top of
templates/bpftrace.bt.j2) into FlowEvents. Pure, so captures replay.
"""
import ipaddress
import socket
import struct

from legacytrace import payload
from legacytrace.model import FlowEvent

#: The line protocol's version tag: the first field of every line the program prints. Its
#: own ("B" for bpf), so that a line is never taken for one of stap's LT1.
TAG = "LTB2"
#: Fields of an LTB2 line; the last one (comm) is the rest of the line, tabs included.
FIELDS = 26
CONTEXTS = {"0": "task", "1": "softirq", "2": "hardirq"}
#: ICMP echo request/reply types, which carry an identifier and a sequence number.
_ECHO = {4: (0, 8), 6: (128, 129)}
_SOURCES = ("kprobe", "tracepoint")
_new_event = tuple.__new__
_U32 = struct.Struct("<I")
_U64X2 = struct.Struct("<QQ")


class LineParser(object):
    """LTB2 line -> FlowEvent; address text is cached (the same few flows repeat)."""

    CACHE_MAX = 65536

    def __init__(self, backend_name):
        self.backend = backend_name
        self.addresses = {}

    def parse(self, line):
        """The event on `line`, or None for anything else (never raises)."""
        events = self.parse_lines((line,))
        return events[0] if events else None

    def parse_lines(self, lines):
        """The events of a batch of lines, non-events left out (never raises)."""
        events = []
        for line in lines:
            try:
                event = self._parse(line)
            except Exception:  # a captured file may hold anything: not an event
                continue
            if event is not None:
                events.append(event)
        return events

    def _parse(self, line):
        if not line.startswith(TAG + "\t"):
            return None
        p = line.split("\t", FIELDS - 1)
        if len(p) != FIELDS or p[1] not in _SOURCES:
            return None
        family = p[12]
        proto = saddr = daddr = sport = dport = icmp_type = icmp_code = icmp_id = icmp_seq = None
        if family == "4" or family == "6":
            family = int(family)
            proto = int(p[13])
            addresses = self.addresses
            key = (family, p[14], p[15], p[16], p[17])
            pair = addresses.get(key)
            if pair is None:
                pair = self._addresses(key)
            saddr, daddr = pair
            if p[18] != "-1":
                sport = int(p[18])
                dport = int(p[19])
            elif p[20] != "-1":
                icmp_type = int(p[20])
                icmp_code = int(p[21])
                # Identifier and sequence number exist only in echo messages (RFC 792, 4443).
                if icmp_type in _ECHO[family]:
                    icmp_id = int(p[22])
                    icmp_seq = int(p[23])
        else:
            family = None
        # In EVENT_FIELDS order, made in one step (FlowEvent's docstring says why).
        return _new_event(FlowEvent, (
            self.backend, p[1], int(p[3]), int(p[4]), int(p[5]), int(p[6]), p[25],
            CONTEXTS.get(p[7], "task"), p[2], "entry", None, int(p[8], 16), int(p[9], 16) or None,
            family, proto, saddr, daddr, sport, dport, icmp_type, icmp_code, icmp_id, icmp_seq,
            int(p[10]), p[11] or None, {} if p[24] == "-" else extra_fields(p[24]), None,
            None, None, None))

    def _addresses(self, key):
        """(saddr, daddr) text for the raw words of one line, remembered."""
        family, s0, s1, d0, d1 = key
        if family == 4:
            pair = tuple(socket.inet_ntoa(_U32.pack(int(word, 16))) for word in (s0, d0))
        else:
            pair = tuple(str(ipaddress.IPv6Address(_U64X2.pack(int(hi, 16), int(lo, 16))))
                         for hi, lo in ((s0, s1), (d0, d1)))
        if len(self.addresses) >= self.CACHE_MAX:
            self.addresses.clear()
        self.addresses[key] = pair
        return pair


def extra_fields(text):
    """FlowEvent.fields from an LTB2 extras column, `name=value,...`.

    %rx values (\\xNN per byte: char arrays, the peek) are decoded: a char array to
    text up to its NUL, the peek through legacytrace.payload (request or peek); an
    empty peek (no user buffer found) adds nothing. Other values are ints or text
    (ksym names).
    """
    fields = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name == "peek":
            data = _unhex(value)
            if data:
                fields.update(payload.fields(data))
        elif value.startswith("\\x"):
            fields[name] = _unhex(value).split(b"\0", 1)[0].decode("utf-8", "replace")
        else:
            fields[name] = int(value) if value.lstrip("-").isdigit() else value
    return fields


def _unhex(text):
    """bytes of bpftrace's %rx text ("\\x47\\x45"); ValueError for anything else."""
    if len(text) % 4 or text[::4] != "\\" * (len(text) // 4):
        raise ValueError("not %rx text: {!r}".format(text[:20]))
    return bytes.fromhex(text.replace("\\x", ""))
