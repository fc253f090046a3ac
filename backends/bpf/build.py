"""Building the bpftrace program (pure): one probe plan per manifest function, custom
fields and peeks typed from the target's BTF, the flow filter as a predicate
(backends/bpf/predicate.py), rendered into
templates/bpftrace.bt.j2.
"""
import collections
import platform
import re

from legacytrace.backends import checks
from legacytrace.backends.base import Program, template
from legacytrace.backends.bpf import predicate
from legacytrace.backends.bpf.parse import TAG
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.kernel import btf, context, structs, tracepoints
from legacytrace.model import BUFFER_KB



class BpfPart(collections.namedtuple("BpfPart", "functions env")):
    """The probed functions (tracepoint names in tracepoint mode) and the environment
    bpftrace needs for this program (bpftrace_env)."""

    __slots__ = ()


class Extra(collections.namedtuple("Extra", "name expr conversion since")):
    """One value a tracepoint adds to the line (FlowEvent.fields[name]).

    `expr` is bpftrace text of our own (never user input), `conversion` its printf
    conversion, `since` the first kernel version that has it (None: all).
    """

    __slots__ = ()
# The tracepoint's `location` is the caller of kfree_skb/consume_skb: named "caller" as
# a kprobe's `caller: true` is (the shared field contract).
#: What each value a tracepoint adds (legacytrace.kernel.tracepoints: `fields`) is in bpftrace.
TRACEPOINT_EXTRAS = {
    "caller": Extra("caller", "ksym(args->location)", "%s", None),
    "reason": Extra("reason", "args->reason", "%d", (5, 17)),
}


class ProbePlan(collections.namedtuple(
        "ProbePlan", "func description source attach skb sk peek extras_format extras_args")):
    """One bpftrace probe block as the template renders it; `peek` is None or a PeekPlan."""

    __slots__ = ()


def _extras(extras):
    """(printf text, argument list) for a probe's extra values; "-" when it has none."""
    if not extras:
        return "-", []
    text = ",".join("{}={}".format(extra.name, extra.conversion) for extra in extras)
    return text, [extra.expr for extra in extras]
#: Extra names the backend prints itself (and payload.fields makes); no custom field takes one.
RESERVED_FIELDS = ("reason", "caller", "peek", "request")
_CHAR_ARRAY_RE = re.compile(r"^(?:const |volatile )*(?:unsigned |signed )?char\[(\d+)\]\Z")
_QUALIFIERS_RE = re.compile(r"^(?:const |volatile )+")
#: What a custom field may print: a char array of at most this many bytes (a device name
#: has 16, IFNAMSIZ), as %rx so that no byte of it can break the line.
CHAR_ARRAY_MAX = 64


class Types(object):
    """What this backend asks of a kernel's BTF (a legacytrace.kernel.btf.BTF): members with their
    C types, whether an integer type is signed, enum values. Replaceable in tests by
    recorded answers of the same shape."""

    def __init__(self, blob):
        self.blob = blob

    def member(self, struct_name, path):
        """The btf.Member of `struct struct_name`'s member `path` (dotted through embedded
        structs); btf.BTFError naming what is missing."""
        return self.blob.member(struct_name, path)

    def signed(self, ctype):
        """True when the integer C type `ctype` (a typedef name, "int", "u8"...) is signed."""
        name = _QUALIFIERS_RE.sub("", ctype)
        typedefs = self.blob.ids_named(name, (btf.KIND_TYPEDEF,))
        if typedefs:
            name = self.blob.type_name(self.blob.resolve(typedefs[0]))
        return not (name.startswith(("unsigned", "enum ", "_Bool", "bool", "struct ", "union "))
                    or " unsigned" in name)

    def enum(self, name):
        """{enumerator: value} of `enum name` ({} when the kernel has none)."""
        return dict((label, value) for value, label in self.blob.enum_values(name).items())


def load_types(host):
    """The Types of `host`'s kernel from its BTF file; btf.BTFError when there is none here.

    Facts recorded on another host name that host's /sys/kernel/btf/vmlinux: here that
    path holds this machine's kernel, whose layouts and enum values may differ.
    """
    if not host.btf:
        raise btf.BTFError("the target kernel has no BTF")
    if host.btf == btf.VMLINUX and host.release != platform.release():
        raise btf.BTFError("{} here is the BTF of kernel {}, not of the target's {}".format(
            host.btf, platform.release(), host.release))
    return Types(btf.load(host.btf))


def check_field_name(probe_name, field):
    """A custom field name that is not one of the extras this backend prints itself: the
    extras column could not tell them apart."""
    if field in RESERVED_FIELDS:
        raise UsageError("function {}: custom field {!r} has the name of a field the backend "
                         "fills itself ({}): rename it".format(
                             probe_name, field, ", ".join(RESERVED_FIELDS)))
    return field


def field_extra(probe_name, field, path, roots, types):
    """The Extra that prints custom field `field` = `path` (skb.M.M, sk.M, skb_shinfo(skb).M).

    `roots` maps a path root to the bpftrace expression of its struct pointer in this
    probe. The path is walked through the target's BTF (legacytrace.kernel.structs): a
    pointer to a struct is followed with ->, an embedded struct with ., and the last
    member must be an integer, enum, pointer or char array, whose type gives the printf
    conversion.
    """
    field = check_field_name(probe_name, field)
    try:
        root, hops = structs.walk(types, path)
    except (btf.BTFError, structs.FieldPathError) as err:
        raise UsageError("function {}: field {} ({}): {}: name a member the kernel's BTF "
                         "has (pahole -C {} /sys/kernel/btf/vmlinux)".format(
                             probe_name, field, path, err, structs.split(path)[1]))
    expr = roots[root]
    for hop in hops:
        expr = "{}->{}".format(expr, hop.path)
    member = hops[-1].member
    return _typed_extra(probe_name, field, path, expr, member.ctype, member.size, types)


def _typed_extra(probe_name, field, path, expr, ctype, size, types):
    """An Extra printing `expr` of C type `ctype` (`size` bytes) as FlowEvent.fields wants it."""
    chars = _CHAR_ARRAY_RE.match(ctype)
    if chars and int(chars.group(1)) <= CHAR_ARRAY_MAX:
        return Extra(field, "buf({}, {})".format(expr, int(chars.group(1))), "%rx", None)
    if ctype.endswith("*"):
        return Extra(field, "(uint64){}".format(expr), "%llu", None)
    bare = _QUALIFIERS_RE.sub("", ctype)
    if "[" in bare or bare.startswith(("struct ", "union ")) or size not in (1, 2, 4, 8):
        raise UsageError("function {}: field {} ({}) is a {}, not a number or a name: give "
                         "one of its members".format(probe_name, field, path, ctype))
    if types.signed(ctype):
        return Extra(field, "(int64){}".format(expr), "%lld", None)
    # bpftrace 0.17 sign-extends some unsigned loads: mask to the member's width.
    mask = "" if size == 8 else " & {:#x}".format((1 << 8 * size) - 1)
    return Extra(field, "(uint64){}{}".format(expr, mask), "%llu", None)


def field_extras(probe, roots, types, warnings):
    """Extras for `probe`'s custom fields; none (and one warning) when BTF is unreadable."""
    if not probe.fields:
        return []
    if isinstance(types, Exception):
        warnings.append("{}: custom fields ({}) skipped: the bpf backend types them from the "
                        "target's BTF, which could not be read ({})".format(
                            probe.name, ", ".join(probe.fields), types))
        return []
    return [field_extra(probe.name, field, path, roots, types)
            for field, path in probe.fields.items()]


class PeekPlan(collections.namedtuple(
        "PeekPlan", "msg type_member type_mask ubuf iovec iov_member bytes")):
    """Where the first user buffer of a struct msghdr * is, on the target kernel.

    msg         -- the argument (argN) holding the struct msghdr *
    type_member -- iov_iter's type member: iter_type (u8, 5.14+) or type (flags | direction)
    type_mask   -- what of it names the iterator type
    ubuf        -- ITER_UBUF's value (6.0+: msg_iter.ubuf is the user pointer), or None
    iovec       -- ITER_IOVEC's value (msg_iter.__iov (6.4+) / .iov [0].iov_base)
    iov_member  -- __iov or iov
    bytes       -- at most this many bytes are read
    """

    __slots__ = ()
#: The printf argument of a peek: the user bytes the template located, as \xNN text.
_PEEK = Extra("peek", "buf(uptr($lt_ubase), $lt_plen)", "%rx", None)
#: bpftrace's buf() reads at most BPFTRACE_STRLEN bytes (0.17's default: 64).
STRLEN_DEFAULT = 64
#: x86_64's page, the unit of a perf ring.
PAGE_KB = 4


def peek_plan(probe, types):
    """The PeekPlan for `probe`'s peek on the kernel whose BTF `types` reads.

    iov_iter, read in each kernel's include/linux/uio.h and BTF:
      6.4+ (6.18 BTF): u8 iter_type; ITER_UBUF's pointer is ubuf; iovecs are __iov;
      6.0..6.3 (6.1.0-56 BTF): u8 iter_type; ubuf; iov (ITER_UBUF new in 6.0);
      5.14..5.19: u8 iter_type; iov (no ITER_UBUF);
      up to 5.13 (4.20..5.13): unsigned int type = ITER_* flag | READ/WRITE (bit 0);
    the newest layout is tried first. EL7's 3.10 has no iov_iter in msghdr and no BTF:
    the bpf backend does not run there.
    """
    peek = probe.peek
    type_member, type_mask = _first_member(types, ("iter_type", "0xff"), ("type", "0xfffffffe"))
    iov_member = _first_member(types, ("__iov", None), ("iov", None))[0]
    values = types.enum("iter_type")
    ubuf = values.get("ITER_UBUF") if _has(types, "ubuf") else None
    if "ITER_IOVEC" not in values:
        raise btf.BTFError("the kernel's BTF has no enum iter_type ITER_IOVEC")
    return PeekPlan("arg{}".format(probe.args[peek["arg"]] - 1), type_member, type_mask, ubuf,
                    values["ITER_IOVEC"], iov_member, peek["bytes"])


def _has(types, member):
    try:
        types.member("iov_iter", member)
    except btf.BTFError:
        return False
    return True


def _first_member(types, *choices):
    """The first (member, detail) of `choices` that struct iov_iter has."""
    for member, detail in choices:
        if _has(types, member):
            return member, detail
    raise btf.BTFError("struct iov_iter has none of {}".format(
        ", ".join(member for member, _ in choices)))


def _peek(probe, types, warnings):
    """(PeekPlan or None, [the peek Extra]) for `probe`; a warning when it cannot peek."""
    if not probe.peek:
        return None, []
    try:
        if isinstance(types, Exception):
            raise types
        return peek_plan(probe, types), [_PEEK]
    except btf.BTFError as err:
        warnings.append("{}: events without the payload (peek): the target's BTF does not say "
                        "where the user buffer is ({}); the stap backend can peek there"
                        .format(probe.name, err))
        return None, []


def _types_for(probes, host, load):
    """The target's Types when a probe needs them, else None; the error when unreadable."""
    if not any(probe.fields or probe.peek for probe in probes):
        return None
    try:
        return load(host)
    except (btf.BTFError, LegacytraceError) as err:
        return err


def kprobe_extras(probe):
    """Extras of the manifest's args and caller, for a kprobe at the function's entry."""
    extras = []
    reason = probe.args.get("reason")
    if reason is not None:
        # enum skb_drop_reason: a 32-bit value in a 64-bit register.
        extras.append(Extra("reason", "(uint64)arg{} & 0xffffffff".format(reason - 1),
                            "%llu", None))
    if probe.caller:
        # x86_64: at a function's first instruction the stack pointer holds the return address.
        extras.append(Extra("caller", 'ksym(*(uint64 *)reg("sp"))', "%s", None))
    return extras


def kprobe_plans(probes, types=None):
    """One kprobe per probe; returns (plans, warnings). `types`: the target's Types (needed
    by custom fields and peeks), None or the error that prevented reading them."""
    plans, warnings = [], []
    for probe in probes:
        name, skb_pos, sk_pos = probe.name, probe.skb_pos, probe.sk_pos
        if probe.kind != "entry":
            warnings.append("{}: skipped, only entry probes are supported".format(name))
            continue
        skb = "arg{}".format(skb_pos - 1) if skb_pos else None
        sk = "arg{}".format(sk_pos - 1) if sk_pos else None
        roots = {"skb": skb and "$skb", "sk": "$sk" if sk else (skb and "$skb->sk"),
                 "skb_shinfo(skb)": skb and _SHINFO}
        peek, peek_extras = _peek(probe, types, warnings)
        extras = (kprobe_extras(probe) + field_extras(probe, roots, types, warnings)
                  + peek_extras)
        extras_format, extras_args = _extras(extras)
        plans.append(ProbePlan(
            func=name, description=_comment(probe.description), source="kprobe",
            # bpftrace 0.17 accepts a quoted symbol, which a GCC clone's dots need.
            attach='kprobe:"{}"'.format(name), skb=skb or "0", sk=sk, peek=peek,
            extras_format=extras_format, extras_args=extras_args))
    return plans, warnings
#: skb_shinfo(skb): the struct skb_shared_info at skb->end, which 64-bit kernels keep
#: as an offset from head (NET_SKBUFF_DATA_USES_OFFSET, include/linux/skbuff.h).
_SHINFO = "((struct skb_shared_info *)($skb->head + $skb->end))"


def tracepoint_plans(probes, host, types=None):
    """The tracepoint of each probe's function; returns (plans, warnings) naming the skipped."""
    chosen, warnings = tracepoints.select(probes, host)
    plans = []
    version = host.kernel.version
    for probe, tracepoint in chosen:
        name = probe.name
        if probe.peek:
            warnings.append("{}: events without the payload (peek): a tracepoint has no "
                            "struct msghdr * and this kernel has no kprobes; the stap or "
                            "ftrace backend can peek on a kernel with kprobes".format(name))
        extras = [TRACEPOINT_EXTRAS[field] for field in tracepoint.fields]
        extras = [extra for extra in extras if extra.since is None or version >= extra.since]
        roots = {"skb": "$skb", "sk": "$skb->sk", "skb_shinfo(skb)": _SHINFO}
        extras += field_extras(probe, roots, types, warnings)
        extras_format, extras_args = _extras(extras)
        plans.append(ProbePlan(
            func=tracepoint.name, source="tracepoint",
            description=_comment("in {}{}".format(name, probe.description and ": "
                                                  + probe.description)),
            attach="tracepoint:" + tracepoint.name, skb="args->skbaddr", sk=None, peek=None,
            extras_format=extras_format, extras_args=extras_args))
    return plans, warnings


def bpftrace_env(plans, btf=None, buffer_kb=BUFFER_KB):
    """Environment bpftrace needs for `plans`: a longer BPFTRACE_STRLEN for a peek past
    its default (buf() reads at most that many bytes); BPFTRACE_BTF naming the kernel's
    BTF file `btf`: bpftrace 0.17 looks the kernel's BTF up by its object id, which kernels
    before 5.11 do not give it (commit 5329722057d4; on the 5.10 lab kernel it said `btf: no`
    and knew no struct sk_buff), while the file is there from 5.2; and the perf ring's
    pages per CPU for `buffer_kb` (perf_rb_pages)."""
    env = {"BPFTRACE_PERF_RB_PAGES": str(perf_rb_pages(buffer_kb))}
    if btf:
        env["BPFTRACE_BTF"] = btf
    longest = max([plan.peek.bytes for plan in plans if plan.peek] + [STRLEN_DEFAULT])
    if longest != STRLEN_DEFAULT:
        env["BPFTRACE_STRLEN"] = str(longest)
    return env


def perf_rb_pages(buffer_kb):
    """bpftrace's perf ring per CPU in 4 KiB pages, a power of two as the kernel requires
    of a perf ring (perf_mmap), rounded up from `buffer_kb`."""
    pages = 1
    while pages * PAGE_KB < buffer_kb:
        pages *= 2
    return pages


def _comment(text):
    """A description made safe for a // comment: one line, printable ASCII."""
    return re.sub(r"[^ -~]", " ", text or "")[:120]


def render(plans, condition, run_id, mode, notes):
    """The bpftrace script text for validated plans and the filters' condition."""
    return template("legacytrace.backends.bpf", "templates/bpftrace.bt.j2").render(
        tag=TAG, probes=plans, filter=condition, run_id=run_id, mode=mode, notes=notes,
        thread_size=context.THREAD_SIZE)


def program(request, types_for):
    """The Program for a checked `request`: kprobe mode where the target has kprobes."""
    run_id = request.run_id
    host = request.host
    mode = checks.dynamic_mode(host) or checks.KPROBE
    types = _types_for(request.probes, host, types_for)
    if mode == checks.KPROBE:
        plans, warnings = kprobe_plans(request.probes, types)
    else:
        plans, warnings = tracepoint_plans(request.probes, host, types)
        if not plans:
            raise tracepoints.untraceable("bpf", request)
    if not plans:
        raise LegacytraceError("the bpf backend can trace none of the {} functions on kernel "
                               "{} ({}): use another manifest or backend".format(
                                   len(request.probes), host.release,
                                   "; ".join(warnings) or "the manifest is empty"))
    text = render(plans, predicate.combined(request.flow and request.flow.expr,
                                            request.processes), run_id, mode, warnings)
    return Program("bpf", text, run_id=run_id, mode=mode, warnings=warnings,
                   part=BpfPart([plan.func for plan in plans],
                                bpftrace_env(plans, host.btf, request.buffer_kb)),
                   buffer_kb=request.buffer_kb)
