"""Function discovery: which kernel functions take a `struct sk_buff *`, and where.

A manifest needs the 1-based position of each function's `struct sk_buff *` (and
`struct sock *`) argument, and those positions move between kernels. The kernel's
BTF (/sys/kernel/btf/vmlinux, 5.2+ and many distribution 4.18+ kernels) records every
function's prototype, so on such a kernel the positions need not be read from source:

    legacytrace list-functions --skb '^ip6?_'      -> skb_functions()
    legacytrace manifest --from-btf '^tcp_v4_'     -> manifest_from_btf()

Only functions that can also be probed (available_filter_functions or kallsyms, see
`legacytrace.kernel.symbols`) are listed: BTF knows static functions the compiler inlined
everywhere only when they kept an address, and a probe needs a symbol.
Kernels without BTF (EL7 3.10) get a message saying so; their positions are in the
bundled manifests, read from the sources.
"""
import collections
import re

import yaml

from legacytrace.kernel import btf as btfmod
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.manifest import parse
from legacytrace.validate import MAX_ARG_POS, SYMBOL_RE

#: A parameter type that is a pointer to the struct (qualifiers as BTF spells them).
#: `struct sk_buff **` (e.g. __netif_receive_skb_core from 5.8) does not match: a probe
#: reading it as an sk_buff would read the wrong memory.
_SKB_TYPE = re.compile(r"^(const |volatile )*struct sk_buff \*$")
_SOCK_TYPE = re.compile(r"^(const |volatile )*struct sock \*$")


class SkbFunction(collections.namedtuple("SkbFunction", "name skb_pos sk_pos params")):
    """A function that takes a `struct sk_buff *`.

    skb_pos -- 1-based position of the first `struct sk_buff *` parameter
    sk_pos  -- 1-based position of the first `struct sock *` parameter, or None
    params  -- [(name, C type)] as BTF gives them, for display
    """

    __slots__ = ()

    @property
    def prototype(self):
        """`ip_rcv(struct sk_buff *skb, struct net_device *dev, ...)` for listings."""
        return "{}({})".format(self.name, ", ".join(
            ctype + ("" if ctype.endswith("*") else " ") + pname if pname else ctype
            for pname, ctype in self.params))


def compile_regex(regex):
    """`regex` (text or None) compiled; UsageError naming the problem when invalid."""
    try:
        return re.compile(regex or "")
    except re.error as exc:
        raise UsageError("invalid REGEX {!r}: {}".format(regex, exc))


def _position(params, pattern):
    for position, (_name, ctype) in enumerate(params, 1):
        if pattern.match(ctype):
            return position
    return None


def skb_functions(btf, regex=None, probeable=None):
    """SkbFunctions of `btf` (a `legacytrace.kernel.btf.BTF`) whose name matches `regex`, by name.

    `probeable` is a container of probe-able names (`symbols.KernelFunctions`, a set)
    or None when unknown (generating for another host: every BTF function counts).
    Functions whose sk_buff comes after the sixth argument are left out: on x86_64
    only the first six arguments are in registers, where kprobes read them.
    """
    pattern = compile_regex(regex)
    found = {}
    for name, params in btf.functions(pattern.search):
        if name in found or not SYMBOL_RE.match(name):
            continue
        if probeable is not None and name not in probeable:
            continue
        skb_pos = _position(params, _SKB_TYPE)
        if skb_pos is None or skb_pos > MAX_ARG_POS:
            continue
        sk_pos = _position(params, _SOCK_TYPE)
        found[name] = SkbFunction(name, skb_pos, sk_pos if sk_pos and sk_pos <= MAX_ARG_POS
                                  else None, params)
    return [found[name] for name in sorted(found)]


def load_btf(path=btfmod.VMLINUX):
    """The BTF at `path`; a LegacytraceError that says what to do when there is none."""
    try:
        return btfmod.load(path)
    except btfmod.BTFError as exc:
        raise LegacytraceError(
            "{}: function discovery needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF, 5.2+ and "
            "some distribution 4.18+ kernels); on this kernel use a bundled manifest or write "
            "one with positions from the kernel sources".format(exc))


def manifest_from_btf(regex, btf, probeable=None, release=None):
    """YAML text of a manifest probing every function that `skb_functions` finds.

    `release` (text) goes into the header comment with the regex, so the file says
    which kernel its positions are true for. The text is checked by the manifest
    loader before it is returned. LegacytraceError when nothing matches.
    """
    functions = skb_functions(btf, regex, probeable)
    if not functions:
        raise LegacytraceError(
            "no probe-able function taking a struct sk_buff * matches {!r}: try a wider "
            "REGEX (see `legacytrace list-functions --skb`)".format(regex or ""))
    entries = []
    for function in functions:
        entry = collections.OrderedDict([("name", function.name),
                                         ("skb_pos", function.skb_pos)])
        if function.sk_pos is not None:
            entry["sk_pos"] = function.sk_pos
        entries.append(entry)
    header = ("# Generated by `legacytrace manifest --from-btf {!r}` from the BTF of kernel {}.\n"
              "# Argument positions are true for that kernel: other kernels may differ (see\n"
              "# the variants of the bundled manifests).\n").format(
                  regex or "", release or "(unknown)")
    body = yaml.safe_dump({"name": "from-btf", "functions": [dict(e) for e in entries]},
                          default_flow_style=None, sort_keys=False, width=100)
    text = header + body
    parse(text, "<generated manifest>")
    return text
