"""Pure building of kprobe_events definitions and event filters for the ftrace backend.

A definition is one line a kernel appends to `kprobe_events`:

    p:legacytrace_lt123/ip_rcv ip_rcv skb=%di:x64 len=+112(%di):x32 ... dp0=+0(+200(%di)):x64 ...

Only the baseline syntax that 3.10 already accepts is used (`%REG`, nested `+OFF(...)`,
`u8..u64`, `string`, `$retval`); the `x8..x64` hex types replace `u*` where the kernel
has them (4.9+), so that every number prints in hex on every kernel (legacytrace.ftrace_parse).

Where the 5-tuple comes from (KERNEL_FACTS.md: the header offsets are __u16 offsets from
`head`, and a kprobe fetch cannot add two fetched values): each sk_buff probe fetches
`head`, `data` and `network_header`, and a window of u64 words of packet bytes at fixed
offsets from `skb->data` (`dp8` is data+8, `dm40` data-40). User space finds the IP
header in the window at `head + network_header - data` and reads the rest from it. The
window is placed by where `skb->data` points when the function is entered (POSITION):

    l3  the IP header (ip_rcv, ip_output, ...):              data+0  .. data+48
    l2  the Ethernet header (dev_queue_xmit):                data+8  .. data+64 (IP at +14)
    l4  the transport header (tcp_v4_rcv, udp_rcv, ...):     data-40 .. data+8
    unknown (kfree_skb, netif_receive_skb, anything else):   data-40 .. data+64

48 bytes cover an IPv6 header and the first 8 bytes of TCP, UDP or ICMP after it.
Socket-level functions (tcp_sendmsg(sk, ...), tcp_connect(sk)) read the tuple from
`struct sock_common` instead.

Event filters: at `l3` functions the IP header is at data+0 whatever the device, so the
flow filter is compiled into the event's filter there, on dedicated `f_*` fetch args,
written so that an event that matches the flow is never rejected (an IPv4 header with
options, an IPv6 extension header or a CIDR that is not /32 or /128 is left to user
space). At the other positions the IP header's place is not fixed (device, options) and
filtering is done in user space only. Filters on sock_common fields are exact.
"""
import collections
import re
import struct

from legacytrace.errors import UsageError

#: x86_64 registers of arguments 1..6 (3.10 needs the `%`, rejects `%rdi`).
ARG_REGISTERS = ("%di", "%si", "%dx", "%cx", "%r8", "%r9")
MAX_ARGS = 128           # kprobe_events: arguments per probe
MAX_ARG_TEXT = 63        # kprobe_events: characters per argument
MAX_NAME = 63            # event and group names (MAX_EVENT_NAME_LEN 64 with the NUL)

#: Where skb->data points when the function is entered, by kernel function name.
POSITION = {
    # the IP header: after eth_type_trans on receive, after the IP header is pushed on transmit
    "ip_rcv": "l3", "ip_rcv_finish": "l3", "ip_local_deliver": "l3",
    "ip_local_deliver_finish": "l3", "ip_forward": "l3", "ip_forward_finish": "l3",
    "ip_local_out": "l3", "ip_local_out_sk": "l3", "__ip_local_out": "l3", "ip_output": "l3",
    "ip_finish_output": "l3", "ip_finish_output2": "l3", "ip_mc_output": "l3",
    "ipv6_rcv": "l3", "ip6_rcv_finish": "l3", "ip6_input": "l3", "ip6_forward": "l3",
    "ip6_output": "l3", "ip6_finish_output": "l3", "ip6_finish_output2": "l3",
    # the link-layer header (Ethernet, loopback included)
    "dev_queue_xmit": "l2", "__dev_queue_xmit": "l2", "dev_hard_start_xmit": "l2",
    # the transport header: ip_local_deliver_finish pulled the IP header
    "tcp_v4_rcv": "l4", "udp_rcv": "l4", "icmp_rcv": "l4", "ip_protocol_deliver_rcu": "l4",
    "tcp_v6_rcv": "l4", "udpv6_rcv": "l4", "icmpv6_rcv": "l4",
}
#: Byte range [start, end) of the fetched window around skb->data, per position.
WINDOWS = {"l3": (0, 48), "l2": (8, 64), "l4": (-40, 8), None: (-40, 64)}
#: Positions where the IP header's offset from skb->data is the same for every packet.
FIXED_L3 = {"l3": 0}

_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\Z")
_RUN_ID = re.compile(r"^[a-z0-9_]+\Z")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*\Z")
_FIELD_PATH = re.compile(r"^skb\.([a-z_][a-z0-9_]*)\Z")

#: Transport protocols whose header starts with the two ports.
PORT_PROTOCOLS = (6, 17, 132, 136)
#: Protocols that end the IPv6 header chain; any other next header may be an extension.
FINAL_PROTOCOLS = (1, 6, 17, 58, 132, 136)


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
    """The kprobe group and tracefs instance name of a run: `legacytrace_<run_id>`."""
    if not run_id or not _RUN_ID.match(run_id) or len(run_id) > MAX_NAME - 12:
        raise UsageError("run id {!r} must be lower-case letters, digits and _ (e.g. lt12345)"
                         .format(run_id))
    return "legacytrace_" + run_id


def event_name(symbol, kind):
    """A valid event name for a probe on `symbol` ('.' of `ip_rcv.cold` becomes '_')."""
    if not _SYMBOL.match(symbol or "") or len(symbol) > MAX_NAME - 4:
        raise UsageError("function name {!r} is not a kernel symbol: use letters, digits, _ "
                         "and . only (at most {} characters)".format(symbol, MAX_NAME - 4))
    name = symbol.replace(".", "_")
    return name + "_ret" if kind == "return" else name


class Fetch(object):
    """Fetch arguments for one kernel: the type names it accepts and the struct offsets.

    `layout` is a legacytrace.offsets.Layout; `hex_types` says whether the kernel has the
    x8..x64 types (4.9+): with them every value prints as `0x..`, without them `u*`
    print hex anyway (KERNEL_FACTS.md), so the parser reads hex either way.
    """

    def __init__(self, layout, hex_types):
        self.layout = layout
        self.hex_types = hex_types

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


def custom_args(fetch, probe, reg):
    """Fetch args for the manifest's custom fields (`skb.MEMBER` of the layout's members)."""
    args = []
    for name, path in probe.fields.items():
        match = _FIELD_PATH.match(path)
        if not _FIELD_NAME.match(name) or match is None or reg is None \
                or not fetch.layout.has("sk_buff", match.group(1)):
            raise UsageError(
                "field {} ({}) of {}: the ftrace backend reads only skb.MEMBER for members of its "
                "struct layout ({}); use --backend stap or bpf for this manifest".format(
                    name, path, probe.name, ", ".join(sorted(fetch.layout.structs["sk_buff"]))))
        args.append("c_{}={}".format(name, fetch.member("sk_buff", match.group(1), reg)))
    return args


# -- event filters -------------------------------------------------------------------------

def _le(packed):
    """A big-endian byte string as the number a little-endian fetch of it prints."""
    return int.from_bytes(packed, "little")


def _address(net, name, family):
    """(field name, offset in the address, size, filter term) for one address of a network,
    or [] when only user space can check it (a CIDR that is not a single address)."""
    if net is None or net.prefixlen != net.max_prefixlen:
        return []
    packed = net.network_address.packed
    if family == 4:
        return [(name, 0, 4, "{} == {}".format(name, _le(packed)))]
    low, high = struct.unpack("<QQ", packed)
    return [(name + "a", 0, 8, "{}a == {}".format(name, low)),
            (name + "b", 8, 8, "{}b == {}".format(name, high))]


def l3_filter(fetch, reg, flow, l3_at):
    """(extra fetch args, filter text or None) for a flow at a function whose IP header is
    at skb->data + l3_at. Never rejects an event that `flow.matches()` would keep."""
    if flow is None or flow.is_empty():
        return [], None
    data = _relative(fetch.offset("sk_buff", "data"), reg)
    fields = collections.OrderedDict()

    def field(name, offset, size):
        fields[name] = "{}={}:u{}".format(name, _relative(l3_at + offset, data), size * 8)
        return name

    version = field("f_ver", 0, 1)
    alternatives = []
    for family in ([flow.family] if flow.family else [4, 6]):
        terms = []
        if family == 4:
            terms.append("{v} >= 64 && {v} <= 79".format(v=version))
            proto = field("f4_proto", 9, 1)
            if flow.proto is not None:
                terms.append("{} == {}".format(proto, flow.proto))
            addresses = (("f4_saddr", 12, flow.saddr), ("f4_daddr", 16, flow.daddr))
            # ports follow a 20-byte header (version/IHL byte 0x45); options: user space
            ports_valid = "{} != 69".format(version)
            port_at = 20
        else:
            terms.append("{v} >= 96 && {v} <= 111".format(v=version))
            proto = field("f6_proto", 6, 1)
            if flow.proto is not None:
                # an extension header may come first: only a different final protocol rejects
                terms.append("({} == {} || ({}))".format(proto, flow.proto, " && ".join(
                    "{} != {}".format(proto, p) for p in FINAL_PROTOCOLS)))
            addresses = (("f6_saddr", 8, flow.saddr), ("f6_daddr", 24, flow.daddr))
            ports_valid = " && ".join("{} != {}".format(proto, p) for p in PORT_PROTOCOLS)
            port_at = 40
        for name, offset, net in addresses:
            for field_name, extra, size, term in _address(net, name, family):
                field(field_name, offset + extra, size)
                terms.append(term)
        for name, extra, port in (("sport", 0, flow.sport), ("dport", 2, flow.dport)):
            if port is not None:
                port_field = field("f{}_{}".format(family, name), port_at + extra, 2)
                terms.append("({} || {} == {})".format(ports_valid, port_field,
                                                       _le(struct.pack(">H", port))))
        alternatives.append(" && ".join(terms))
    text = alternatives[0] if len(alternatives) == 1 else " || ".join(
        "({})".format(alt) for alt in alternatives)
    return list(fields.values()), text


def sock_filter(fetch, flow):
    """Filter text on the sock_common args of sock_args(), or None: exact, no extra args."""
    if flow is None or flow.is_empty():
        return None
    terms = []
    if flow.family == 4:
        terms.append("skc_family == 2")
    elif flow.family == 6:
        terms.append("skc_family == 10")
    for name, net in (("skc_saddr", flow.saddr), ("skc_daddr", flow.daddr)):
        if net is None:
            continue
        if net.version == 6:
            if not fetch.layout.has("sock_common", "skc_v6_daddr"):
                continue             # no IPv6 addresses in this layout: user space decides
            name += "6"
        terms.extend(term for _, _, _, term in _address(net, name, net.version))
    if flow.sport is not None:
        terms.append("skc_sport == {}".format(flow.sport))           # skc_num: host order
    if flow.dport is not None:
        terms.append("skc_dport == {}".format(_le(struct.pack(">H", flow.dport))))
    return " && ".join(terms) or None


def definition(probe, fetch, flow):
    """The Definition for one model.Probe (validated) on the kernel `fetch` describes."""
    kind = "r" if probe.kind == "return" else "p"
    event = event_name(probe.name, probe.kind)
    for what, pos in (("skb_pos", probe.skb_pos), ("sk_pos", probe.sk_pos)):
        if pos is not None and pos not in range(1, len(ARG_REGISTERS) + 1):
            raise UsageError("{} of {} is {!r}: the ftrace backend reads arguments 1 to {}".format(
                what, probe.name, pos, len(ARG_REGISTERS)))
    skb_reg = ARG_REGISTERS[probe.skb_pos - 1] if probe.skb_pos else None
    sk_reg = ARG_REGISTERS[probe.sk_pos - 1] if probe.sk_pos else None
    filter_text = None
    if kind == "r":
        # a return probe sees the registers at return: only the return value is meaningful
        if probe.fields:
            raise UsageError("return probe {}: custom fields need an entry probe".format(probe.name))
        args = ["ret=$retval:{}".format(fetch.type(8))]
    elif skb_reg:
        position = POSITION.get(probe.name)
        args = skb_args(fetch, skb_reg, position)
        if position in FIXED_L3:
            extra, filter_text = l3_filter(fetch, skb_reg, flow, FIXED_L3[position])
            args.extend(extra)
    elif sk_reg:
        args = sock_args(fetch, sk_reg)
        filter_text = sock_filter(fetch, flow)
    else:
        args = []
    if kind == "p":
        args.extend(custom_args(fetch, probe, skb_reg))
    too_long = [arg for arg in args if len(arg) > MAX_ARG_TEXT]
    if too_long or len(args) > MAX_ARGS:
        raise UsageError("probe {}: {} fetch args, or one longer than {} characters ({})".format(
            probe.name, len(args), MAX_ARG_TEXT, ", ".join(too_long)))
    return Definition(kind, event, probe.name, tuple(args), filter_text)


def definitions(probes, fetch, flow):
    """Definitions for all probes; the same function twice (entry and return) gets two names."""
    result, seen = [], set()
    for probe in probes:
        made = definition(probe, fetch, flow)
        if made.event in seen:
            raise UsageError("function {} is listed twice in the manifest".format(probe.name))
        seen.add(made.event)
        result.append(made)
    return result
