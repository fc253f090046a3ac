"""legacytrace.kernel.offsets: which source gives a kernel's struct layout, the EL7 table, pahole's
text (recorded on this machine, tests/data/btf/), and the error when nothing applies."""
import os
import pkgutil
import shutil

import pytest
import yaml

from conftest import DATA, require
from legacytrace.kernel import btf, offsets
from legacytrace.kernel.host import HostFacts
from legacytrace.kernel.offsets import Field

TINY = os.path.join(DATA, "btf", "tiny.btf")
PAHOLE_RELEASE = "6.18.44-fc-v669"
EL7 = "3.10.0-1160.el7.x86_64"


def recorded_pahole(vmlinux, struct):
    """Stands in for run_pahole: pahole's text captured on this machine (all five structs)."""
    with open(os.path.join(DATA, "btf", "pahole-{}.txt".format(PAHOLE_RELEASE))) as text:
        return text.read()


@pytest.fixture
def vmlinux(tmp_path):
    """A debuginfo vmlinux that exists (pahole itself is replaced by recorded_pahole)."""
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x7fELF")
    return str(path)


# -- source order ---------------------------------------------------------------------------

def test_btf_comes_first_even_for_a_known_build(vmlinux):
    layout = offsets.find_layout(EL7, btf_path=TINY, vmlinux_paths=[vmlinux], pahole=recorded_pahole)
    assert (layout.source, layout.origin, layout.notes) == ("btf", TINY, [])
    assert layout.field("sk_buff", "len") == Field(80, 4)
    assert layout.field("sock_common", "skc_v6_daddr") == Field(16, 16)


def test_known_build_comes_before_pahole(vmlinux):
    layout = offsets.find_layout(EL7, btf_path=None, vmlinux_paths=[vmlinux], pahole=recorded_pahole)
    assert (layout.source, layout.origin, layout.notes) == ("table", "el7-x86_64", ["no BTF"])


def test_pahole_is_the_last_resort(vmlinux):
    layout = offsets.find_layout(PAHOLE_RELEASE, btf_path="/nonexistent/btf",
                                 vmlinux_paths=["/nonexistent/vmlinux", vmlinux], pahole=recorded_pahole)
    assert (layout.source, layout.origin) == ("pahole", vmlinux)
    assert layout.notes == ["no BTF", "not a known build"]
    assert layout.describe() == "pahole " + vmlinux


def test_a_source_lacking_a_required_member_is_skipped(monkeypatch):
    """tiny.btf has no sk_buff.truesize: BTF is passed over, with the reason kept for doctor."""
    monkeypatch.setitem(offsets.WANTED, "sk_buff", offsets.WANTED["sk_buff"] + ("truesize",))
    builds = yaml.safe_load(known_builds())
    builds["builds"][0]["structs"]["sk_buff"]["truesize"] = [240, 4]
    layout = offsets.find_layout(EL7, btf_path=TINY, table=yaml.safe_dump(builds))
    assert layout.source == "table"
    assert layout.notes == ["BTF {} has no sk_buff.truesize".format(TINY)]
    assert layout.field("sk_buff", "truesize") == Field(240, 4)


def test_layout_for_host_facts_uses_its_btf():
    assert offsets.layout_for(HostFacts(release=EL7, btf=None)).source == "table"
    assert offsets.layout_for(HostFacts(release=EL7, btf=TINY)).source == "btf"


# -- the table of known builds -----------------------------------------------------------------

def known_builds():
    return pkgutil.get_data("legacytrace.kernel.layouts", offsets.KNOWN_BUILDS).decode("utf-8")


@pytest.mark.parametrize("release", [
    "3.10.0-1160.el7.x86_64", "3.10.0-1160.119.1.el7.x86_64", "3.10.0-123.el7.x86_64",
    "3.10.0-957.27.2.el7.x86_64",
])
def test_el7_releases_match_the_table(release):
    layout = offsets.from_table(release)
    assert (layout.source, layout.origin, layout.release) == ("table", "el7-x86_64", release)


@pytest.mark.parametrize("release", [
    "3.10.0-1160.el7.centos.plus.x86_64",        # another config
    "3.10.0-1160.rt56.1131.el7.x86_64",          # PREEMPT_RT
    "3.10.0-1160.el7.ppc64le", "3.10.105", "4.18.0-513.el8.x86_64", "6.1.0-56-amd64",
])
def test_other_releases_are_not_el7(release):
    with pytest.raises(offsets.LayoutError, match="no BTF, not a known build, no debuginfo"):
        offsets.find_layout(release, vmlinux_paths=[])


def test_el7_table_holds_the_measured_offsets():
    """The values of docs/kernel-facts.md, "Struct layouts" (3.10.0-1160)."""
    layout = offsets.from_table(EL7)
    skb = dict((m, f.offset) for m, f in layout.structs["sk_buff"].items())
    assert skb == {"sk": 24, "dev": 32, "cb": 40, "len": 104, "data_len": 108, "protocol": 126,
                   "transport_header": 192, "network_header": 194, "mac_header": 196,
                   "tail": 216, "end": 220, "head": 224, "data": 232}
    # EL7's header offsets are __u16 (upstream 3.10's are 32-bit): the fetch width.
    assert [layout.field("sk_buff", m).size for m in ("transport_header", "network_header",
                                                       "mac_header")] == [2, 2, 2]
    assert layout.field("sk_buff", "len") == Field(104, 4)
    assert layout.field("sk_buff", "head") == Field(224, 8)
    common = dict((m, f.offset) for m, f in layout.structs["sock_common"].items() if f)
    assert common == {"skc_daddr": 0, "skc_rcv_saddr": 4, "skc_dport": 12, "skc_num": 14,
                      "skc_family": 16, "skc_state": 18, "skc_v6_daddr": 56,
                      "skc_v6_rcv_saddr": 72}
    assert layout.field("net_device", "name") == Field(0, 16)


def test_el7_table_has_the_ipv6_addresses_and_nothing_it_was_not_given():
    layout = offsets.from_table(EL7)
    assert layout.field("sock_common", "skc_v6_daddr") == Field(56, 16)
    assert layout.field("sock_common", "skc_v6_rcv_saddr") == Field(72, 16)
    with pytest.raises(offsets.LayoutError) as err:
        layout.field("sock_common", "skc_bound_dev_if")
    assert str(err.value) == ("kernel 3.10.0-1160.el7.x86_64 has no sock_common.skc_bound_dev_if "
                              "in its struct layout (from table el7-x86_64)")


# -- pahole ---------------------------------------------------------------------------------

def test_pahole_layout_from_recorded_text(vmlinux):
    """Values read by eye from tests/data/btf/pahole-6.18.44-fc-v669.txt."""
    layout = offsets.from_pahole(PAHOLE_RELEASE, [vmlinux], recorded_pahole)
    assert layout.field("sk_buff", "len") == Field(112, 4)
    assert layout.field("sk_buff", "dev") == Field(16, 8)       # in two anonymous unions
    assert layout.field("sk_buff", "protocol") == Field(176, 2)  # in struct_group(headers)
    assert layout.field("sk_buff", "network_header") == Field(180, 2)
    assert layout.field("sk_buff", "head") == Field(192, 8)
    assert layout.field("sock_common", "skc_dport") == Field(12, 2)
    assert layout.field("sock_common", "skc_v6_rcv_saddr") == Field(72, 16)
    assert layout.field("net_device", "name") == Field(280, 16)


def test_parse_pahole_structure():
    with open(os.path.join(DATA, "btf", "pahole-{}.txt".format(PAHOLE_RELEASE))) as text:
        parsed = offsets.parse_pahole(text.read())
    skb = parsed["sk_buff"]
    assert skb.size == 224
    assert skb.members["headers.network_header"] == skb.members["network_header"]._replace(
        path="headers.network_header")
    assert skb.members["headers"].ctype == "struct {...}"
    assert skb.members["cloned"] == btf.Member("cloned", 126, 1, 1008, 1, "__u8")
    assert skb.members["destructor"].ctype == "void (*)(struct sk_buff *)"
    assert parsed["iphdr"].members["version"] == btf.Member("version", 0, 1, 4, 4, "__u8")
    assert parsed["iphdr"].members["addrs.daddr"].offset == 16
    # A bitfield whose unit is wider than a byte: "/*  2184:24  8 */".
    assert parsed["net_device"].members["see_all_hwtstamp_requests"].bit_offset == 2184 * 8 + 24
    assert parsed["net_device"].members["priv"].ctype == "u8[0]"    # flexible array u8 priv[]
    assert parsed["net_device"].size == 2496                           # after "} __attribute__(...)"


@pytest.mark.parametrize("text, message", [
    ("struct a {\n\tint x;\n};\n", "line 2: cannot read 'int x;'"),
    ("struct a {\n\tunion {\n\t\tint x; /* 0 4 */\n\t}; /* 8 4 */\n};\n",
     "line 4: block at offset 8 starts with a member at 0: not absolute offsets"),
    ("struct a {\n\tunion {\n\t\tint x; /* 0 4 */\n};\n", "line 4: struct a ends inside a nested block"),
    ("struct a {\n\tint x; /* 0 4 */\n", "struct a has no closing line"),
])
def test_parse_pahole_refuses_what_it_cannot_read(text, message):
    with pytest.raises(offsets.PaholeFormatError) as err:
        offsets.parse_pahole(text)
    assert str(err.value) == message


def test_pahole_without_pahole_binary(vmlinux, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(offsets.LayoutError, match="debuginfo at {} but no pahole".format(vmlinux)):
        offsets.find_layout("4.4.0-1-amd64", vmlinux_paths=[vmlinux])


def test_pahole_that_prints_nothing(vmlinux):
    """The real run_pahole on a file pahole cannot read."""
    require(shutil.which("pahole") is not None, "pahole (Debian package dwarves) is not installed")
    with pytest.raises(offsets.LayoutError, match=r"pahole -C sk_buff {} printed nothing \(exit".format(vmlinux)):
        offsets.find_layout("4.4.0-1-amd64", vmlinux_paths=[vmlinux])


# -- nothing applies ---------------------------------------------------------------------------

def test_no_layout_error_names_what_is_missing():
    with pytest.raises(offsets.LayoutError) as err:
        offsets.find_layout("4.4.0-1-amd64", btf_path=None, vmlinux_paths=["/nonexistent/vmlinux"])
    assert str(err.value) == (
        "no struct layout for kernel 4.4.0-1-amd64: no BTF, not a known build, no debuginfo for pahole; "
        "use --backend stap, or install kernel-debuginfo-4.4.0-1-amd64 and pahole (dwarves)")
    assert "\n" not in str(err.value)
