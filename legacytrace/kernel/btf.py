"""A small read-only reader of raw BTF, such as the kernel's `/sys/kernel/btf/vmlinux`.

It answers what the tracer needs from a kernel without debuginfo or a compiler:
where a struct member is (`member`, `offsetof`, `struct_size`) and at which argument
position a function takes a `struct sk_buff *` or `struct sock *` (`func_params`,
`skb_position`, `sock_position`).

The format is the kernel's (Documentation/bpf/btf.rst, include/uapi/linux/btf.h):
a header (`struct btf_header`), a type section of `struct btf_type` records, each
followed by kind-specific data, and a string section of NUL-terminated names.
Type ids count the records from 1; id 0 is `void`.

Startup is one pass over the type section that records where each type starts and
its name offset; names are decoded only when a query needs them. Split BTF (the
per-module files next to vmlinux) continues the ids of vmlinux and is not supported.

    btf = load()                                  # /sys/kernel/btf/vmlinux
    btf.offsetof("sk_buff", "len")                # 112 on a 6.1 x86_64 build
    btf.member("sk_buff", "network_header").size  # 2 (__u16)
    btf.skb_position("ip_rcv")                    # 1
"""
import array
import collections
import struct
import sys

from legacytrace.errors import LegacytraceError

VMLINUX = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F

# enum btf_kind (include/uapi/linux/btf.h); DECL_TAG, TYPE_TAG 5.16, ENUM64 6.0.
(KIND_VOID, KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD,
 KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO,
 KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64) = range(20)

# 32-bit words that follow each 3-word `struct btf_type`, per kind: a fixed part
# and a part per `vlen` entry (btf_member 3, btf_enum 2, btf_param 2,
# btf_var_secinfo 3, btf_enum64 3; btf_array 3; INT, VAR and DECL_TAG one word).
_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# Kinds that only qualify or rename another type: C sees through them for layout.
_TRANSPARENT = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
_SIZED = (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FLOAT, KIND_DATASEC, KIND_ENUM64)


class BTFError(LegacytraceError):
    """A BTF blob is unreadable, or lacks the struct, member or function asked for."""


class Member(collections.namedtuple("Member", "path offset size bit_offset bit_size ctype")):
    """Where a (possibly nested) member lies inside a struct.

    path       -- the member path asked for, e.g. "headers.network_header"
    offset     -- byte offset from the start of the outer struct (for a bitfield:
                  the byte that holds its first bit)
    size       -- byte size of the member's type (for a bitfield: of its base type)
    bit_offset -- offset in bits from the start of the outer struct
    bit_size   -- width of a bitfield, 0 for an ordinary member
    ctype      -- the member's C type, e.g. "__u16" or "struct net_device *"
    """

    __slots__ = ()


class BTF(object):
    """A parsed BTF blob. Cheap to build: names and members are decoded on demand."""

    def __init__(self, data):
        if len(data) < 24:
            raise BTFError("not a BTF blob: {} bytes is shorter than a BTF header".format(len(data)))
        order = "<" if struct.unpack_from("<H", data)[0] == BTF_MAGIC else ">"
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from(order + "HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise BTFError("not a BTF blob: magic 0x{:04x}, expected 0x{:04x}".format(magic, BTF_MAGIC))
        if version != 1:
            raise BTFError("unsupported BTF version {}".format(version))
        types = data[hdr_len + type_off:hdr_len + type_off + type_len]
        self._strings = bytes(data[hdr_len + str_off:hdr_len + str_off + str_len])
        if len(types) != type_len or len(self._strings) != str_len or type_len % 4:
            raise BTFError("truncated BTF blob: sections run past its {} bytes".format(len(data)))
        self._words = array.array("I", bytes(types))   # "I" is 32 bits on every Linux ABI
        if (order == "<") != (sys.byteorder == "little"):
            self._words.byteswap()
        self._index()
        self._pointer_size = None
        self._struct_ids = {}

    def _index(self):
        """One pass over the type section: the word index and name offset of every type id."""
        words, fixed, per_vlen = self._words, _FIXED_WORDS, _VLEN_WORDS
        starts, names = [0], [0]   # id 0 is void: no record
        i, end = 0, len(words)
        while i < end:
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            if kind >= len(fixed):
                raise BTFError("unsupported BTF kind {} at type id {}".format(kind, len(starts)))
            starts.append(i)
            names.append(words[i])
            i += 3 + fixed[kind] + (info & 0xFFFF) * per_vlen[kind]
        if i != end:
            raise BTFError("truncated BTF type section: last record runs past its end")
        self._starts, self._names = starts, names

    # -- raw access -----------------------------------------------------------------

    def _str(self, offset):
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode("utf-8", "replace")

    def _info(self, tid):
        """(kind, vlen, kind_flag, name, size_or_type) of type `tid`; id 0 is void."""
        if tid == 0:
            return KIND_VOID, 0, 0, "void", 0
        i = self._starts[tid]
        info = self._words[i + 1]
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, self._str(self._words[i]), self._words[i + 2]

    def _kind(self, tid):
        return (self._words[self._starts[tid] + 1] >> 24) & 0x1F if tid else KIND_VOID

    def _entries(self, tid, width):
        """The `vlen` entries after type `tid`, each a tuple of `width` words."""
        i = self._starts[tid]
        vlen = self._words[i + 1] & 0xFFFF
        first = i + 3 + _FIXED_WORDS[self._kind(tid)]
        return [tuple(self._words[first + k * width:first + (k + 1) * width]) for k in range(vlen)]

    def ids_named(self, name, kinds):
        """Ids of the types called `name` whose kind is one of `kinds`, in id order."""
        needle = b"\0" + name.encode("utf-8") + b"\0"
        offsets, pos = [], self._strings.find(needle)
        while pos != -1:
            offsets.append(pos + 1)
            pos = self._strings.find(needle, pos + 1)
        found = []
        for offset in offsets:
            tid = 0
            while True:
                try:
                    tid = self._names.index(offset, tid + 1)
                except ValueError:
                    break
                if self._kind(tid) in kinds:
                    found.append(tid)
        return sorted(found)

    # -- types ----------------------------------------------------------------------

    def resolve(self, tid):
        """Follow typedef/const/volatile/restrict/type_tag to the type C lays out."""
        while self._kind(tid) in _TRANSPARENT:
            tid = self._words[self._starts[tid] + 2]
        return tid

    def sizeof(self, tid):
        """Byte size of type `tid`, as C's sizeof (a flexible array is 0)."""
        tid = self.resolve(tid)
        kind = self._kind(tid)
        if kind in _SIZED:
            return self._words[self._starts[tid] + 2]
        if kind == KIND_PTR:
            return self.pointer_size()
        if kind == KIND_ARRAY:
            elem, _index, nelems = self._words[self._starts[tid] + 3:self._starts[tid] + 6]
            return nelems * self.sizeof(elem)
        raise BTFError("type {} ({}) has no size".format(tid, self.type_name(tid)))

    def pointer_size(self):
        """Pointer size of the target: BTF has none, so use C's `long` as libbpf does."""
        if self._pointer_size is None:
            longs = self.ids_named("long int", (KIND_INT,)) or self.ids_named("long unsigned int", (KIND_INT,))
            self._pointer_size = self._words[self._starts[longs[0]] + 2] if longs else 8
        return self._pointer_size

    def type_name(self, tid):
        """The C spelling of type `tid`: "struct sk_buff *", "const char *", "__u16", "char[16]"."""
        kind, _vlen, kind_flag, name, ref = self._info(tid)
        if kind in (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FWD):
            tag = {KIND_STRUCT: "struct", KIND_UNION: "union", KIND_FWD: "union" if kind_flag else "struct"}
            return "{} {}".format(tag.get(kind, "enum"), name or "{...}")
        if kind == KIND_PTR:
            if self._kind(ref) == KIND_FUNC_PROTO:
                return self._proto_name(ref, "(*)")
            inner = self.type_name(ref)
            return inner + ("*" if inner.endswith("*") else " *")
        if kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT):
            word = {KIND_CONST: "const", KIND_VOLATILE: "volatile", KIND_RESTRICT: "restrict"}[kind]
            inner = self.type_name(ref)
            # A qualified pointer is written after the star: "char *const".
            return inner + word if self._kind(ref) == KIND_PTR else word + " " + inner
        if kind == KIND_TYPE_TAG:
            return self.type_name(ref)
        if kind == KIND_ARRAY:
            elem, _index, nelems = self._words[self._starts[tid] + 3:self._starts[tid] + 6]
            return "{}[{}]".format(self.type_name(elem), nelems)
        if kind == KIND_FUNC_PROTO:
            return self._proto_name(tid, "")
        return name

    def _proto_name(self, proto, middle):
        params = ", ".join(ctype for _name, ctype in self._params(proto)) or "void"
        return "{} {}({})".format(self.type_name(self._words[self._starts[proto] + 2]), middle, params)

    # -- structs --------------------------------------------------------------------

    def struct_id(self, name):
        """Id of `struct name` (or `union name`); BTFError if the blob has neither."""
        if name not in self._struct_ids:
            ids = self.ids_named(name, (KIND_STRUCT,)) or self.ids_named(name, (KIND_UNION,))
            if not ids:
                raise BTFError("no struct {} in BTF".format(name))
            self._struct_ids[name] = ids[0]   # a lookup scans every type: remember it
        return self._struct_ids[name]

    def struct_size(self, name):
        """sizeof(struct name) in bytes."""
        return self.sizeof(self.struct_id(name))

    def _find_member(self, tid, name):
        """(type id, bit offset, bit size) of member `name` of struct/union `tid`, or None.

        Members of anonymous struct/union members are found as C finds them: as if
        they were members of the enclosing struct, at the anonymous member's offset.
        """
        kind_flag = self._words[self._starts[tid] + 1] >> 31
        for name_off, mtype, offset in self._entries(tid, 3):
            # kind_flag set: offset holds bitfield size (bits 24-31) and bit offset (0-23).
            bits, size = (offset & 0xFFFFFF, offset >> 24) if kind_flag else (offset, 0)
            if name_off and self._str(name_off) == name:
                return mtype, bits, size
            inner = self.resolve(mtype)
            if not name_off and self._kind(inner) in (KIND_STRUCT, KIND_UNION):
                found = self._find_member(inner, name)
                if found:
                    return found[0], bits + found[1], found[2]
        return None

    def member(self, struct_name, path):
        """Where `struct_name.path` lies; `path` is dotted ("headers.network_header").

        Raises BTFError naming the first path component that the struct lacks.
        """
        tid = self.struct_id(struct_name)
        bits, bit_size = 0, 0
        parts = path.split(".")
        for depth, part in enumerate(parts):
            outer = self.resolve(tid)
            where = ".".join([struct_name] + parts[:depth])
            if self._kind(outer) not in (KIND_STRUCT, KIND_UNION):
                raise BTFError("{} has type {}, not a struct: no member {}".format(
                    where, self.type_name(tid), part))
            found = self._find_member(outer, part)
            if found is None:
                raise BTFError("struct {} has no member {}".format(where, part))
            tid, offset, bit_size = found
            bits += offset
        self._check_legacy_bitfield(tid, struct_name, path)
        return Member(path, bits // 8, self.sizeof(tid), bits, bit_size, self.type_name(tid))

    def _check_legacy_bitfield(self, tid, struct_name, path):
        """Refuse bitfields encoded in the INT type (struct kind_flag 0), which this reader does
        not decode; pahole has set kind_flag for bitfields since BTF came to vmlinux (5.2)."""
        tid = self.resolve(tid)
        if self._kind(tid) == KIND_INT:
            encoding = self._words[self._starts[tid] + 3]
            if encoding & 0xFF != 8 * self.sizeof(tid) or (encoding >> 16) & 0xFF:
                raise BTFError("{}.{} is an INT-encoded bitfield, not supported".format(struct_name, path))

    def offsetof(self, struct_name, path):
        """offsetof(struct struct_name, path) in bytes; BTFError for a bitfield (no byte offset)."""
        found = self.member(struct_name, path)
        if found.bit_size:
            raise BTFError("{}.{} is a bitfield ({} bits at bit {}): it has no byte offset".format(
                struct_name, path, found.bit_size, found.bit_offset))
        return found.offset

    # -- functions ------------------------------------------------------------------

    def _params(self, proto):
        """[(name, C type)] of FUNC_PROTO `proto`; a trailing "..." stands for varargs."""
        return [(self._str(name_off), self.type_name(ptype) if ptype else "...")
                for name_off, ptype in self._entries(proto, 2)]

    def _func_proto(self, func):
        """Id of the FUNC_PROTO of function `func` (the first FUNC of that name)."""
        ids = self.ids_named(func, (KIND_FUNC,))
        if not ids:
            raise BTFError("no function {} in BTF".format(func))
        return self._words[self._starts[ids[0]] + 2]

    def func_params(self, func):
        """[(param name, C type)] of kernel function `func`, e.g. ip_rcv:
        [("skb", "struct sk_buff *"), ("dev", "struct net_device *"), ...]."""
        return self._params(self._func_proto(func))

    def functions(self, wanted=None):
        """Yield (name, [(param name, C type)]) for each function (FUNC) in id order.

        `wanted(name)`, when given, selects functions before their parameters are
        decoded. One pass for discovery (`legacytrace list-functions --skb`): looking
        each name up with `func_params` would search the string table every time.
        """
        for tid in range(1, len(self._starts)):
            if self._kind(tid) == KIND_FUNC:
                name = self._str(self._names[tid])
                if wanted is None or wanted(name):
                    yield name, self._params(self._words[self._starts[tid] + 2])

    def enum_values(self, name):
        """{value: enumerator name} of `enum name` (ENUM, or ENUM64 from 6.0), {} if absent."""
        for tid in self.ids_named(name, (KIND_ENUM, KIND_ENUM64)):
            signed = self._words[self._starts[tid] + 1] >> 31  # kind_flag: signed values (6.0+)
            if self._kind(tid) == KIND_ENUM:
                entries = ((name_off, _signed32(value) if signed else value)
                           for name_off, value in self._entries(tid, 2))
            else:
                entries = ((name_off, low | high << 32) for name_off, low, high in self._entries(tid, 3))
            return dict((value, self._str(name_off)) for name_off, value in entries)
        return {}

    def arg_position(self, func, struct_name):
        """1-based position of the first `struct struct_name *` parameter of `func`, or None.

        Typedefs and qualifiers are seen through on both sides of the star, so
        `const struct sock *` counts as a `struct sock *`.
        """
        for position, (_name_off, ptype) in enumerate(self._entries(self._func_proto(func), 2), 1):
            ptr = self.resolve(ptype)
            if self._kind(ptr) == KIND_PTR:
                target = self.resolve(self._words[self._starts[ptr] + 2])
                kind, _vlen, kind_flag, name, _size = self._info(target)
                if name == struct_name and (kind == KIND_STRUCT or (kind == KIND_FWD and not kind_flag)):
                    return position
        return None

    def skb_position(self, func):
        """1-based position of `func`'s `struct sk_buff *` argument, or None if it takes none."""
        return self.arg_position(func, "sk_buff")

    def sock_position(self, func):
        """1-based position of `func`'s `struct sock *` argument, or None if it takes none."""
        return self.arg_position(func, "sock")


def _signed32(word):
    return word - (1 << 32) if word & 0x80000000 else word


def load(path=VMLINUX):
    """Read and index the raw BTF file at `path` (default: the running kernel's)."""
    try:
        with open(path, "rb") as blob:
            data = blob.read()
    except (IOError, OSError) as err:
        raise BTFError("cannot read BTF {}: {}".format(path, err.strerror or err))
    return BTF(data)
