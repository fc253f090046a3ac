"""The one model every backend speaks: what a trace asks for and what an event says.

The data flow is request -> program -> raw lines -> events -> output (README.md, "Layout").
This module holds the two ends that every backend shares: `TraceRequest` (what to
trace) and `FlowEvent` (what was seen). Nothing here knows which mechanism ran.
"""
import collections
import operator

#: Contexts an event can run in. An event in interrupt context runs on behalf of
#: whatever task was interrupted: that task is not the packet's owner.
CONTEXTS = ("task", "softirq", "hardirq", "nmi")

#: IP protocol numbers by the names the CLI and output use.
PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58}
PROTO_NAMES = dict((v, k) for k, v in PROTO_NUMBERS.items())


class FlowKey(collections.namedtuple(
        "FlowKey", "family proto saddr sport daddr dport")):
    """The 5-tuple (plus family) that names a flow; ports are None for ICMP."""

    __slots__ = ()

    def __str__(self):
        if self.family is None:
            return "-"
        if self.proto is None:  # an IP header seen, its payload not (a fragment, say)
            proto = "ipv{}".format(self.family)
        else:
            proto = PROTO_NAMES.get(self.proto, str(self.proto))
        return "{} {} > {}".format(proto, _endpoint(self.family, self.saddr, self.sport),
                                   _endpoint(self.family, self.daddr, self.dport))


_new_tuple = tuple.__new__


def _endpoint(family, addr, port):
    if port is None:
        return str(addr)
    if family == 6:
        return "[{}]:{}".format(addr, port)
    return "{}:{}".format(addr, port)


#: FlowEvent's fields, in the order of the JSON Lines schema (README, "JSON output").
EVENT_FIELDS = (
    "backend", "source", "time_ns", "cpu", "pid", "tid", "comm", "context",
    "func", "kind", "retval", "skb", "sk", "family", "proto", "saddr", "daddr",
    "sport", "dport", "icmp_type", "icmp_code", "icmp_id", "icmp_seq",
    "length", "dev", "fields", "cmdline", "owner_pid", "owner_comm", "owner_cmdline",
)


#: FlowEvent fields that hold text (or None). `fields` holds a dict; every other field an
#: int (never a bool or a float) or None: the JSON renderer relies on it.
TEXT_FIELDS = frozenset(("backend", "source", "comm", "context", "func", "kind", "saddr", "daddr",
                         "dev", "cmdline", "owner_comm", "owner_cmdline"))


class FlowEvent(collections.namedtuple("FlowEvent", EVENT_FIELDS)):
    """One hit of one probe, normalised: the same fields whichever backend saw it.

    Fields that a mechanism cannot know stay None (a tracepoint knows no tuple,
    an interrupt-context event has no meaningful sender). `backend` names the
    mechanism and `source` the kind of probe (kprobe, kretprobe, tracepoint). `sk` is
    the socket the event names (a socket function's argument, else skb->sk); the
    owner_* fields name the process that owns it (legacytrace.owners), which user space
    adds.

    A tuple, made in one step: a parser builds it with `tuple.__new__(FlowEvent,
    values)` from the values in EVENT_FIELDS order, and the JSON renderer and the
    summary read fields by position in C (operator.itemgetter). An object with 26
    slots set one by one cost bpf and stap 3,000 more instructions a line
    (BENCHMARKS.md). Other code makes one by keyword, and changes one with `_replace`
    (the command line and the owner, added after parsing). The keyword constructor
    checks each field's type (TEXT_FIELDS); tests check that parsers keep them.
    """

    __slots__ = ()
    __hash__ = None        # `fields` is a dict

    def __new__(cls, *, backend=None, source=None, time_ns=None, cpu=None, pid=None, tid=None,
                comm=None, context=None, func=None, kind=None, retval=None, skb=None, sk=None,
                family=None, proto=None, saddr=None, daddr=None, sport=None, dport=None,
                icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, length=None,
                dev=None, fields=None, cmdline=None, owner_pid=None, owner_comm=None,
                owner_cmdline=None):
        values = (
            backend, source, time_ns, cpu, pid, tid, comm, "task" if context is None else context,
            func, "entry" if kind is None else kind, retval, skb, sk, family, proto, saddr,
            daddr, sport, dport, icmp_type, icmp_code, icmp_id, icmp_seq, length, dev,
            {} if fields is None else fields, cmdline, owner_pid, owner_comm, owner_cmdline)
        for name, value in zip(EVENT_FIELDS, values):
            if value is None or name == "fields":
                continue
            text = name in TEXT_FIELDS
            if not (isinstance(value, str) if text else type(value) is int):
                raise TypeError("FlowEvent {} must be {} or None, not {!r}".format(
                    name, "text" if text else "an int", value))
        return tuple.__new__(cls, values)

    @property
    def in_interrupt(self):
        """True when the event ran in interrupt context (no owning task)."""
        return self.context != "task"

    @property
    def key(self):
        """The flow this event belongs to."""
        return _new_tuple(FlowKey, flow_of(self))

    def to_dict(self):
        """The JSON Lines schema (README, "JSON output"): every field, None as null."""
        out = dict(zip(EVENT_FIELDS, self))
        out["proto"] = PROTO_NAMES.get(self.proto, self.proto)
        return out

    def __repr__(self):
        return "FlowEvent({})".format(", ".join(
            "{}={!r}".format(name, value) for name, value in zip(EVENT_FIELDS, self)
            if value not in (None, {})))


def fields_getter(*names):
    """A C callable taking these FlowEvent fields by position: the value of one name, a
    tuple of several."""
    return operator.itemgetter(*(EVENT_FIELDS.index(name) for name in names))


#: An event's flow as a plain tuple in FlowKey's order, taken in C: equal to its FlowKey
#: and hashed alike (the summary counts flows by it).
flow_of = fields_getter(*FlowKey._fields)


class Probe(object):
    """One kernel function to probe, resolved for the target kernel.

    `skb_pos` and `sk_pos` are 1-based argument positions of the
    `struct sk_buff *` and `struct sock *` (None when the function has none).
    `egress` marks a function that ends a packet's journey (kfree_skb).
    `fields` are the manifest's custom fields (name -> validated field path).
    `args` are extra arguments to report (name -> 1-based position; names and C types
    in `legacytrace.validate.ARG_TYPES`, e.g. reason -> enum skb_drop_reason), `peek`
    is None or {"arg": "msg", "bytes": N} (the first N bytes of the user data behind
    that struct msghdr * argument), `caller` asks for the return address.
    `tracepoint` names the static tracepoint ("net:net_dev_queue") that stands for the
    function where it cannot be probed (None: the one legacytrace.kernel.tracepoints knows).
    """

    __slots__ = ("name", "skb_pos", "sk_pos", "egress", "description", "fields", "kind",
                 "args", "peek", "caller", "tracepoint")

    def __init__(self, name, skb_pos=None, sk_pos=None, egress=False, description="",
                 fields=None, kind="entry", args=None, peek=None, caller=False,
                 tracepoint=None):
        self.name = name
        self.skb_pos = skb_pos
        self.sk_pos = sk_pos
        self.egress = egress
        self.description = description
        self.fields = collections.OrderedDict(fields or ())
        self.kind = kind
        self.args = collections.OrderedDict(args or ())
        self.peek = dict(peek) if peek else None
        self.caller = caller
        self.tracepoint = tracepoint

    def __repr__(self):
        return "Probe({!r}, skb_pos={!r}, sk_pos={!r}, egress={!r})".format(
            self.name, self.skb_pos, self.sk_pos, self.egress)

    def __eq__(self, other):
        return isinstance(other, Probe) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __ne__(self, other):
        return not self == other

    __hash__ = None


class Limits(object):
    """When to stop: after `count` events, `duration` seconds, at most `rate` events/s shown."""

    __slots__ = ("count", "duration", "rate")

    def __init__(self, count=None, duration=None, rate=None):
        self.count = count
        self.duration = duration
        self.rate = rate


#: KiB per CPU of the buffer between the probes and user space (--buffer-size): ftrace's
#: instance ring buffer, bpftrace's perf ring, staprun's transport. It holds the lab's burst
#: of 2,000 datagrams (16,000 events of about 200 bytes) on one CPU.
BUFFER_KB = 4096


class TraceRequest(object):
    """Everything a backend needs to build its program: probes, flow filter, limits, target.

    `host` is the `HostFacts` of the kernel the program is for (the running
    host, or recorded facts of another one when generating for elsewhere).
    `run_id` names what this run attaches, so that leftovers can be found.
    `buffer_kb` sizes the mechanism's buffer per CPU (BUFFER_KB).
    `processes` is a procfilter.ProcessFilter, or None for every process.
    """

    __slots__ = ("probes", "flow", "limits", "host", "run_id", "manifest", "buffer_kb",
                 "processes")

    def __init__(self, probes, flow, host, limits=None, run_id=None, manifest=None,
                 buffer_kb=BUFFER_KB, processes=None):
        self.probes = list(probes)
        self.flow = flow
        self.host = host
        self.limits = limits or Limits()
        self.run_id = run_id
        self.manifest = manifest
        self.buffer_kb = buffer_kb
        self.processes = processes
