"""Pure building of kprobe_events definitions and event filters for the ftrace backend.

A definition is one line a kernel appends to `kprobe_events`:

    p:legacytrace_lt123/ip_rcv ip_rcv skb=%di:x64 len=+112(%di):x32 ... dp0=+0(+200(%di)):x64 ...

Only the baseline syntax that 3.10 already accepts is used (`%REG`, nested `+OFF(...)`,
`u8..u64`, `string`, `$retval`); the `x8..x64` hex types replace `u*` where the kernel
has them (4.9+), so that every number prints in hex on every kernel (parse.py).

Where the 5-tuple comes from (docs/kernel-facts.md, "Struct layouts": the header offsets are __u16 offsets from
`head`, and a kprobe fetch cannot add two fetched values): each sk_buff probe fetches
`head`, `data` and `network_header`, and a window of u64 words of packet bytes at fixed
offsets from `skb->data` (`dp8` is data+8, `dm40` data-40). User space finds the IP
header in the window at `head + network_header - data` and reads the rest from it. The
window is placed by where `skb->data` points when the function is entered
(legacytrace.kernel.skbuff.DATA_AT):

    l3  the IP header (ip_rcv, ip_output, ...):              data+0  .. data+48
    l2  the Ethernet header (dev_queue_xmit):                data+8  .. data+64 (IP at +14)
    l4  the transport header (tcp_v4_rcv, udp_rcv, ...):     data-40 .. data+8
    unknown (kfree_skb, netif_receive_skb, anything else):   data-40 .. data+64

48 bytes cover an IPv6 header and the first 8 bytes of TCP, UDP or ICMP after it.
Socket-level functions (tcp_sendmsg(sk, ...), tcp_connect(sk)) read the tuple from
`struct sock_common` instead.

Manifest extras (legacytrace.model.Probe), each an argument the parser knows by name:

    reason=%si:x32        `args: {reason: N}`: the register of argument N (enum skb_drop_reason)
    caller=+0($stack):x64 `caller: true`: the return address, on top of the stack at entry
    c_NAME=+OFF(...)      a custom field path, members followed through pointers with
                          nested dereferences at offsets from the kernel's types (BTF)
    pi=, pu=, itN=        `peek`: the first bytes of the user's buffer behind a struct msghdr *
                          (see msg_iter_args)

Event filters: the flow expression is compiled into each probe's event filter
(eventfilter.py) on dedicated `f*` fetch args, read where the IP header may be by where
skb->data points (ip_views), or from the struct sock (sock_view). The filter may let through
more than the expression, never less: user space checks every event again.
"""
import collections
import re

from legacytrace.backends.ftrace import eventfilter
from legacytrace.kernel import skbuff, sock, structs
from legacytrace.kernel.x86_64 import ARG_REGISTERS
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.kernel.offsets import LayoutError, LayoutTypes

MAX_ARGS = 128           # kprobe_events: arguments per probe
MAX_ARG_TEXT = 63        # kprobe_events: characters per argument
MAX_NAME = 63            # event and group names (MAX_EVENT_NAME_LEN 64 with the NUL)

#: Byte range [start, end) of the fetched window around skb->data, per position.
WINDOWS = {"l3": (0, 48), "l2": (8, 64), "l4": (-40, 8), None: (-40, 64)}

# A member's C type as legacytrace.kernel.btf spells it: "struct sock_common",
# "const struct iovec *".
_STRUCT_CTYPE = re.compile(r"^(?:(?:const|volatile) )*(?:struct|union) (\w+)( \*)?\Z")
_CHARS_CTYPE = re.compile(r"^(?:(?:const|volatile) )*(?:(?:un)?signed )?char\[\d+\]\Z")


class Definition(collections.namedtuple("Definition", "kind event symbol args filter")):
    """One kprobe event: kind "p" or "r", event name, probed symbol, fetch args, filter or None."""

    __slots__ = ()

    def line(self, group):
        """The kprobe_events line for this definition in `group`."""
        return "{}:{}{}".format(self.kind, group, self.tail())

    def tail(self):
        """What follows the group in the line: `/EVENT SYMBOL ARGS`."""
        return "/{} {} {}".format(self.event, self.symbol, " ".join(self.args)).rstrip()


def group_name(run_id):
    """The kprobe group and tracefs instance name of a (checked) run id: `legacytrace_<id>`,
    within MAX_NAME as legacytrace.validate.RUN_ID_RE keeps it."""
    return "legacytrace_" + run_id


def event_name(symbol, kind):
    """The event name for a probe on a (checked) `symbol` ('.' of `ip_rcv.isra.0` becomes
    '_'); kprobe_events takes names of at most MAX_NAME characters, "_ret" included."""
    if len(symbol) > MAX_NAME - 4:
        raise UsageError("function name {!r} is longer than the {} characters kprobe_events "
                         "takes in an event name".format(symbol, MAX_NAME - 4))
    name = symbol.replace(".", "_")
    return name + "_ret" if kind == "return" else name


class Fetch(object):
    """Fetch arguments for one kernel: the type names it accepts and the struct offsets.

    `layout` is a legacytrace.kernel.offsets.Layout; `hex_types` says whether the kernel has the
    x8..x64 types (4.9+): with them every value prints as `0x..`, without them `u*`
    print hex anyway (docs/kernel-facts.md), so the parser reads hex either way.
    `types()` returns the kernel's types for field paths and peek (legacytrace.kernel.btf.BTF or
    LayoutTypes; asked on first need: BTF takes a moment to index); `syntax` is the optional
    kprobe_events syntax the kernel has (legacytrace.kernel.features.KPROBE_SYNTAX names).
    """

    def __init__(self, layout, hex_types, types=None, syntax=()):
        self.layout = layout
        self.hex_types = hex_types
        self.syntax = frozenset(syntax)
        self._types_of = types or (lambda: LayoutTypes(layout))
        self._types = None

    @property
    def types(self):
        if self._types is None:
            self._types = self._types_of()
        return self._types

    def type(self, size):
        return "{}{}".format("x" if self.hex_types else "u", size * 8)

    def member(self, struct_name, member, base):
        """`+OFF(base):TYPE` for struct_name.member at `base` (a register or fetch)."""
        field = self.layout.field(struct_name, member)
        return "+{}({}):{}".format(field.offset, base, self.type(field.size))

    def offset(self, struct_name, member):
        return self.layout.field(struct_name, member).offset


def _relative(offset, base):
    return "{}{}({})".format("+" if offset >= 0 else "-", abs(offset), base)


def _window_name(offset):
    return "d{}{}".format("m" if offset < 0 else "p", abs(offset))


def skb_args(fetch, reg, position):
    """Fetch args for a `struct sk_buff *` in register `reg` (see the module doc)."""
    data = _relative(fetch.offset("sk_buff", "data"), reg)
    dev = _relative(fetch.offset("sk_buff", "dev"), reg)
    args = ["skb={}:{}".format(reg, fetch.type(8)),
            "len=" + fetch.member("sk_buff", "len", reg),
            "eth=" + fetch.member("sk_buff", "protocol", reg),
            "head=" + fetch.member("sk_buff", "head", reg),
            "data=" + fetch.member("sk_buff", "data", reg),
            "nh=" + fetch.member("sk_buff", "network_header", reg),
            "dev=+0({}):string".format(dev)]
    start, end = WINDOWS[position]
    args.extend("{}={}:{}".format(_window_name(offset), _relative(offset, data), fetch.type(8))
                for offset in range(start, end, 8))
    return args


def socket_arg(fetch, skb_reg, sk_reg):
    """`sk=`: the socket an sk_buff probe names, its struct sock * argument where it has one,
    else skb->sk (NULL before a received packet's socket is looked up)."""
    if sk_reg:
        return "sk={}:{}".format(sk_reg, fetch.type(8))
    return "sk=" + fetch.member("sk_buff", "sk", skb_reg)


def sock_args(fetch, reg):
    """Fetch args for a `struct sock *` (its first member is struct sock_common)."""
    args = ["sk={}:{}".format(reg, fetch.type(8)),
            "skc_family=" + fetch.member("sock_common", "skc_family", reg),
            "skc_saddr=" + fetch.member("sock_common", "skc_rcv_saddr", reg),
            "skc_daddr=" + fetch.member("sock_common", "skc_daddr", reg),
            "skc_sport=" + fetch.member("sock_common", "skc_num", reg),
            "skc_dport=" + fetch.member("sock_common", "skc_dport", reg)]
    # The IPv6 addresses joined sock_common in 3.13 (and need CONFIG_IPV6): fetch them
    # where the layout has them, as two u64 halves each.
    for name, member in (("skc_saddr6", "skc_v6_rcv_saddr"), ("skc_daddr6", "skc_v6_daddr")):
        if fetch.layout.has("sock_common", member):
            offset = fetch.offset("sock_common", member)
            args.append("{}a=+{}({}):{}".format(name, offset, reg, fetch.type(8)))
            args.append("{}b=+{}({}):{}".format(name, offset + 8, reg, fetch.type(8)))
    return args


def custom_args(fetch, probe, skb_reg, sk_reg, warnings):
    """Fetch args `c_NAME=...` for the manifest's (checked) custom fields; the members only
    pick offsets from the kernel's types.

    With the kernel's full types (BTF, pahole) a path they cannot resolve is the manifest's
    error. A table of measured offsets (EL7) knows only some members: a field it lacks is
    left out with a warning, as a missing function is, so that a bundled manifest still runs.
    """
    args = []
    for name, path in probe.fields.items():
        try:
            fetcharg = field_fetch(fetch, path, skb_reg, sk_reg)
        except LayoutError as err:
            if fetch.layout.source != "table":
                raise UsageError("field {} ({}) of {}: {}; use --backend stap or bpf for this "
                                 "manifest".format(name, path, probe.name, err))
            warnings.append("{}: field {} ({}) left out: {}; --backend stap reads it".format(
                probe.name, name, path, err))
            continue
        except LegacytraceError as err:
            raise UsageError("field {} ({}) of {}: {}; use --backend stap or bpf for this "
                             "manifest".format(name, path, probe.name, err))
        args.append("c_{}={}".format(name, fetcharg))
    return args


def field_fetch(fetch, path, skb_reg, sk_reg):
    """The fetch arg text (without a name) that reads the checked field `path`.

    kprobe_events adds only constants to an address: each hop of the path
    (legacytrace.kernel.structs.walk) but the last is a pointer, fetched as a nested
    dereference `+OFF(base)`; the last member is read at its offset from the last base.
    Raises LegacytraceError naming what the kernel's types cannot resolve.
    """
    root, hops = structs.walk(fetch.types, path)
    if root == "skb_shinfo(skb)":
        # skb_shinfo(skb) is skb->head + skb->end (64-bit builds keep `end` as an offset):
        # a kprobe fetch cannot add two fetched values.
        raise LegacytraceError("kprobe_events cannot compute skb_shinfo(skb), which is "
                               "skb->head + skb->end (it adds no two fetched values)")
    base = skb_reg if root == "skb" else \
        sk_reg or "+{}({})".format(fetch.offset("sk_buff", "sk"), skb_reg)
    for hop in hops[:-1]:
        base = "{}({})".format(_signed(hop.member.offset), base)
    at, kind = _value_type(fetch, hops[-1].member, path)
    return "{}({}):{}".format(_signed(at), base, kind)


def _signed(offset):
    return "{}{}".format("+" if offset >= 0 else "-", abs(offset))


def _value_type(fetch, member, where):
    """(byte offset in its struct, fetch type) of a path's last member: a number, a
    bitfield, or a char array's text.

    A bitfield is read from its aligned container of the base type's size with the
    baseline `b<width>@<bit offset>/<container bits>` type (3.10 has it); x86_64 numbers
    bits from the least significant one, as the compiler lays them out.
    """
    if _CHARS_CTYPE.match(member.ctype):
        return member.offset, "string"
    if (_STRUCT_CTYPE.match(member.ctype) and not member.ctype.endswith("*")) \
            or member.ctype.endswith("]") or member.size not in (1, 2, 4, 8):
        raise LegacytraceError("{} is {}: name one of its members".format(where, member.ctype))
    if member.bit_size:
        bits = member.size * 8
        start = member.bit_offset // bits * bits
        return start // 8, "b{}@{}/{}".format(member.bit_size, member.bit_offset - start, bits)
    return member.offset, fetch.type(member.size)


def extra_args(fetch, probe):
    """`reason=` (args: {reason: N}) and `caller=` (caller: true).

    x86_64 passes argument N in ARG_REGISTERS[N - 1]; an enum is 4 bytes. At a function's
    entry the return address is the word on top of the stack: `+0($stack)` (3.10 and later).
    """
    args = []
    for name, position in probe.args.items():
        if name == "reason":
            args.append("reason={}:{}".format(ARG_REGISTERS[position - 1], fetch.type(4)))
    if probe.caller:
        args.append("caller=+0($stack):{}".format(fetch.type(8)))
    return args


def peek_args(fetch, probe, warnings):
    """Fetch args for `peek: {arg: msg, bytes: N}`, or [] and a warning in `warnings` where
    kprobe_events cannot read them (before 5.3: no user-memory fetch)."""
    peek = probe.peek
    if not peek:
        return []
    size = peek["bytes"]
    if "user-memory" not in fetch.syntax:
        warnings.append("{}: ftrace cannot read user memory on kernel {} (kprobe_events needs "
                        "the +u fetch of 5.3): the event comes without the payload; use "
                        "--backend stap".format(probe.name, fetch.layout.release))
        return []
    try:
        return msg_iter_args(fetch, ARG_REGISTERS[probe.args["msg"] - 1], size)
    except LegacytraceError as err:
        warnings.append("{}: ftrace cannot find the user buffer of struct msghdr ({}): the event "
                        "comes without the payload; use --backend stap or bpf".format(
                            probe.name, err))
        return []


def msg_iter_args(fetch, reg, size):
    """Fetch args for the first `size` bytes the user passed in the `struct msghdr *` at `reg`.

    From 3.19 the data is behind msg->msg_iter (struct iov_iter); kprobe_events cannot
    branch on its type, so both views are fetched and the parser picks by the type:
      piK  ITER_IOVEC: the first segment, msg_iter.iov[0].iov_base (`__iov` from 6.4)
      puK  ITER_UBUF (6.0+, send(2) of one buffer on newer kernels): msg_iter.ubuf itself
      itN  msg_iter.iter_type; the data is `pu` when it equals N, ITER_UBUF's value on this
           kernel (6 on 6.1, 0 on 6.18: the enum was reordered)
    The bytes come as 64-bit words at byte offset K (+uK(...):x64): an array type would be
    one argument, but 6.1 refuses user memory in arrays ("String accepts only memory
    argument", measured in the lab), and scalar +u reads work from 5.3 on.
    The view of the other type reads a kernel address as user memory (or the reverse) and
    faults or reads junk. Only the first segment is read, from its start: a write that
    continues a partly sent segment (iov_offset > 0) shows that segment's first bytes.
    """
    types = fetch.types
    msg_iter = types.member("msghdr", "msg_iter").offset
    iov = _first_member(types, "iov_iter", ("__iov", "iov"))
    base = types.member("iovec", "iov_base").offset
    args = _user_words("pi", "+{}(+{}({}))".format(base, msg_iter + iov.offset, reg), size, fetch)
    ubuf = dict((name, value) for value, name in types.enum_values("iter_type").items()) \
        .get("ITER_UBUF")
    if ubuf is not None:
        kind = types.member("iov_iter", "iter_type")
        ubuf_at = msg_iter + types.member("iov_iter", "ubuf").offset
        args += _user_words("pu", "+{}({})".format(ubuf_at, reg), size, fetch)
        args.append("it{}=+{}({}):{}".format(ubuf, msg_iter + kind.offset, reg,
                                             fetch.type(kind.size)))
    return args


def _user_words(prefix, pointer, size, fetch):
    """`PREFIXK=+uK(POINTER):x64` for K = 0, 8, ... covering `size` bytes of user memory."""
    return ["{}{}=+u{}({}):{}".format(prefix, at, at, pointer, fetch.type(8))
            for at in range(0, size, 8)]


def _first_member(types, struct_name, names):
    """The first of `names` that `struct_name` has (a member renamed between kernels)."""
    for name in names[:-1]:
        try:
            return types.member(struct_name, name)
        except LegacytraceError:
            continue
    return types.member(struct_name, names[-1])


# -- event filters -------------------------------------------------------------------------

_L3_VIEWS = (eventfilter.IPView(4, 0, None, ()), eventfilter.IPView(6, 0, None, ()))
#: At the device layer the IP header follows a 14-byte Ethernet header, its type at 12.
_L2_VIEWS = (eventfilter.IPView(4, 14, 12, ()), eventfilter.IPView(6, 14, 12, ()))
#: A header without options or extensions ends where the transport header starts.
_IP_HEADER = {4: 20, 6: 40}
#: Where skb->data may point anywhere: each layer's view, the likeliest first.
_ANY_VIEWS = _L3_VIEWS + _L2_VIEWS + (eventfilter.IPView(4, -20, None, (1, 6, 17)),
                                      eventfilter.IPView(6, -40, None, (6, 17, 58)))


def ip_views(function):
    """Where the IP header may be at `function`'s entry (eventfilter.IPView, the likeliest
    first), by where skb->data points there (legacytrace.kernel.skbuff.DATA_AT)."""
    position = skbuff.DATA_AT.get(function)
    if position == "l3":
        return _L3_VIEWS
    if position == "l2":
        return _L2_VIEWS
    if position == "l4":
        family, protos = skbuff.TRANSPORT[function]
        return (eventfilter.IPView(family, -_IP_HEADER[family], None, protos),)
    return _ANY_VIEWS


def sock_view(fetch, function):
    """The eventfilter.SockView of the struct sock at `function` on this kernel's layout."""
    members = ("skc_family", "skc_rcv_saddr", "skc_daddr", "skc_num", "skc_dport",
               "skc_v6_rcv_saddr", "skc_v6_daddr")
    offsets = dict((member, fetch.offset("sock_common", member)
                    if fetch.layout.has("sock_common", member) else None) for member in members)
    return eventfilter.SockView(offsets, sock.protocol(function))


def filter_args(fetch, fields, skb_reg, sk_reg):
    """Fetch args for the eventfilter.Fields a filter reads, each a number the filter compares:
    `uN`, or the baseline bitfield type `bW@SHIFT/N` (3.10 has both)."""
    bases = {"data": skb_reg and _relative(fetch.offset("sk_buff", "data"), skb_reg),
             "sk": sk_reg}
    args = []
    for field in fields:
        kind = "u{}".format(field.size * 8) if field.bits is None else \
            "b{}@{}/{}".format(field.bits[0], field.bits[1], field.size * 8)
        args.append("{}={}:{}".format(field.name, _relative(field.at, bases[field.base]), kind))
    return args


def _event_filter(compiled, fetch, probe, skb_reg, sk_reg, warnings):
    """(fetch args, filter text or None) of a compiled filter; views the page of filter text
    had no room for are said in `warnings`."""
    if compiled.left_out:
        warnings.append("{}: the kernel filter leaves {} of the packet's possible layouts to "
                        "user space (the kernel takes at most {} characters of filter "
                        "text)".format(probe.name, len(compiled.left_out), eventfilter.MAX_TEXT))
    return filter_args(fetch, compiled.fields, skb_reg, sk_reg), compiled.text


def definition(probe, fetch, flow, warnings, process=None):
    """The Definition for one model.Probe (validated) on the kernel `fetch` describes;
    what it has to leave out is said in `warnings` ("FUNCTION: why"). `process` is the
    process filter's text (eventfilter.process_filter), joined to the flow filter's."""
    kind = "r" if probe.kind == "return" else "p"
    event = event_name(probe.name, probe.kind)
    skb_reg = ARG_REGISTERS[probe.skb_pos - 1] if probe.skb_pos else None
    sk_reg = ARG_REGISTERS[probe.sk_pos - 1] if probe.sk_pos else None
    filter_text, expr = None, None if flow is None else flow.expr
    if kind == "r":
        # a return probe sees the registers at return: only the return value is meaningful
        if probe.fields or probe.args or probe.peek or probe.caller:
            raise UsageError("return probe {}: custom fields, args, peek and caller need an "
                             "entry probe".format(probe.name))
        args = ["ret=$retval:{}".format(fetch.type(8))]
    elif skb_reg:
        position = skbuff.DATA_AT.get(probe.name)
        args = skb_args(fetch, skb_reg, position) + [socket_arg(fetch, skb_reg, sk_reg)]
        limit = eventfilter.MAX_TEXT - len(process or "") - len("() && ()")
        extra, filter_text = _event_filter(
            eventfilter.compile_ip(expr, ip_views(probe.name), eth="eth", limit=limit),
            fetch, probe, skb_reg, None, warnings)
        args.extend(extra)
    elif sk_reg:
        args = sock_args(fetch, sk_reg)
        extra, filter_text = _event_filter(
            eventfilter.compile_sock(expr, sock_view(fetch, probe.name)),
            fetch, probe, None, sk_reg, warnings)
        args.extend(extra)
    else:
        args = []
    if kind == "p":
        args.extend(custom_args(fetch, probe, skb_reg, sk_reg, warnings))
        args.extend(extra_args(fetch, probe))
        args.extend(peek_args(fetch, probe, warnings))
    too_long = [arg for arg in args if len(arg) > MAX_ARG_TEXT]
    if too_long or len(args) > MAX_ARGS:
        raise UsageError("probe {}: {} fetch args, or one longer than {} characters ({})".format(
            probe.name, len(args), MAX_ARG_TEXT, ", ".join(too_long)))
    return Definition(kind, event, probe.name, tuple(args),
                      eventfilter.joined(process, filter_text))


def definitions(probes, fetch, flow, warnings, process=None):
    """Definitions for all probes; the same function twice (entry and return) gets two names.
    `warnings` receives what the kernel cannot give ("FUNCTION: why", e.g. no peek);
    `process` is the process filter's text, or None."""
    result, seen = [], set()
    for probe in probes:
        made = definition(probe, fetch, flow, warnings, process)
        if made.event in seen:
            raise UsageError("function {} is listed twice in the manifest".format(probe.name))
        seen.add(made.event)
        result.append(made)
    return result
