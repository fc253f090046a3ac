"""Manifests: which kernel functions to probe and where their sk_buff is.

ipftrace's format loads unchanged::

    functions:
      - name: ip_rcv
        skb_pos: 1          # 1-based position of the struct sk_buff * argument
      - name: kfree_skb
        skb_pos: 1
        egress: true        # the packet's journey ends here

Extensions: `sk_pos` (position of a struct sock *), `description`, `fields`
(custom fields, name -> path such as `skb.len`), and `variants` for functions that
were renamed or whose arguments moved between kernels; the first variant that
fits the kernel version and exists on the host is used::

      - description: hand an IPv4 packet to the output path
        variants:
          - {name: ip_local_out, skb_pos: 3, sk_pos: 2, kernel: ">=4.4"}
          - {name: ip_local_out_sk, skb_pos: 2, sk_pos: 1, kernel: "el7"}
          - {name: ip_local_out, skb_pos: 1, kernel: "<4.4"}

Three more keys ask the backends for facts beyond the packet: `args` (per variant)
names other arguments by position, from a fixed vocabulary (`ARG_TYPES`) so that
the backend knows their C type; `peek: {arg: msg, bytes: N}` asks for the first N
bytes of the user data that a `struct msghdr *` argument points to; `caller: true`
asks for the return address (where a drop happened)::

      - peek: {arg: msg, bytes: 64}
        variants:
          - {name: tcp_sendmsg, sk_pos: 1, args: {msg: 2}, kernel: ">=4.1"}
          - {name: tcp_sendmsg, sk_pos: 2, args: {msg: 3}, kernel: "<4.1"}

`tracepoint: SYSTEM:EVENT` names the static tracepoint that fires in the function with
the same sk_buff, traced instead of it on a kernel without kprobes (one of those
legacytrace.kernel.tracepoints knows; without the key, the one it knows for the function)::

      - {name: __dev_queue_xmit, skb_pos: 1, tracepoint: "net:net_dev_queue"}

`kernel` is a space- or comma-separated list of conditions that must all hold:
`>=X.Y[.Z]`, `<X.Y[.Z]` and `elN` (a RHEL/CentOS N kernel, which differ from
upstream of the same version) or `!elN`.
Every value is validated here: names and field paths reach generated kernel code.
"""
import collections
import os
import pkgutil
import re

import yaml

from legacytrace import validate
from legacytrace.kernel import tracepoints
from legacytrace.errors import UsageError
from legacytrace.kernel.release import VersionRange, parse_version
from legacytrace.model import Probe

_FUNCTION_KEYS = {"name", "skb_pos", "sk_pos", "args", "egress", "description", "fields",
                  "variants", "peek", "caller", "tracepoint"}
_VARIANT_KEYS = {"name", "skb_pos", "sk_pos", "args", "kernel"}
_TOP_KEYS = {"functions", "name", "description"}
_CONDITION_RE = re.compile(r"^(>=|<)(\d+\.\d+(?:\.\d+)?)$|^(!?)el(\d+)$")


class Variant(collections.namedtuple("Variant", "name skb_pos sk_pos versions el args")):
    """One spelling of a function for some kernels: name, argument positions, kernel range.

    `args` maps extra argument names (`ARG_TYPES`) to 1-based positions.
    `el` is None (any kernel), an int N (only .elN kernels) or -N (not .elN kernels).
    """

    __slots__ = ()

    def fits(self, kernel):
        """True when this variant applies to `kernel` (a KernelRelease)."""
        if kernel.version not in self.versions:
            return False
        if self.el is None:
            return True
        if self.el > 0:
            return kernel.el == self.el
        return kernel.el != -self.el


class ManifestFunction(collections.namedtuple(
        "ManifestFunction", "variants egress description fields peek caller tracepoint")):
    """One manifest entry: its variants in order of preference, and what they share.

    `peek` is None or {"arg": name, "bytes": N}; `caller` asks for the return address;
    `tracepoint` is None or the tracepoint named for kernels without kprobes."""

    __slots__ = ()

    @property
    def label(self):
        return self.variants[0].name


class Manifest(collections.namedtuple("Manifest", "name description functions source")):
    """A validated manifest; `source` is the file (or bundled name) it came from."""

    __slots__ = ()


def names(function):
    """What a --regex may match of an entry: its variants' names and the tracepoints that
    stand for them."""
    found = []
    for variant in function.variants:
        found.extend(tracepoints.names(variant.name, function.tracepoint))
    return found


def bundled_names():
    """Names of the manifests shipped in legacytrace.manifests."""
    import legacytrace.manifests
    folder = os.path.dirname(legacytrace.manifests.__file__)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def load(spec):
    """Load a manifest from a file path or a bundled name (`generic`, `icmp-senders`...)."""
    if os.path.exists(spec):
        try:
            with open(spec, "rb") as handle:
                text = handle.read()
        except (IOError, OSError) as exc:
            raise UsageError("{}: cannot read manifest: {}".format(spec, exc.strerror or exc))
        return parse(text, spec)
    if re.match(r"^[a-z0-9][a-z0-9-]*$", spec) and spec in bundled_names():
        return parse(pkgutil.get_data("legacytrace.manifests", spec + ".yaml"), spec)
    raise UsageError("manifest {!r} not found: give a YAML file or one of the bundled "
                     "manifests: {}".format(spec, ", ".join(bundled_names())))


def parse(text, source="<manifest>"):
    """Parse and validate manifest YAML; raise UsageError naming file, entry and problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:       # bytes that are no text (a binary file)
        raise UsageError("{}: not a YAML text file ({} at byte {})".format(
            source, exc.reason, exc.position))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " line {}".format(mark.line + 1) if mark is not None else ""
        raise UsageError("{}:{} invalid YAML: {}".format(
            source, where, getattr(exc, "problem", None) or exc))
    if not isinstance(data, dict):
        raise UsageError("{}: a manifest is a mapping with a 'functions' list".format(source))
    _no_unknown(data, _TOP_KEYS, source)
    functions = data.get("functions")
    if not isinstance(functions, list) or not functions:
        raise UsageError("{}: 'functions' must be a non-empty list".format(source))
    parsed = [_function(entry, "{}: functions[{}]".format(source, i))
              for i, entry in enumerate(functions)]
    return Manifest(validate.text(data.get("name", ""), "name", source),
                    validate.text(data.get("description", ""), "description", source),
                    tuple(parsed), source)


def _function(entry, where):
    if not isinstance(entry, dict):
        raise UsageError("{}: an entry must be a mapping with a name and skb_pos".format(where))
    if isinstance(entry.get("name"), str) and validate.SYMBOL_RE.match(entry["name"]):
        where = "{} ({})".format(where, entry["name"])
    _no_unknown(entry, _FUNCTION_KEYS, where)
    variants = _variants(entry, where)
    fields = validate.fields(entry.get("fields", {}), where)
    for variant in variants:
        validate.field_roots(fields, variant.skb_pos, variant.sk_pos,
                             "{} ({})".format(where, variant.name))
    egress, caller = (validate.flag(entry.get(key, False), key, where)
                      for key in ("egress", "caller"))
    peek = validate.peek(entry.get("peek"), [(v.name, v.args) for v in variants], where)
    tracepoint = entry.get("tracepoint")
    return ManifestFunction(variants, egress,
                            validate.text(entry.get("description", ""), "description", where),
                            fields, peek, caller,
                            None if tracepoint is None else tracepoints.check(tracepoint, where))


def _variants(entry, where):
    """The entry's variants: its `variants` list, or the one its own name and positions make."""
    if "variants" not in entry:
        return (_variant(dict((k, entry[k]) for k in ("name", "skb_pos", "sk_pos", "args")
                              if k in entry), where),)
    if any(key in entry for key in ("name", "skb_pos", "sk_pos", "args")):
        raise UsageError("{}: give either name/skb_pos/sk_pos/args or variants, not both"
                         .format(where))
    raw = entry["variants"]
    if not isinstance(raw, list) or not raw:
        raise UsageError("{}: 'variants' must be a non-empty list".format(where))
    return tuple(_variant(v, "{}.variants[{}]".format(where, i)) for i, v in enumerate(raw))


def _variant(entry, where):
    if not isinstance(entry, dict):
        raise UsageError("{}: a variant must be a mapping with a name".format(where))
    _no_unknown(entry, _VARIANT_KEYS, where)
    name = entry.get("name")
    if name is None:
        raise UsageError("{}: 'name' is missing".format(where))
    validate.symbol(name, where)
    skb_pos, sk_pos = validate.positions(entry.get("skb_pos"), entry.get("sk_pos"), where)
    versions, el = _kernel_condition(entry.get("kernel"), where)
    args = validate.args(entry.get("args"), (skb_pos, sk_pos), where)
    return Variant(name, skb_pos, sk_pos, versions, el, args)


def _kernel_condition(value, where):
    if value is None:
        return VersionRange(None, None), None
    if not isinstance(value, (str, float, int)) or isinstance(value, bool):
        raise UsageError("{}: kernel must be text such as '>=4.4' or '>=3.10 <4.4' or 'el7'"
                         .format(where))
    low = high = el = None
    for token in re.split(r"[\s,]+", str(value).strip()):
        match = _CONDITION_RE.match(token)
        if not match:
            raise UsageError("{}: kernel condition {!r} not understood: use >=X.Y, <X.Y, "
                             "elN or !elN".format(where, token))
        op, version, negate, el_major = match.groups()
        if op == ">=":
            low = parse_version(version)
        elif op == "<":
            high = parse_version(version)
        else:
            el = -int(el_major) if negate else int(el_major)
    if low is not None and high is not None and low >= high:
        raise UsageError("{}: kernel range {!r} is empty".format(where, value))
    return VersionRange(low, high), el


def _no_unknown(entry, allowed, where):
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise UsageError("{}: unknown key {} (allowed: {})".format(
            where, ", ".join(repr(k) for k in unknown), ", ".join(sorted(allowed))))


class Resolution(collections.namedtuple("Resolution", "probes missing unread")):
    """Probes that will be attached, entries with no variant on this kernel, and what the
    picked variants cannot give that the entry's other variants read on other kernels
    (`unread`: "FUNCTION: no ARG" texts, e.g. kfree_skb before 5.17 has no drop reason)."""

    __slots__ = ()


def resolve(manifest, kernel, exists=None, skb_position=None):
    """Pick each function's variant for `kernel` (a KernelRelease).

    `exists(name)` says whether the host has the symbol (None: assume yes, as
    when generating for another host). `skb_position(name)` gives the 1-based
    position of the `struct sk_buff *` parameter from BTF, or None when unknown;
    a manifest that disagrees is an error naming the right position.
    """
    probes, missing, unread = [], [], []
    for function in manifest.functions:
        variant = _pick(function, kernel, exists)
        if variant is None:
            missing.append(function.label)
            continue
        for arg in sorted(set().union(*(v.args for v in function.variants)) - set(variant.args)):
            unread.append("{}: no {} on this kernel (the manifest reads it from {} on others)"
                          .format(variant.name, arg, ", ".join(
                              v.name for v in function.variants if arg in v.args)))
        if any(probe.name == variant.name for probe in probes):
            raise UsageError("{}: {} is listed twice for kernel {}".format(
                manifest.source, variant.name, kernel))
        if skb_position is not None and variant.skb_pos is not None:
            actual = skb_position(variant.name)
            if actual is not None and actual != variant.skb_pos:
                raise UsageError(
                    "{}: {} takes its struct sk_buff * as argument {}, not {} (from the "
                    "kernel's BTF): set skb_pos: {}".format(
                        manifest.source, variant.name, actual, variant.skb_pos, actual))
        probes.append(validate.probe(Probe(
            variant.name, variant.skb_pos, variant.sk_pos, function.egress,
            function.description, function.fields, args=variant.args, peek=function.peek,
            caller=function.caller, tracepoint=function.tracepoint)))
    return Resolution(probes, missing, unread)


def _pick(function, kernel, exists):
    for variant in function.variants:
        if variant.fits(kernel) and (exists is None or exists(variant.name)):
            return variant
    return None
