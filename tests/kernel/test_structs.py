"""Field paths through the kernel's structs (legacytrace.kernel.structs), walked through the
tiny BTF of tests/data/btf (tiny.c says what it holds) and a layout without BTF."""
import os

import pytest

from conftest import DATA
from legacytrace.kernel import btf, offsets, structs

TINY = os.path.join(DATA, "btf", "tiny.btf")


def test_a_path_splits_into_its_root_struct_and_members():
    assert structs.split("skb.dev.name") == ("skb", "sk_buff", ["dev", "name"])
    assert structs.split("sk.__sk_common.skc_state") == (
        "sk", "sock", ["__sk_common", "skc_state"])
    assert structs.split("skb_shinfo(skb).gso_size") == (
        "skb_shinfo(skb)", "skb_shared_info", ["gso_size"])


class Types(object):
    """Members as BTF gives them, for a pointer, an embedded struct and numbers."""

    MEMBERS = {("sk_buff", "dev"): ("struct net_device *", 16, 8),
               ("sk_buff", "len"): ("unsigned int", 112, 4),
               ("net_device", "mtu"): ("unsigned int", 200, 4),
               ("sock", "__sk_common"): ("struct sock_common", 0, 136),
               ("sock", "__sk_common.skc_state"): ("volatile unsigned char", 18, 1)}

    def member(self, struct_name, path):
        try:
            ctype, offset, size = self.MEMBERS[(struct_name, path)]
        except KeyError:
            raise btf.BTFError("struct {} has no member {}".format(struct_name, path))
        return btf.Member(path, offset, size, offset * 8, 0, ctype)


def test_a_pointer_is_a_hop_and_an_embedded_struct_is_not():
    root, hops = structs.walk(Types(), "skb.dev.mtu")
    assert root == "skb" and [(h.struct, h.path) for h in hops] == [
        ("sk_buff", "dev"), ("net_device", "mtu")]
    root, hops = structs.walk(Types(), "sk.__sk_common.skc_state")
    assert [(h.struct, h.path, h.member.offset) for h in hops] == [
        ("sock", "__sk_common.skc_state", 18)]


def test_a_number_cannot_be_walked_through():
    with pytest.raises(structs.FieldPathError,
                       match="sk_buff.len has type unsigned int, not a struct or a pointer"):
        structs.walk(Types(), "skb.len.x")


def test_a_member_the_types_lack_is_their_error():
    with pytest.raises(btf.BTFError, match="struct net_device has no member nosuch"):
        structs.walk(Types(), "skb.dev.nosuch")


def test_a_layout_without_btf_walks_into_sock_common():
    layout = offsets.from_table("3.10.0-1160.el7.x86_64")
    found = offsets.LayoutTypes(layout).member("sock", "__sk_common.skc_state")
    assert (found.offset, found.size, found.bit_offset) == (18, 1, 144)
    with pytest.raises(offsets.LayoutError, match="has no sk_buff.mark"):
        offsets.LayoutTypes(layout).member("sk_buff", "mark")


def test_real_btf_through_a_pointer_and_into_an_embedded_struct():
    tiny = btf.load(TINY)
    root, hops = structs.walk(tiny, "skb.dev.ifindex")
    assert [(h.struct, h.path, h.member.ctype) for h in hops] == [
        ("sk_buff", "dev", "struct net_device *"), ("net_device", "ifindex", "int")]
    assert hops[1].member.offset == tiny.offsetof("net_device", "ifindex")
    root, hops = structs.walk(tiny, "skb.sk.__sk_common.skc_state")
    assert [(h.struct, h.path) for h in hops] == [
        ("sk_buff", "sk"), ("sock", "__sk_common.skc_state")]
    assert hops[1].member.offset == tiny.offsetof("sock_common", "skc_state")
