"""The static tracepoints that see a packet, in one table: every backend names their
events as this table does.

A tracepoint is named `system:event` ("net:netif_receive_skb"): the event's `func` in
every backend's output, whatever its mechanism prints (ftrace's trace_pipe shows the
event alone). Each one here has the sk_buff as `skbaddr`. `functions` are the kernel
functions it fires in, once per call and with the same sk_buff: on a kernel without
kprobes, the ftrace and bpf backends trace a manifest function at its tracepoint (an
entry may name one itself with `tracepoint:`; legacytrace.manifest).
"""
import collections

from legacytrace.errors import LegacytraceError, UsageError


class Tracepoint(collections.namedtuple("Tracepoint", "name meaning functions fields frees")):
    """`meaning` in a word (the ftrace event's `meaning` field); `fields` the values it adds
    beyond the sk_buff (FlowEvent.fields: "caller", "reason"); `frees`: the sk_buff is freed
    there, so a packet's journey ends."""

    __slots__ = ()

    @property
    def system(self):
        return self.name.split(":")[0]

    @property
    def event(self):
        return self.name.split(":")[1]


def _tracepoint(name, meaning, functions=(), fields=(), frees=False):
    return Tracepoint(name, meaning, tuple(functions), tuple(fields), frees)


#: name -> Tracepoint. The functions were read in each kernel's net/core/dev.c and skbuff.c.
TABLE = collections.OrderedDict((tp.name, tp) for tp in (
    # trace_netif_receive_skb() in __netif_receive_skb_core(), which the others call.
    _tracepoint("net:netif_receive_skb", "receive", (
        "__netif_receive_skb_core", "__netif_receive_skb", "__netif_receive_skb_one_core")),
    # trace_netif_receive_skb_entry() / trace_netif_rx_entry() at the entry of the API (4.3+).
    _tracepoint("net:netif_receive_skb_entry", "receive", ("netif_receive_skb",)),
    _tracepoint("net:netif_rx_entry", "receive", ("netif_rx",)),
    _tracepoint("net:netif_rx", "receive", ("netif_rx_internal",)),
    _tracepoint("net:napi_gro_receive_entry", "receive", ("napi_gro_receive",)),
    # trace_net_dev_queue() in __dev_queue_xmit(); dev_queue_xmit is its inline wrapper (5.19+).
    _tracepoint("net:net_dev_queue", "queue", ("__dev_queue_xmit", "dev_queue_xmit")),
    # trace_net_dev_start_xmit() in xmit_one(), before the driver's ndo_start_xmit.
    _tracepoint("net:net_dev_start_xmit", "transmit", ("xmit_one",)),
    # After ndo_start_xmit, when the driver may have freed the sk_buff: no function of ours.
    _tracepoint("net:net_dev_xmit", "transmitted"),
    # The kfree_skb tracepoint (reason from 5.17, in kfree_skb_reason; sk_skb_reason_drop
    # from 6.11), consume_skb's own.
    _tracepoint("skb:kfree_skb", "drop", ("kfree_skb", "kfree_skb_reason", "sk_skb_reason_drop"),
                ("caller", "reason"), frees=True),
    _tracepoint("skb:consume_skb", "consume", ("consume_skb",), ("caller",), frees=True),
    _tracepoint("skb:skb_copy_datagram_iovec", "copy to user",
                ("skb_copy_datagram_iter", "skb_copy_datagram_iovec")),
))

#: event -> Tracepoint: what ftrace's lines name (every event is in one system only).
BY_EVENT = dict((tp.event, tp) for tp in TABLE.values())
#: Names of the tracepoints that free the sk_buff.
FREEING = frozenset(tp.name for tp in TABLE.values() if tp.frees)
_INSIDE = dict((function, tp) for tp in TABLE.values() for function in tp.functions)


def check(name, where):
    """Return `name` if it is a tracepoint of TABLE, else raise UsageError: it becomes
    tracefs paths and bpftrace probes."""
    if not isinstance(name, str) or name not in TABLE:
        raise UsageError("{}: tracepoint {!r} is not one legacytrace reads packets from: use "
                         "one of {}".format(where, name, ", ".join(TABLE)))
    return name


def of(function, named=None):
    """The Tracepoint that stands for `function` on a kernel without kprobes: `named` (a
    manifest entry's `tracepoint`), else the one that fires in it, else None."""
    if named is not None:
        return TABLE[check(named, "function " + str(function))]
    return _INSIDE.get(function)


def names(function, named=None):
    """`function`'s name and that of the tracepoint that stands for it, if any."""
    tracepoint = of(function, named)
    return (function,) if tracepoint is None else (function, tracepoint.name)


def select(probes, host):
    """[(probe, Tracepoint)] of the probes a kernel without kprobes can trace, each tracepoint
    once, and the warnings that name the others (`NAME: why`)."""
    chosen, warnings, used = [], [], {}
    present = set(host.tracepoints or ())
    for probe in probes:
        tracepoint = of(probe.name, probe.tracepoint)
        if tracepoint is None:
            warnings.append("{}: skipped, no tracepoint fires in it and this kernel has no "
                            "kprobes".format(probe.name))
        elif present and tracepoint.name not in present:
            warnings.append("{}: skipped, this kernel lacks tracepoint {}".format(
                probe.name, tracepoint.name))
        elif tracepoint.name in used:
            warnings.append("{}: skipped, tracepoint {} already traces {}".format(
                probe.name, tracepoint.name, used[tracepoint.name]))
        else:
            used[tracepoint.name] = probe.name
            chosen.append((probe, tracepoint))
    return chosen, warnings


def untraceable(backend, request):
    """The error for a request of which a kernel without kprobes can trace nothing."""
    return LegacytraceError(
        "{}: the {} backend can trace none of its functions ({}) on kernel {}: without "
        "kprobes it traces the tracepoint that fires in a function, and none fires in these: "
        "name one on an entry (`tracepoint: net:net_dev_queue`), or use a manifest whose "
        "functions have one (generic, drops)".format(
            request.manifest or "the manifest", backend,
            ", ".join(str(probe.name) for probe in request.probes), request.host.release))
