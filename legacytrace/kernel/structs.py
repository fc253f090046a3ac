"""Custom field paths through the kernel's structs: one resolver for every backend.

A field path (checked by legacytrace.validate) starts at an argument, `skb`, `sk` or
`skb_shinfo(skb)`, whose struct is ROOT_STRUCTS[root], and names members. `walk` follows
it through the kernel's types: a member that is a pointer to a struct is dereferenced and
the walk goes on in that struct; one that is an embedded struct (or union) goes on inside
it. `types.member(struct, path)` answers with a legacytrace.kernel.btf.Member for a path
dotted through embedded structs, as legacytrace.kernel.btf.BTF does (a kernel's BTF,
offsets.LayoutTypes for a layout without BTF, or a recording of either).

Each backend turns the hops into its own expression: nested kprobe_events dereferences
(ftrace), `->` and `.` in bpftrace, `@cast(...)->` in SystemTap (which reads the types
from the kernel's headers itself and so needs only `split`).
"""
import collections
import re

from legacytrace.errors import LegacytraceError

#: The struct each root of a field path is.
ROOT_STRUCTS = collections.OrderedDict([
    ("skb", "sk_buff"), ("sk", "sock"), ("skb_shinfo(skb)", "skb_shared_info")])
# A member's C type as legacytrace.kernel.btf spells it: "struct sock *", "const struct iovec *".
_STRUCT_POINTER = re.compile(r"^(?:(?:const|volatile) )*(?:struct|union) (\w+) \*\Z")
_AGGREGATE = re.compile(r"^(?:(?:const|volatile) )*(?:struct|union) ")


class FieldPathError(LegacytraceError):
    """A path goes on through a member that is neither a struct nor a pointer to one."""


class Hop(collections.namedtuple("Hop", "struct path member")):
    """Members walked from one base address: in struct `struct`, the `path` dotted through
    embedded structs, whose last member is `member` (its offset from the struct's start)."""

    __slots__ = ()


def split(path):
    """(root, its struct, [member names]) of a checked field path."""
    root = path.split(")", 1)[0] + ")" if path.startswith("skb_shinfo(") else path.split(".")[0]
    return root, ROOT_STRUCTS[root], path[len(root) + 1:].split(".")


def walk(types, path):
    """(root, [Hop]) of a checked field path: every hop but the last ends in a pointer to
    the next hop's struct; the last hop's member is the value. Raises what `types` raises
    for a member it lacks, or FieldPathError."""
    root, struct, names = split(path)
    hops, segment = [], []
    for depth, name in enumerate(names, 1):
        segment.append(name)
        member = types.member(struct, ".".join(segment))
        if depth == len(names):
            break
        pointee = _STRUCT_POINTER.match(member.ctype)
        if pointee:                 # a pointer: dereference it, go on at its target
            hops.append(Hop(struct, ".".join(segment), member))
            struct, segment = pointee.group(1), []
        elif not _AGGREGATE.match(member.ctype) or member.bit_size:
            raise FieldPathError("{}.{} has type {}, not a struct or a pointer to one".format(
                struct, ".".join(segment), member.ctype))
    hops.append(Hop(struct, ".".join(segment), member))
    return root, hops


def dotted(member, struct, path):
    """The Member of `path` dotted through embedded structs, found with `member(struct,
    name)` one name at a time (for types that know only direct members)."""
    names, offset = path.split("."), 0
    for name in names[:-1]:
        found = member(struct, name)
        inner = re.match(r"^(?:struct|union) (\w+)\Z", found.ctype)
        if inner is None:
            raise FieldPathError("{}.{} has type {}, not a struct or a pointer to one".format(
                struct, name, found.ctype))
        struct, offset = inner.group(1), offset + found.offset
    found = member(struct, names[-1])
    return found._replace(path=path, offset=offset + found.offset,
                          bit_offset=offset * 8 + found.bit_offset)
