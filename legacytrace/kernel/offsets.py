"""Struct offsets for the ftrace backend: where `sk_buff`, `sock_common` and `net_device`
keep the members a kprobe_events fetch argument reads (`+OFFSET(%di):u16`).

Offsets differ per build (sk_buff.len is 104 on EL7 3.10.0-1160, 112 on Debian's 6.1),
so they come from the running kernel, trying in order:

1. BTF (`/sys/kernel/btf/vmlinux`, 5.2+ and many 4.18+ distribution kernels): exact;
2. the table of known builds in `legacytrace/kernel/layouts/known_builds.yaml` (EL7 3.10 x86_64);
3. pahole over the kernel's debuginfo (`/usr/lib/debug/lib/modules/$REL/vmlinux` from
   kernel-debuginfo, `/usr/lib/debug/boot/vmlinux-$REL` from Debian's -dbg packages).

The result is a `Layout` that says which source it came from. When no source applies,
`find_layout` raises `LayoutError` naming what is missing and what to do instead.
"""
import collections
import os
import pkgutil
import re
import shutil
import subprocess

from legacytrace.kernel import btf, structs
from legacytrace.errors import LegacytraceError

# What the tracer reads, struct -> members. The header offsets (transport_header,
# network_header, mac_header) are __u16 on EL7 and 4.x+, but sk_buff_data_t (32 bits
# on 64-bit builds) on upstream 3.10: Field.size records the width to fetch.
WANTED = collections.OrderedDict([
    ("sk_buff", ("sk", "dev", "cb", "len", "data_len", "protocol", "transport_header",
                 "network_header", "mac_header", "tail", "end", "head", "data")),
    ("sock_common", ("skc_daddr", "skc_rcv_saddr", "skc_dport", "skc_num", "skc_family",
                     "skc_state", "skc_v6_daddr", "skc_v6_rcv_saddr")),
    ("net_device", ("name",)),
])

# Members a build may lack: the IPv6 addresses joined sock_common in 3.13 and need CONFIG_IPV6.
OPTIONAL = frozenset([("sock_common", "skc_v6_daddr"), ("sock_common", "skc_v6_rcv_saddr")])

KNOWN_BUILDS = "known_builds.yaml"


class LayoutError(LegacytraceError):
    """No source gives the struct layout, or a layout lacks a member the caller needs."""


class Field(collections.namedtuple("Field", "offset size")):
    """A member's byte offset from the start of its struct and its byte size (the fetch width)."""

    __slots__ = ()


class Layout(object):
    """struct -> member -> Field, for one kernel build, and where that came from.

    source -- "btf", "table" or "pahole"
    origin -- the BTF or vmlinux path, or the known build's name ("el7-x86_64")
    notes  -- why the sources tried before this one did not apply (for `doctor`)
    """

    def __init__(self, release, source, origin, structs, notes=()):
        self.release = release
        self.source = source
        self.origin = origin
        self.structs = structs   # {struct: {member: Field, or None when the build lacks it}}
        self.notes = list(notes)

    def describe(self):
        return "{} {}".format(self.source, self.origin)

    def has(self, struct, member):
        return self.structs.get(struct, {}).get(member) is not None

    def field(self, struct, member):
        """The Field of `struct.member`; LayoutError if this layout does not have it."""
        found = self.structs.get(struct, {}).get(member)
        if found is None:
            raise LayoutError("kernel {} has no {}.{} in its struct layout (from {})".format(
                self.release, struct, member, self.describe()))
        return found


class _Unavailable(Exception):
    """A source does not apply to this host; the message says why, in a few words."""


def _collect(release, lookup, what):
    """Layout.structs from `lookup(struct, member)` -> Field or None (absent).

    A required member that is absent makes the whole source unusable: an offset is
    never guessed.
    """
    structs = collections.OrderedDict()
    for struct, members in WANTED.items():
        fields = structs[struct] = collections.OrderedDict()
        for member in members:
            fields[member] = lookup(struct, member)
            if fields[member] is None and (struct, member) not in OPTIONAL:
                raise _Unavailable("{} has no {}.{}".format(what, struct, member))
    return structs


def _field(found, struct, member, what):
    """A Field from a btf.Member; bitfields have no byte offset to fetch."""
    if found.bit_size:
        raise _Unavailable("{}: {}.{} is a bitfield".format(what, struct, member))
    return Field(found.offset, found.size)


def from_btf(release, path):
    """Layout from the raw BTF file at `path`."""
    if not path or not os.path.exists(path):
        raise _Unavailable("no BTF")
    what = "BTF " + path
    try:
        blob = btf.load(path)
    except btf.BTFError as err:
        raise _Unavailable("{}: {}".format(what, err))

    def lookup(struct, member):
        try:
            return _field(blob.member(struct, member), struct, member, what)
        except btf.BTFError:
            return None
    return Layout(release, "btf", path, _collect(release, lookup, what))


def from_table(release, data=None):
    """Layout from the known builds whose `release` pattern matches; `data` is the YAML text
    (default: the bundled legacytrace/kernel/layouts/known_builds.yaml)."""
    import yaml   # only this source needs PyYAML
    if data is None:
        data = pkgutil.get_data("legacytrace.kernel.layouts", KNOWN_BUILDS).decode("utf-8")
    for build in yaml.safe_load(data)["builds"]:
        if re.match(build["release"], release):
            table = build["structs"]

            def lookup(struct, member):
                entry = table.get(struct, {}).get(member)
                return Field(*entry) if entry else None
            return Layout(release, "table", build["name"],
                          _collect(release, lookup, "known build " + build["name"]))
    raise _Unavailable("not a known build")


def debuginfo_paths(release):
    """Where distributions install an uncompressed vmlinux with DWARF for `release`."""
    return ["/usr/lib/debug/lib/modules/{}/vmlinux".format(release),   # EL kernel-debuginfo
            "/usr/lib/debug/boot/vmlinux-{}".format(release)]          # Debian linux-image-*-dbg


def run_pahole(vmlinux, struct):
    """`pahole -C struct vmlinux` output; _Unavailable when pahole fails or prints nothing."""
    command = ["pahole", "-C", struct, vmlinux]
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
        out, err = proc.communicate(timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _Unavailable("{}: {}".format(" ".join(command), exc))
    if proc.returncode or not out.strip():
        lines = err.strip().splitlines()
        raise _Unavailable("{} printed nothing (exit {}{})".format(
            " ".join(command), proc.returncode, ": " + lines[-1] if lines else ""))
    return out


def from_pahole(release, vmlinux_paths=None, pahole=run_pahole):
    """Layout from pahole over the first debuginfo vmlinux that exists.

    `pahole(vmlinux, struct)` returns pahole's text for one struct (replaceable in tests).
    """
    paths = debuginfo_paths(release) if vmlinux_paths is None else vmlinux_paths
    vmlinux = next((path for path in paths if os.path.exists(path)), None)
    if vmlinux is None:
        raise _Unavailable("no debuginfo for pahole")
    if pahole is run_pahole and shutil.which("pahole") is None:
        raise _Unavailable("debuginfo at {} but no pahole (dwarves)".format(vmlinux))
    what = "pahole " + vmlinux
    parsed = {}
    for struct in WANTED:
        try:
            parsed.update(parse_pahole(pahole(vmlinux, struct)))
        except PaholeFormatError as err:
            raise _Unavailable("{}: {}".format(what, err))
        if struct not in parsed:
            raise _Unavailable("{}: no struct {}".format(what, struct))

    def lookup(struct, member):
        found = parsed[struct].members.get(member)
        return _field(found, struct, member, what) if found else None
    return Layout(release, "pahole", vmlinux, _collect(release, lookup, what))


def find_layout(release, btf_path=None, vmlinux_paths=None, pahole=run_pahole, table=None):
    """The struct layout of kernel `release`, from the first source that has it.

    btf_path      -- raw BTF of that kernel (HostFacts.btf, e.g. /sys/kernel/btf/vmlinux
                     on the host itself), or None when it has none
    vmlinux_paths -- debuginfo candidates for pahole (default: debuginfo_paths(release))
    pahole        -- runs pahole (see from_pahole); table -- known builds YAML text
    Raises LayoutError listing why each source did not apply.
    """
    attempts = (lambda: from_btf(release, btf_path),
                lambda: from_table(release, table),
                lambda: from_pahole(release, vmlinux_paths, pahole))
    reasons = []
    for attempt in attempts:
        try:
            layout = attempt()
        except _Unavailable as why:
            reasons.append(str(why))
            continue
        layout.notes = reasons
        return layout
    raise LayoutError("no struct layout for kernel {}: {}; use --backend stap, or install "
                      "kernel-debuginfo-{} and pahole (dwarves)".format(release, ", ".join(reasons), release))


#: C types of the members a Layout records without types (the known-builds table and pahole
#: layouts hold WANTED only): the pointers and strings a field path may
#: follow; every other member is a number. struct sock begins with its struct sock_common in
#: every kernel (include/net/sock.h, 3.10 to 6.x).
LAYOUT_CTYPES = {("sk_buff", "sk"): "struct sock *", ("sk_buff", "dev"): "struct net_device *",
                 ("sk_buff", "head"): "unsigned char *", ("sk_buff", "data"): "unsigned char *",
                 ("sk_buff", "cb"): "char[48]", ("net_device", "name"): "char[16]",
                 ("sock", "__sk_common"): "struct sock_common"}

class LayoutTypes(object):
    """The kernel's types as far as a Layout without type information knows them: its own
    members (typed by LAYOUT_CTYPES or as numbers) and no enums. The interface is that of
    legacytrace.kernel.btf.BTF, which answers for every struct on a kernel with BTF."""

    def __init__(self, layout):
        self.layout = layout

    def member(self, struct_name, path):
        """A legacytrace.kernel.btf.Member of `path` (dotted through embedded structs);
        LayoutError when the layout lacks it."""
        return structs.dotted(self._member, struct_name, path)

    def _member(self, struct_name, name):
        ctype = LAYOUT_CTYPES.get((struct_name, name))
        if (struct_name, name) == ("sock", "__sk_common"):
            return btf.Member(name, 0, 0, 0, 0, ctype)
        field = self.layout.field(struct_name, name)
        return btf.Member(name, field.offset, field.size, field.offset * 8, 0,
                          ctype or "u{}".format(field.size * 8))

    @staticmethod
    def enum_values(name):
        return {}



def layout_for(facts):
    """find_layout for a legacytrace.kernel.host.HostFacts (its `release` and `btf` path)."""
    return find_layout(facts.release, facts.btf)


# -- pahole's text ------------------------------------------------------------------------

class PaholeFormatError(ValueError):
    """pahole printed something this parser does not understand; the message quotes it."""


PaholeStruct = collections.namedtuple("PaholeStruct", "name size members")

_TOP_OPEN = re.compile(r"^(?:struct|union) (\w+) \{$")
_NESTED_OPEN = re.compile(r"^\s+(struct|union)(?: \w+)? \{$")
_NESTED_CLOSE = re.compile(r"^\s+\}\s*(\w*)((?:\[\d+\])*);\s*/\*\s*(\d+)\s+(\d+)\s*\*/$")
_MEMBER = re.compile(r"^\s+([^/]+?);\s*/\*\s*(\d+)(?::\s*(\d+))?\s+(\d+)\s*\*/$")
_SIZE = re.compile(r"/\* size: (\d+),")
_COMMENT = re.compile(r"^\s*(/\*.*\*/)?\s*$")


def _declaration(decl):
    """(name, C type, bitfield width) of a pahole member declaration such as
    "struct sk_buff * next", "char cb[48]", "__u8 cloned:1", "void (*destructor)(struct sk_buff *)"."""
    decl = " ".join(decl.split())
    width = 0
    bitfield = re.match(r"^(.*?) ?: ?(\d+)$", decl)
    if bitfield:
        decl, width = bitfield.group(1), int(bitfield.group(2))
    pointer = re.match(r"^(.*?) ?\(\*(\w+)\)(\(.*\))$", decl)
    if pointer:
        return pointer.group(2), "{} (*){}".format(pointer.group(1), pointer.group(3)), width
    plain = re.match(r"^(.*?) ?(\w+)((?:\[\d*\])*)$", decl)
    if not plain:
        raise PaholeFormatError("cannot read declaration {!r}".format(decl))
    ctype = re.sub(r"\* (?=\*)", "*", plain.group(1))
    # A flexible array "[]" is an array of 0 elements in BTF and DWARF alike.
    return plain.group(2), ctype + plain.group(3).replace("[]", "[0]"), width


def parse_pahole(text):
    """{struct name: PaholeStruct} from `pahole -C NAME` output (one or more structs).

    Members of anonymous structs/unions are flattened as C sees them; members of a
    named inline struct get its name as a prefix ("headers.network_header"), as in
    btf.BTF.member. Offsets are absolute: pahole prints them so, and a nested block
    whose first member is not at the block's own offset is refused rather than guessed.
    """
    result, current, stack = {}, None, []
    for number, line in enumerate(text.splitlines(), 1):
        if current is None:
            opened = _TOP_OPEN.match(line)
            if opened:
                current = PaholeStruct(opened.group(1), None, collections.OrderedDict())
                stack = [(None, [])]
        elif line.startswith("}"):
            result[current.name] = _ended(current, stack, number)
            current = None
        else:
            current = _struct_line(current, stack, line, number)
    if current is not None:
        raise PaholeFormatError("struct {} has no closing line".format(current.name))
    return result


def _ended(current, stack, number):
    """The struct `current` with the members on `stack`, at its closing line."""
    if len(stack) != 1:
        raise PaholeFormatError("line {}: struct {} ends inside a nested block".format(
            number, current.name))
    for found in stack[0][1]:
        current.members.setdefault(found.path, found)
    return current


def _struct_line(current, stack, line, number):
    """Read one line inside struct `current` onto `stack` (its innermost open block last);
    return the struct, with its size once the line giving it is read."""
    size = _SIZE.search(line)
    if size:
        return current._replace(size=int(size.group(1)))
    if _COMMENT.match(line):
        return current
    opened = _NESTED_OPEN.match(line)
    closed = _NESTED_CLOSE.match(line)
    if opened:
        stack.append((opened.group(1), []))
    elif closed:
        _close_block(closed, stack, number)
    else:
        stack[-1][1].append(_member(line, number))
    return current


def _close_block(closed, stack, number):
    """A nested block ends: its members join the enclosing one (prefixed when it is named)."""
    name, dims = closed.group(1), closed.group(2)
    offset, nbytes = int(closed.group(3)), int(closed.group(4))
    kind, inner = stack.pop()
    if inner and inner[0].offset != offset:
        raise PaholeFormatError("line {}: block at offset {} starts with a member at {}: "
                                "not absolute offsets".format(number, offset, inner[0].offset))
    members = stack[-1][1]
    if name:
        members.append(btf.Member(name, offset, nbytes, offset * 8, 0, kind + " {...}" + dims))
        inner = [m._replace(path=name + "." + m.path) for m in inner]
    members.extend(inner)


def _member(line, number):
    """The btf.Member of one member line of pahole's text."""
    member = _MEMBER.match(line)
    if not member:
        raise PaholeFormatError("line {}: cannot read {!r}".format(number, line.strip()))
    name, ctype, width = _declaration(member.group(1))
    bits = int(member.group(2)) * 8 + int(member.group(3) or 0)
    return btf.Member(name, bits // 8, int(member.group(4)), bits, width, ctype)
