"""Renderers: how events reach the user (a live stream, JSON Lines, one block per packet).

A renderer is built on a text stream and gets two calls: `event(ev)` for every
FlowEvent that passed the filters, and `close(summary)` once at the end. It
never sees CLI flags (the CLI turns flags into constructor arguments: colour
only when the stream is a terminal) and never prints the text summary (the
CLI writes `summary.to_text()` to stderr after closing the renderer, because
`close()` may add to the summary).

Text that came from the traced system (comm, command line, device and custom
field values) is printed with non-printable characters escaped (\\x1b for ESC),
so a process cannot write terminal escape sequences through legacytrace.

JSON output (--json)
--------------------
JSON Lines: one object per line, one line per event, keys in this order. A
value the mechanism could not know is null.

| field     | type        | meaning                                                              | null when |
|-----------|-------------|----------------------------------------------------------------------|-----------|
| backend   | string      | mechanism that saw the event: "stap", "ftrace", "bpf"               | never |
| source    | string      | kind of probe: "kprobe", "kretprobe", "tracepoint"                  | never |
| time_ns   | integer     | kernel timestamp in ns (the mechanism's clock, e.g. ftrace's trace_clock; comparable within one run) | never |
| cpu       | integer     | CPU the probe ran on                                                 | never |
| pid       | integer     | process (thread group) id of the task the probe ran in              | not known to the mechanism |
| tid       | integer     | thread id of that task                                               | not known to the mechanism |
| comm      | string      | that task's comm (at most 15 characters)                             | not known to the mechanism |
| context   | string      | "task", "softirq", "hardirq" or "nmi"; outside "task", pid/tid/comm name the interrupted task, which is not the packet's owner | never |
| func      | string      | kernel function (or tracepoint, "net:netif_receive_skb")             | never |
| kind      | string      | "entry" or "return"                                                  | never |
| retval    | integer     | the function's return value                                          | kind is "entry" |
| skb       | integer     | address of the `struct sk_buff` (the packet's identity while it lives) | the probe has no sk_buff |
| sk        | integer     | address of the `struct sock` the event names: the function's socket argument, else `skb->sk` | no socket (a received packet before its socket is looked up), or a tracepoint of ftrace's tracepoint mode |
| family    | integer     | 4 or 6                                                               | no IP header was read |
| proto     | string or integer | "icmp", "tcp", "udp", "icmp6", or the IP protocol number for others | no IP header was read |
| saddr     | string      | source address, canonical text ("10.0.2.15", "fe80::1")             | no IP header was read |
| daddr     | string      | destination address, canonical text                                  | no IP header was read |
| sport     | integer     | TCP/UDP source port                                                  | not TCP/UDP, or no L4 header |
| dport     | integer     | TCP/UDP destination port                                             | not TCP/UDP, or no L4 header |
| icmp_type | integer     | ICMP/ICMPv6 type                                                     | not ICMP |
| icmp_code | integer     | ICMP/ICMPv6 code                                                     | not ICMP |
| icmp_id   | integer     | echo identifier                                                      | not an echo request/reply |
| icmp_seq  | integer     | echo sequence number                                                 | not an echo request/reply |
| length    | integer     | `skb->len` in bytes at this function                                 | the probe has no sk_buff |
| dev       | string      | network device name                                                  | no device attached yet, or not read |
| fields    | object      | the manifest's custom fields by name, plus extras of a mechanism (e.g. "reason" of skb:kfree_skb) | never (empty object) |
| cmdline   | string      | command line of the task's process ("[kthreadd]" for a kernel thread) | interrupt context, process already gone, or a replay |
| owner_pid | integer     | the process that owns the packet's socket (legacytrace.owners): in softirq context the process a received packet is for | no socket of a process found |
| owner_comm | string     | that process's comm                                                  | as owner_pid |
| owner_cmdline | string  | that process's command line                                          | as owner_pid, process already gone, or a replay |

With a summary requested, the last line is one object with "type": "summary"
(event objects have no "type" key): events, flows (distinct flows counted),
flows_capped, other_flow_events, no_flow_events, functions (name -> events),
top_flows (list of {family, proto, saddr, sport, daddr, dport, events}, proto
named as in events),
lost (cause -> events), lost_total, processes (the process filter in words, or null),
filtered (dropped by the user-space flow or process check), evicted (packets the --flows
view printed before their end), first_ns, last_ns.
"""
import collections
import json
import operator
from itertools import repeat
from json.encoder import c_make_encoder, encode_basestring_ascii

from legacytrace.model import EVENT_FIELDS, PROTO_NAMES, TEXT_FIELDS, fields_getter

# The argument of every renderer's close(); the CLI takes it from here.
from legacytrace.summary import Summary  # noqa: F401

#: ICMP (RFC 792) and ICMPv6 (RFC 4443, 4861) type names, by IP protocol number.
ICMP_TYPES = {
    1: {0: "echo-reply", 3: "dest-unreach", 5: "redirect", 8: "echo-request", 11: "time-exceeded"},
    58: {1: "dest-unreach", 2: "packet-too-big", 3: "time-exceeded", 128: "echo-request",
         129: "echo-reply", 133: "router-solicit", 134: "router-advert",
         135: "neighbor-solicit", 136: "neighbor-advert"},
}

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_CYAN = "\x1b[36m"
_YELLOW = "\x1b[33m"
_GREEN = "\x1b[32m"
_RED = "\x1b[31m"

#: JSON text of the protocols that to_dict() names.
_JSON_PROTO = dict((number, json.dumps(name)) for number, name in PROTO_NAMES.items())

_NONE = type(None)
_fields_of = fields_getter("fields")

#: Characters that make a value need quotes in name=value text.
_QUOTE_TRIGGERS = frozenset(' "\\=')


class Renderer(object):
    """Writes events to a text stream as they come; `close(summary)` ends the output."""

    def event(self, ev):
        raise NotImplementedError

    def events(self, evs):
        """A batch of events, in order (the trace loop and the parse command take batches)."""
        for ev in evs:
            self.event(ev)

    def close(self, summary):
        raise NotImplementedError


class LiveRenderer(Renderer):
    """One line per event, in fixed columns under a header printed before the first event.

    Columns: TIME (kernel seconds.microseconds), CPU, PROCESS (comm[pid] in task
    context, [softirq] and the like otherwise), FUNCTION (name, or name()=retval
    for a return), LEN, FLOW (protocol, addresses and ports, ICMP type and echo
    id/seq; last of the columns because its width varies most, IPv6 above all);
    then name=value extras: dev, the custom fields, cmd (the owner's command
    line, "[exited]" when it was gone before it could be read). A value wider
    than its column pushes the rest of the line right; nothing is cut.
    `cmdline=False` leaves cmd out (a replay: those processes are not here).
    """

    PLAIN = "{time:>15} {cpu:>3} {proc:<28} {func:<26} {len:>5} {flow}"
    COLOR = (_DIM + "{time:>15}" + _RESET + " {cpu:>3} {pcolor}{proc:<28}" + _RESET + " {fcolor}"
             + "{func:<26}" + _RESET + " {len:>5} " + _GREEN + "{flow}" + _RESET)

    def __init__(self, stream, color=False, cmdline=True):
        self._stream = stream
        self._format = (self.COLOR if color else self.PLAIN).format
        self._cmdline = cmdline
        self._started = False

    def event(self, ev):
        self.events((ev,))

    def events(self, evs):
        """A batch of events, written at once."""
        text = "".join(map(self.line, evs))
        if text and not self._started:
            self._started = True
            text = self.PLAIN.format(time="TIME", cpu="CPU", proc="PROCESS", func="FUNCTION",
                                     flow="FLOW", len="LEN") + "\n" + text
        self._stream.write(text)

    def line(self, ev):
        """The text line of one event, with its newline."""
        return self._format(
            time=time_text(ev.time_ns), cpu=_or_dash(ev.cpu), proc=process_text(ev),
            func=func_text(ev), flow=flow_text(ev), len=_or_dash(ev.length),
            pcolor=_process_color(ev), fcolor=_func_color(ev)) + extra_text(ev, self._cmdline) + "\n"

    def close(self, summary):
        """Nothing to finish: every event is already out."""


class JsonRenderer(Renderer):
    """JSON Lines: `FlowEvent.to_dict()` per event (schema above), the summary last if asked.

    Most fields repeat from one event to the next (who ran, which function, the
    flow); only `CHANGING` ones (time, CPU, sk_buff, length...) and the custom
    fields differ each time. So the JSON text of the repeating fields is made once
    per distinct combination of their values and of the types of the changing ones
    (a changing field that is None is printed as null) and kept as a %-template with
    a slot for each changing field; an event then costs one lookup and one format of
    a tuple taken from the event as it is. The repeating values need no type in the
    key because FlowEvent's fields have fixed types (model.TEXT_FIELDS: text, else an
    int, never a bool or a float, so an equal value is the same JSON). At most
    `MEMO_MAX` combinations are kept. A value of an unexpected type (a backend bug)
    makes the template builder raise; that event then goes through the dict encoder,
    so the line is what `json.dumps(ev.to_dict())` would say.
    """

    #: Integer fields that change from event to event even within one flow, in
    #: EVENT_FIELDS order; `fields`, after them there, changes too.
    CHANGING = ("time_ns", "cpu", "retval", "skb", "icmp_seq", "length")
    MEMO_MAX = 4096

    def __init__(self, stream, summary=False):
        self._stream = stream
        self._summary = summary
        # Compact separators; default=str keeps an odd custom field value from stopping the run.
        self._encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
        self._encode_fields = _compact_encoder()
        self._repeating = tuple(name for name in EVENT_FIELDS
                                if name not in self.CHANGING and name != "fields")
        self._repeating_of = fields_getter(*self._repeating)
        self._changing_of = fields_getter(*self.CHANGING)
        self._memo = {}

    def event(self, ev):
        self._stream.write(self.line(ev))

    def events(self, evs):
        """A batch of events, written at once (the parse command reads a capture in batches).

        The same steps as `line`, each taken over the whole batch by a C loop (map, zip,
        itemgetter) instead of one Python call per event (bench/ingest.py). If a template
        cannot be made for one event, the batch goes through `line` one event at a time,
        which falls back to the dict encoder.
        """
        changing = list(map(self._changing_of, evs))
        keys = zip(map(self._repeating_of, evs), map(tuple, map(map, repeat(type), changing)))
        memo = self._memo
        try:
            templates = [memo.get(key) or self._template(key) for key in keys]
        except (TypeError, ValueError):
            self._stream.write("".join(map(self.line, evs)))
            return
        encode = self._encode_fields
        fields = [(encode(f) if f else "{}",) for f in map(_fields_of, evs)]
        self._stream.write("".join(map(operator.mod, templates,
                                       map(operator.add, changing, fields))))

    def line(self, ev):
        """The JSON line of one event, with its newline."""
        changing = self._changing_of(ev)
        key = (self._repeating_of(ev), tuple(map(type, changing)))
        try:
            template = self._memo.get(key) or self._template(key)
        except (TypeError, ValueError):
            return self._encode(ev.to_dict()) + "\n"
        fields = ev.fields
        return template % (changing + (self._encode_fields(fields) if fields else "{}",))

    def close(self, summary):
        if self._summary:
            out = {"type": "summary"}
            out.update(summary.to_dict())
            self._stream.write(self._encode(out) + "\n")

    def _template(self, key):
        """The JSON line for `key`'s repeating values, with a slot for each changing field.

        A changing integer is a %s slot; a changing None is `null` and a %.0s slot,
        which takes the None from the tuple and prints nothing of it.
        """
        values, types = key
        text = {"fields": "%s"}
        for name, value in zip(self._repeating, values):
            text[name] = _json_converter(name)(value).replace("%", "%%")
        for name, kind in zip(self.CHANGING, types):
            if kind is int:
                text[name] = "%s"
            elif kind is _NONE:
                text[name] = "null%.0s"
            else:
                raise TypeError("{} is not an integer: {}".format(name, kind))
        template = "{" + ",".join('"{}":{}'.format(name, text[name])
                                  for name in EVENT_FIELDS) + "}\n"
        if len(self._memo) >= self.MEMO_MAX:
            self._memo.clear()
        self._memo[key] = template
        return template


class FlowsRenderer(Renderer):
    """One block per packet (ipftrace style): the functions one sk_buff passed, in order.

    Events are grouped by sk_buff address. A block is printed when its packet
    reaches a function in `egress` (names of the manifest's egress probes), when
    more than `max_open` packets are open (the least recently active one is
    printed early and counted in the summary's `evicted`), or at close. Each
    line gives the time since the packet's first event in microseconds, CPU,
    process, function, length and extras; the flow appears in the header and
    again on a line where it changed (NAT). `max_functions` caps the lines a
    block shows (the rest are counted); a block keeps at most `max_events`
    events in memory either way. An event without an sk_buff is a block of
    its own. `title` (the filter) heads the output.
    """

    HEADER = "=== {flow}  skb={skb}  at {time}"
    PLAIN = "{delta:>14} {cpu:>3} {proc:<28} {func:<26} {len:>5}"
    COLOR = (_DIM + "{delta:>14}" + _RESET + " {cpu:>3} {pcolor}{proc:<28}" + _RESET
             + " {fcolor}{func:<26}" + _RESET + " {len:>5}")

    def __init__(self, stream, egress=(), color=False, cmdline=True, max_functions=None,
                 max_open=1024, max_events=256, title=None):
        self._stream = stream
        if title:
            stream.write("# {}\n".format(title))
        self._egress = frozenset(egress)
        self._color = color
        self._format = (self.COLOR if color else self.PLAIN).format
        self._cmdline = cmdline
        self._shown = max_functions
        self._max_open = max_open
        self._max_events = min(max_events, max_functions or max_events)
        self._open = collections.OrderedDict()    # skb address -> _Packet
        self._evicted = 0

    def event(self, ev):
        if ev.skb is None:
            packet = _Packet()
            packet.add(ev, self._max_events)
            self._print(packet, "no sk_buff to follow")
            return
        packet = self._open.get(ev.skb)
        if packet is None:
            packet = self._open[ev.skb] = _Packet()
            if len(self._open) > self._max_open:
                self._evicted += 1
                self._print(self._open.popitem(last=False)[1],
                            "printed early: more than {} packets open".format(self._max_open))
        else:
            self._open.move_to_end(ev.skb)
        packet.add(ev, self._max_events)
        if ev.func in self._egress:
            del self._open[ev.skb]
            self._print(packet, "ended at " + ev.func)

    def close(self, summary):
        """Print the packets still open (in order of last activity) and count evictions."""
        while self._open:
            self._print(self._open.popitem(last=False)[1], "still open when the trace ended")
        summary.evicted += self._evicted

    def _print(self, packet, ending):
        first = packet.events[0]
        flow = flow_text(first)
        out = [self.HEADER.format(flow=flow, skb=_skb_text(first.skb), time=time_text(first.time_ns))]
        if self._cmdline:
            out.extend("{:>14} {} cmd={}".format("", process, _quote(cmdline or "[exited]"))
                       for process, cmdline in packet.owners())
        shown = packet.events if self._shown is None else packet.events[:self._shown]
        for ev in shown:
            extra = extra_text(ev, cmdline=False)
            if ev.family is not None:
                ev_flow = flow_text(ev)
                if ev_flow != flow:
                    flow = ev_flow
                    extra += " flow=" + _quote(flow)
            delta = "?"
            if ev.time_ns is not None and first.time_ns is not None:
                delta = "+" + _delta_text(ev.time_ns - first.time_ns)
            out.append(self._format(
                delta=delta, cpu=_or_dash(ev.cpu), proc=process_text(ev), func=func_text(ev),
                len=_or_dash(ev.length), pcolor=_process_color(ev), fcolor=_func_color(ev))
                + extra)
        hidden = packet.hidden + len(packet.events) - len(shown)
        if hidden:
            out.append("{:>14} ... {} more".format("", hidden))
        count = len(packet.events) + packet.hidden
        if count == 1:
            out.append("--- 1 event, " + ending)
        else:
            span = ""
            if packet.last_ns is not None and first.time_ns is not None:
                span = " in " + _delta_text(packet.last_ns - first.time_ns)
            out.append("--- {} events{}, {}".format(count, span, ending))
        self._stream.write("\n".join(out) + "\n\n")


class _Packet(object):
    """The events of one open packet: the first `max_events` kept, the rest counted."""

    __slots__ = ("events", "hidden", "last_ns")

    def __init__(self):
        self.events = []
        self.hidden = 0
        self.last_ns = None

    def add(self, ev, max_events):
        if len(self.events) < max_events:
            self.events.append(ev)
        else:
            self.hidden += 1
        if ev.time_ns is not None:
            self.last_ns = ev.time_ns

    def owners(self):
        """("by comm[pid]", command line) of each task that handled the packet and ("for
        comm[pid]", command line) of each other process that owns it, in order."""
        seen = collections.OrderedDict()
        for ev in self.events:
            if ev.context == "task":
                seen.setdefault(ev.pid, ("by " + _named(ev.comm, ev.pid), ev.cmdline))
        for ev in self.events:
            if ev.owner_pid is not None:
                seen.setdefault(ev.owner_pid, ("for " + _named(ev.owner_comm, ev.owner_pid),
                                               ev.owner_cmdline))
        return list(seen.values())


def time_text(time_ns):
    """Kernel time as seconds.microseconds, ftrace's notation; "-" when unknown."""
    if time_ns is None:
        return "-"
    return "{}.{:06d}".format(time_ns // 1000000000, time_ns % 1000000000 // 1000)


def process_text(ev):
    """comm[pid] of the task, or [softirq]/[hardirq]/[nmi] (never the interrupted task), and
    " for comm[pid]" of the packet's owner where it is another process ("[softirq] for
    nginx[812]")."""
    if ev.context != "task":
        text = "[" + ev.context + "]"
    else:
        text = _named(ev.comm, ev.pid)
        if ev.owner_pid == ev.pid:
            return text
    if ev.owner_pid is None:
        return text
    return text + " for " + _named(ev.owner_comm, ev.owner_pid)


def _named(comm, pid):
    """comm[pid] ("?" for an unknown comm; the comm alone for an unknown pid)."""
    comm = "?" if comm is None else _clean(comm)
    return comm if pid is None else "{}[{}]".format(comm, pid)


def func_text(ev):
    """The function, as name()=retval for a return event."""
    func = _clean(ev.func)
    if ev.kind == "return":
        return "{}()={}".format(func, "?" if ev.retval is None else ev.retval)
    return func


def flow_text(ev):
    """Protocol, addresses and ports ("tcp 10.0.2.15:22 > 10.0.2.2:50000"), ICMP type and echo ids."""
    if ev.family is None:
        return "-"
    text = _clean(str(ev.key))
    if ev.icmp_type is None:
        return text
    name = ICMP_TYPES.get(ev.proto, {}).get(ev.icmp_type)
    if name is None:
        return "{} type={} code={}".format(text, ev.icmp_type, ev.icmp_code)
    if ev.icmp_id is None:
        return "{} {}".format(text, name)
    return "{} {} id={} seq={}".format(text, name, ev.icmp_id, ev.icmp_seq)


def extra_text(ev, cmdline):
    """" name=value ..." for dev, the custom fields and cmd (the task's command line in
    task context, else the owner's where there is one); "" if none."""
    parts = []
    if ev.dev is not None:
        parts.append("dev=" + _quote(ev.dev))
    for name, value in ev.fields.items():
        parts.append("{}={}".format(_clean(str(name)), _quote(value)))
    if cmdline and ev.context == "task":
        parts.append("cmd=" + _quote(ev.cmdline or "[exited]"))
    elif cmdline and ev.owner_pid is not None:
        parts.append("cmd=" + _quote(ev.owner_cmdline or "[exited]"))
    return " " + " ".join(parts) if parts else ""


def _compact_encoder():
    """obj -> compact JSON text (default=str), with the C encoder built once.

    JSONEncoder.encode builds that encoder anew on every call, which costs twice
    the encoding of a small dict such as an event's custom fields (3.6 to 3.11).
    """
    if c_make_encoder is None:           # a Python without the _json accelerator
        return json.JSONEncoder(separators=(",", ":"), default=str).encode
    encode = c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda obj: "".join(encode(obj, 0))


def _json_converter(name):
    """The function that turns field `name`'s value into JSON text (not for `fields`)."""
    if name in TEXT_FIELDS:
        return _json_text
    if name == "proto":
        return _json_proto
    return _json_int


def _json_text(value):
    return "null" if value is None else encode_basestring_ascii(value)


def _json_int(value):
    if type(value) is int:
        return repr(value)
    if value is None:
        return "null"
    raise TypeError("not an integer: {!r}".format(value))


def _json_proto(value):
    return _JSON_PROTO.get(value) or _json_int(value)


def _delta_text(delta_ns):
    return "{}.{:03d}us".format(delta_ns // 1000, delta_ns % 1000)


def _skb_text(skb):
    return "-" if skb is None else "0x{:x}".format(skb)


def _or_dash(value):
    return "-" if value is None else value


def _process_color(ev):
    return _CYAN if ev.context == "task" else _YELLOW


def _func_color(ev):
    if ev.kind == "return" and isinstance(ev.retval, int) and ev.retval < 0:
        return _RED
    return _BOLD


def _clean(text):
    """`text` with every non-printable character escaped as in a Python literal (\\x1b)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char):
    code = ord(char)
    if code < 0x100:
        return "\\x{:02x}".format(code)
    if code < 0x10000:
        return "\\u{:04x}".format(code)
    return "\\U{:08x}".format(code)


def _quote(value):
    """A value for name=value text: bare when unambiguous, else in double quotes with \\ escapes."""
    text = str(value)
    if text and text.isprintable() and _QUOTE_TRIGGERS.isdisjoint(text):
        return text
    return '"' + _clean(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
