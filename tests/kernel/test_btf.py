"""legacytrace.kernel.btf against real BTF: a small blob made with gcc + pahole -J (tests/data/btf/),
recordings of this machine's kernel, and, live, pahole on the running kernel's BTF.

`compare_with_pahole` and `pahole_text` are meant for reuse (the lab compares the reader
with pahole on its 6.1 kernel): `from test_btf import compare_with_pahole, pahole_text`.
"""
import array
import json
import os
import platform
import shutil
import struct
import subprocess

import pytest

from conftest import DATA, require
from legacytrace.kernel import btf
from legacytrace.kernel.offsets import parse_pahole

BTF_DATA = os.path.join(DATA, "btf")
TINY = os.path.join(BTF_DATA, "tiny.btf")
RECORDED_RELEASE = "6.18.44-fc-v669"
LIVE_STRUCTS = ("sk_buff", "sock_common", "iphdr", "ipv6hdr", "net_device")


def read(name, mode="r"):
    with open(os.path.join(BTF_DATA, name), mode) as data:
        return data.read()


def pahole_text(btf_path, structs):
    """pahole's description of `structs` read from the BTF (or ELF) file at `btf_path`."""
    return "".join(subprocess.check_output(["pahole", "-C", name, btf_path], stderr=subprocess.DEVNULL,
                                           universal_newlines=True) for name in structs)


def compare_with_pahole(reader, text):
    """Differences between `reader` (a btf.BTF) and pahole's `text`, one line each; [] if none.

    Every member path pahole prints (anonymous members flattened, named inline structs as
    "name.member") must have the same offset, size, bit offset, bitfield width and C type,
    and every struct the same size.
    """
    structs = parse_pahole(text)
    if not structs:
        return ["pahole text holds no struct"]
    problems = []
    for name, expected in sorted(structs.items()):
        if reader.struct_size(name) != expected.size:
            problems.append("sizeof(struct {}): reader {}, pahole {}".format(
                name, reader.struct_size(name), expected.size))
        for path, member in expected.members.items():
            try:
                found = reader.member(name, path)
            except btf.BTFError as err:
                found = err
            if found != member:
                problems.append("{}.{}: reader {}, pahole {}".format(name, path, found, member))
    return problems


@pytest.fixture(scope="module")
def tiny():
    return btf.BTF(read("tiny.btf", "rb"))


# -- the tiny blob ----------------------------------------------------------------------

def test_tiny_matches_recorded_pahole(tiny):
    assert compare_with_pahole(tiny, read("tiny.pahole.txt")) == []


def test_tiny_offsets_and_sizes(tiny):
    assert tiny.struct_size("sk_buff") == 136
    assert tiny.offsetof("sk_buff", "len") == 80
    # dev lies in a union, in a struct, in a union: all anonymous, so C names it skb->dev.
    assert tiny.member("sk_buff", "dev") == btf.Member("dev", 16, 8, 128, 0, "struct net_device *")
    # The same member through the anonymous struct and through the named one.
    assert tiny.offsetof("sk_buff", "network_header") == 94
    assert tiny.member("sk_buff", "headers.network_header") == btf.Member(
        "headers.network_header", 94, 2, 752, 0, "__u16")
    assert tiny.member("sk_buff", "protocol").ctype == "__be16"
    assert tiny.member("sk_buff", "cb") == btf.Member("cb", 32, 48, 256, 0, "char[48]")
    assert tiny.member("sk_buff", "data").ctype == "const unsigned char *"
    assert tiny.member("sk_buff", "destructor").ctype == "void (*)(struct sk_buff *)"
    assert tiny.member("sock_common", "skc_state") == btf.Member(
        "skc_state", 14, 1, 112, 0, "volatile unsigned char")
    assert tiny.member("sock_common", "skc_v6_daddr.in6_u.u6_addr32") == btf.Member(
        "skc_v6_daddr.in6_u.u6_addr32", 16, 16, 128, 0, "__be32[4]")


def test_tiny_bitfields(tiny):
    assert tiny.member("sk_buff", "fclone") == btf.Member("fclone", 88, 1, 706, 2, "__u8")
    assert tiny.member("sock_common", "skc_reuseport") == btf.Member(
        "skc_reuseport", 15, 1, 124, 1, "unsigned char")
    with pytest.raises(btf.BTFError, match=r"sk_buff.fclone is a bitfield \(2 bits at bit 706\)"):
        tiny.offsetof("sk_buff", "fclone")


def test_tiny_prototypes(tiny):
    assert tiny.func_params("ip_rcv") == [("skb", "struct sk_buff *"), ("dev", "struct net_device *"),
                                          ("pt", "void *"), ("orig_dev", "struct net_device *")]
    assert tiny.skb_position("ip_rcv") == 1
    assert tiny.sock_position("ip_rcv") is None
    # Seen through const and a typedef: const skb_t *, const struct sock *.
    assert tiny.func_params("ip_output") == [("net", "struct net *"), ("sk", "const struct sock *"),
                                             ("skb", "const skb_t *")]
    assert (tiny.skb_position("ip_output"), tiny.sock_position("ip_output")) == (3, 2)
    assert tiny.arg_position("ip_output", "net") == 1   # a FWD (declared, never defined)
    assert tiny.func_params("no_skb") == [("count", "int"), ("names", "const char *const *"), ("", "...")]
    assert tiny.skb_position("no_skb") is None


@pytest.mark.parametrize("call, message", [
    (lambda b: b.offsetof("sk_bufff", "len"), "no struct sk_bufff in BTF"),
    (lambda b: b.offsetof("sk_buff", "lenn"), "struct sk_buff has no member lenn"),
    (lambda b: b.member("sk_buff", "headers.nope"), "struct sk_buff.headers has no member nope"),
    (lambda b: b.member("sk_buff", "len.x"), "sk_buff.len has type unsigned int, not a struct: no member x"),
    (lambda b: b.func_params("ip_rcvv"), "no function ip_rcvv in BTF"),
    (lambda b: b.skb_position("ip_rcvv"), "no function ip_rcvv in BTF"),
])
def test_tiny_errors_name_what_is_missing(tiny, call, message):
    with pytest.raises(btf.BTFError) as err:
        call(tiny)
    assert str(err.value) == message


def test_big_endian_blob_reads_the_same(tiny):
    """The same blob with every header field and type word byte-swapped, as a big-endian
    target (s390x) would write it; strings are bytes and stay as they are."""
    data = read("tiny.btf", "rb")
    fields = struct.unpack_from("<HBBIIIII", data)
    hdr_len, type_off, type_len = fields[3], fields[4], fields[5]
    words = array.array("I", data[hdr_len + type_off:hdr_len + type_off + type_len])
    words.byteswap()
    swapped = (struct.pack(">HBBIIIII", *fields) + data[24:hdr_len + type_off] + words.tobytes()
               + data[hdr_len + type_off + type_len:])
    other = btf.BTF(swapped)
    assert other.member("sk_buff", "fclone") == tiny.member("sk_buff", "fclone")
    assert other.func_params("ip_output") == tiny.func_params("ip_output")


@pytest.mark.parametrize("mangle, message", [
    (lambda d: d[:10], "not a BTF blob: 10 bytes is shorter than a BTF header"),
    (lambda d: b"\0\0" + d[2:], "not a BTF blob: magic 0x0000, expected 0xeb9f"),
    (lambda d: d[:-100], "truncated BTF blob: sections run past its {} bytes".format(len(read("tiny.btf", "rb")) - 100)),
])
def test_broken_blobs(mangle, message):
    with pytest.raises(btf.BTFError) as err:
        btf.BTF(mangle(read("tiny.btf", "rb")))
    assert str(err.value) == message


def test_load_names_the_unreadable_file(tmp_path):
    with pytest.raises(btf.BTFError, match=r"^cannot read BTF .*/absent: No such file or directory$"):
        btf.load(str(tmp_path / "absent"))


# -- recordings of this machine's kernel ---------------------------------------------------

def test_recorded_pahole_agrees_with_recorded_reader():
    """parse_pahole on the recorded text gives what the reader answered on the same kernel."""
    recorded = json.loads(read("reader-{}.json".format(RECORDED_RELEASE)))
    parsed = parse_pahole(read("pahole-{}.txt".format(RECORDED_RELEASE)))
    assert sorted(parsed) == sorted(LIVE_STRUCTS) == sorted(recorded["structs"])
    for name, expected in recorded["structs"].items():
        assert parsed[name].size == expected["size"]
        assert dict((path, list(m[1:])) for path, m in parsed[name].members.items()) == expected["members"]
    assert parsed["sk_buff"].members["len"].offset == 112


# -- live: this machine's kernel ----------------------------------------------------------

@pytest.fixture(scope="module")
def vmlinux():
    require(os.path.exists(btf.VMLINUX), "no {} on this kernel".format(btf.VMLINUX))
    return btf.load()


def test_live_reader_matches_pahole(vmlinux):
    require(shutil.which("pahole") is not None, "pahole (Debian package dwarves) is not installed")
    assert compare_with_pahole(vmlinux, pahole_text(btf.VMLINUX, LIVE_STRUCTS)) == []


def test_live_tiny_matches_pahole(tiny):
    """pahole of this host (maybe not the one that recorded tiny.pahole.txt) agrees too."""
    require(shutil.which("pahole") is not None, "pahole (Debian package dwarves) is not installed")
    assert compare_with_pahole(tiny, pahole_text(TINY, ["sk_buff", "sock_common", "in6_addr"])) == []


def test_live_prototypes(vmlinux):
    # ip_rcv(skb, dev, pt, orig_dev) on every kernel; ip_output(net, sk, skb) from 4.4
    # (docs/kernel-facts.md, "Functions and argument positions").
    assert vmlinux.skb_position("ip_rcv") == 1
    assert vmlinux.func_params("ip_rcv")[0] == ("skb", "struct sk_buff *")
    assert (vmlinux.skb_position("ip_output"), vmlinux.sock_position("ip_output")) == (3, 2)
    if platform.release() == RECORDED_RELEASE:
        recorded = json.loads(read("reader-{}.json".format(RECORDED_RELEASE)))["functions"]
        for func, answer in recorded.items():
            assert [list(p) for p in vmlinux.func_params(func)] == answer["params"], func
            assert vmlinux.skb_position(func) == answer["skb"], func
            assert vmlinux.sock_position(func) == answer["sock"], func


def test_enum_values_by_number(tiny):
    assert tiny.enum_values("skb_drop_reason") == {
        0: "SKB_NOT_DROPPED_YET", 1: "SKB_CONSUMED", 2: "SKB_DROP_REASON_NOT_SPECIFIED",
        3: "SKB_DROP_REASON_NO_SOCKET"}


def test_signed_enum_values(tiny):
    assert tiny.enum_values("signed_example") == {-2: "NEGATIVE", 7: "POSITIVE"}


def test_absent_enum_is_empty(tiny):
    assert tiny.enum_values("sk_buff") == {}
