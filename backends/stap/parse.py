"""Parsing the SystemTap program's lines (line protocol LT1, tab-separated, documented at
the top of stap_templates/flows.stp.j2): events, and the counts of what was lost. Pure,
so captures replay.
"""
import functools
import ipaddress
import re
import socket

from legacytrace import payload
from legacytrace.kernel import features
from legacytrace.model import CONTEXTS, FlowEvent

PROTOCOL = "LT1"
_TAG = PROTOCOL + "\t"
EVENT_TAG = _TAG + "E\t"
CAUGHT_TAG = _TAG + "C\t"
SENT_TAG = _TAG + "S\t"
#: The module's first line: its probes are live.
BEGIN_LINE = _TAG + "B\t0"
#: What stap's runtime reports at exit, e.g. "WARNING: Number of errors: 0, skipped probes: 12".
_SKIPPED_RE = re.compile(r"skipped probes: ([0-9]+)")
_ERRORS_RE = re.compile(r"Number of errors: ([0-9]+)")
#: The transport's report when its buffers overflowed (a reader too slow for the probes):
#: "WARNING: There were 13 transport failures. Try stap -s to increase the buffer size from 1."
_TRANSPORT_RE = re.compile(r"There were ([0-9]+) transport failures")
#: text_str() escapes: \n \t ..., \ooo (bytes), \uXXXX / \UXXXXXXXX (UTF-8, stap 4.1+).
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)", re.S)
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
                   "\\": 92, '"': 34, "'": 39, "0": 0}
#: The context column: lt_context()'s codes.
_CONTEXT_CODES = dict((str(code), name) for code, name in enumerate(CONTEXTS))
#: Columns of an E line before the custom fields.
_E_COLUMNS = 23
_new_event = tuple.__new__


def events_in(lines):
    return sum(1 for line in lines if line.startswith(EVENT_TAG))
EXIT_REPORT_RE = re.compile(r"Number of errors|skipped probes|Skipped due to|transport failures")


def parse(line):
    """The FlowEvent of one line (a damaged one: of the whole line at its end), or None."""
    events = parse_lines((line,))
    return events[0] if events else None


def parse_lines(lines):
    """The FlowEvents of a batch of lines, as `parse` gives them, non-events left out."""
    events = []
    for line in lines:
        try:
            event = parse_line(salvage(line)[0])
        except (ValueError, IndexError, KeyError, TypeError, AttributeError, UnicodeError):
            continue
        if event is not None:
            events.append(event)
    return events


def salvage(line):
    """(line, damaged): the last whole LT1 line in `line`, and whether anything came before it.

    staprun's transport can lose its framing: seen once in the 6.1 lab (TCG, 2 CPUs), a
    message's tail was cut, its header bytes came out as text, and the next message ran
    on in the same line (tests/data/stap/lab-damaged-6.1.0-56-amd64.txt); the runtime
    counted one transport failure. The text before the last tag is not an event; what
    follows it is a whole line: no column can hold the tag, as text_str() escapes the
    tabs of comm and the command line.
    """
    cut = line.rfind(_TAG)
    if cut > 0:
        return line[cut:], True
    return line, False


def parse_line(line):
    """One LT1 E line -> FlowEvent; None for other lines. Raises ValueError on garbage.

    Written for speed (the tracer parses every line): one split, inline conversions,
    memoised address text.
    """
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) < _E_COLUMNS or parts[0] != PROTOCOL or parts[1] != "E":
        return None
    (_, _, time_ns, cpu, pid, tid, context, func, skb, family, proto, saddr, daddr, sport, dport,
     icmp_type, icmp_code, icmp_id, icmp_seq, length, dev, comm, cmdline) = parts[:_E_COLUMNS]
    fields = {}
    sk = None
    for item in parts[_E_COLUMNS:]:
        name, _, value = item.partition("=")
        if name == "@sk":
            sk = int(value, 16) or None
        elif name[0] == "@":
            _extra(fields, name, value)
        else:
            fields[name] = None if value == "-" else int(value)
    family = int(family)
    # In EVENT_FIELDS order, made in one step (FlowEvent's docstring says why).
    return _new_event(FlowEvent, (
        "stap", "kprobe", int(time_ns), int(cpu), int(pid), int(tid),
        unescape(comm) if "\\" in comm else comm, _CONTEXT_CODES[context], func, "entry", None,
        int(skb, 16) or None, sk, family if family in (4, 6) else None,
        None if proto == "-1" else int(proto), _address(family, saddr), _address(family, daddr),
        None if sport == "-1" else int(sport), None if dport == "-1" else int(dport),
        None if icmp_type == "-1" else int(icmp_type), None if icmp_code == "-1" else int(icmp_code),
        None if icmp_id == "-1" else int(icmp_id), None if icmp_seq == "-1" else int(icmp_seq),
        None if length == "-1" else int(length), None if dev == "-" else dev, fields,
        (unescape(cmdline) if "\\" in cmdline else cmdline) or None, None, None, None))


def _extra(fields, name, value):
    """An @extra of an E line (but @sk, the event's socket) into `fields`: @reason=N,
    @caller=SYMDATA, @peek=HEX ("-": none).

    symdata() prints "kfree_skb_reason+0x1a/0x80 [kernel]" (symbol, offset, size, module),
    or the address in hex when no symbol covers it: kept as the symbol and offset, or an int.
    """
    if value == "-":
        return
    if name == "@reason":
        fields["reason"] = int(value)
    elif name == "@caller":
        symbol = value.split("/", 1)[0].split(" ", 1)[0]
        fields["caller"] = int(symbol, 16) if symbol.startswith("0x") else symbol
    elif name == "@peek":
        fields.update(payload.fields(bytes.fromhex(value)))
    else:
        raise ValueError("unknown extra {}".format(name))


# Memoised: a process's comm and command line come back on each of its events.
@functools.lru_cache(maxsize=1024)
def unescape(text):
    """Undo SystemTap's text_str(): C escapes, \\ooo bytes, \\uXXXX code points."""
    out = bytearray()
    pos = 0
    for match in _ESCAPE_RE.finditer(text):
        out += text[pos:match.start()].encode("utf-8")
        code = match.group(1)
        if len(code) == 3:
            out.append(int(code, 8))
        elif len(code) > 3:
            out += chr(int(code[1:], 16)).encode("utf-8", "replace")
        else:
            out.append(_SIMPLE_ESCAPES.get(code, ord(code) if ord(code) < 128 else 63))
        pos = match.end()
    out += text[pos:].encode("utf-8")
    return out.decode("utf-8", "replace")


@functools.lru_cache(maxsize=1024)
def _address(family, text):
    """Hex bytes in network order -> canonical ipaddress text (a pure function, memoised)."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(text))
    if family == 6:
        return str(ipaddress.IPv6Address(bytes.fromhex(text)))
    return None


def count_lost(line, lost):
    if line.startswith(PROTOCOL + "\tL\t"):
        parts = line.split("\t")
        if len(parts) == 4 and parts[3].isdigit():
            lost["stap " + parts[2]] += int(parts[3])


def real_skipped(skipped, caught, version):
    """The probe hits stap skipped, from its exit report's count `skipped`, without the `caught`
    faults its probes caught where kernel `version` counts those as missed hits too
    (features.KPROBE_FAULTS_COUNTED_MISSED_BEFORE): each caught fault is one such count."""
    if version < features.KPROBE_FAULTS_COUNTED_MISSED_BEFORE:
        return max(0, skipped - caught)
    return skipped


def count_exit_report(line, lost):
    for regex, cause in ((_SKIPPED_RE, "stap skipped probes"), (_ERRORS_RE, "stap errors"),
                         (_TRANSPORT_RE, "stap transport failures")):
        match = regex.search(line)
        if match and int(match.group(1)):
            lost[cause] += int(match.group(1))
