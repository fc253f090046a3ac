"""The ftrace backend's share of the manifest extras: custom field paths, drop reason,
caller and peek in kprobe_events lines, for EL7 3.10 and the lab's 6.1 (golden files).

The 6.1 types come from `tests/data/ftrace/pahole-6.1.0-56-amd64.txt` (pahole over the lab
kernel's own BTF, see tests/data/ftrace/README.md); EL7's from its known-builds table.
The golden files regenerate as tests/conftest.py says.
"""
import re
from pathlib import Path

import pytest

from conftest import DATA, golden, saved_host
from legacytrace import manifest
from legacytrace.backends.ftrace import FtraceBackend
from legacytrace.errors import UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel import btf, offsets, structs
from legacytrace.kernel.x86_64 import ARG_REGISTERS
from legacytrace.model import Probe, TraceRequest

PAHOLE_61 = Path(DATA) / "ftrace" / "pahole-6.1.0-56-amd64.txt"


def pahole_61():
    """The saved pahole text; parse_pahole does not read an inline enum bitfield
    (net_device.rtnl_link_state): that one member is left out."""
    return re.sub(r"\n\tenum \{[^}]*\} \w+:\d+;[^\n]*", "", PAHOLE_61.read_text())


class PaholeTypes(object):
    """legacytrace.kernel.btf.BTF's member()/enum_values() over saved pahole text."""

    def __init__(self, text):
        self.structs = offsets.parse_pahole(text)
        self.enums = {}
        for name, body in re.findall(r"^enum (\w+) \{\n(.*?)^\};", text, re.M | re.S):
            self.enums[name] = dict((int(value), key) for key, value in
                                    re.findall(r"^\t(\w+)\s*=\s*(\d+),", body, re.M))

    def member(self, struct_name, path):
        """As BTF.member: a path dotted through embedded structs ("__sk_common.skc_state"),
        or one pahole flattened ("headers.network_header")."""
        members = self.structs.get(struct_name)
        if members is not None and path in members.members:
            return members.members[path]
        if "." in path:
            return structs.dotted(self._direct, struct_name, path)
        return self._direct(struct_name, path)

    def _direct(self, struct_name, name):
        try:
            return self.structs[struct_name].members[name]
        except KeyError:
            raise btf.BTFError("struct {} has no member {}".format(struct_name, name))

    def enum_values(self, name):
        return self.enums.get(name, {})


def backend_61():
    text = pahole_61()
    types = PaholeTypes(text)

    def layout_for(host):
        layout = offsets.from_pahole(host.release, [str(PAHOLE_61)],
                                     pahole=lambda vmlinux, struct: text)
        layout.origin = PAHOLE_61.name
        return layout
    return FtraceBackend(layout_for=layout_for, types_for=lambda layout: types)


def backend_el7():
    return FtraceBackend(layout_for=lambda host: offsets.from_table(host.release))


HOSTS = {"61": ("lab-6.1.json", backend_61), "el7": ("el7-3.10.json", backend_el7)}


def build(host_key, probes, flow=None):
    name, make = HOSTS[host_key]
    request = TraceRequest(probes, flow or FlowFilter(), saved_host(name), run_id="lt4242")
    return make().build(request)


def build_manifest(host_key, name, flow=None):
    facts = saved_host(HOSTS[host_key][0])
    probes = manifest.resolve(manifest.load(name), facts.kernel).probes
    return build(host_key, probes, flow)


def args_of(program, index=0):
    return dict(arg.split("=", 1) for arg in program.part.definitions[index].args)


@pytest.mark.parametrize("host_key, name, flow", [
    ("61", "http1", dict(proto="tcp", dport="80")),
    ("el7", "http1", dict(proto="tcp", dport="80")),
    ("61", "drops", dict(proto="udp")),
    ("el7", "drops", dict(proto="udp")),
    ("61", "tcp-connect", {}),
    ("el7", "tcp-connect", {}),
    ("61", "icmp-senders", dict(proto="icmp")),
    ("el7", "icmp-senders", dict(proto="icmp")),
    ("61", "generic", {}),
    ("el7", "generic", {}),
])
def test_bundled_manifest_programs_match_golden(host_key, name, flow):
    program = build_manifest(host_key, name, FlowFilter.parse(**flow))
    text = program.text + "".join("# warning: {}\n".format(w) for w in program.warnings)
    golden("ftrace/{}-{}.txt".format(name, host_key), text)


def test_reason_and_caller_at_entry():
    args = args_of(build_manifest("61", "drops"))
    assert args["reason"] == "%si:x32"                     # kfree_skb_reason(skb, reason)
    assert args["caller"] == "+0($stack):x64"
    assert args["c_mark"] == "+168(%di):x32"               # pahole: __u32 mark at 168
    sk = build("el7", [Probe("sk_skb_reason_drop", 2, 1, args={"reason": 3}, caller=True)])
    assert args_of(sk)["reason"] == "%dx:u32" and args_of(sk)["caller"] == "+0($stack):u64"


def test_el7_table_lacks_mark_the_field_is_left_out_with_a_warning():
    program = build_manifest("el7", "drops")
    assert "c_mark" not in args_of(program)
    assert args_of(program)["caller"] == "+0($stack):u64"
    (warning,) = [w for w in program.warnings if "mark" in w]
    assert warning.startswith("kfree_skb: field mark (skb.mark) left out: ")
    assert "sk_buff.mark" in warning and "--backend stap" in warning and "\n" not in warning


@pytest.mark.parametrize("path, expected", [
    ("skb.len", "+112(%di):x32"),
    ("skb.dev.name", "+0(+16(%di)):string"),               # pointer chased, char[16] as text
    ("skb.dev.mtu", "+{mtu}(+16(%di)):x32"),
    ("skb.sk.__sk_common.skc_state", "+18(+24(%di)):x8"),   # no sk_pos: skb->sk
    ("sk.__sk_common.skc_state", "+18(+24(%di)):x8"),
    ("skb.pkt_type", "+128(%di):b3@0/8"),                  # a bitfield in its container
    ("skb.sk.sk_sndbuf", "+{sndbuf}(+24(%di)):x32"),
])
def test_field_paths_on_61(path, expected):
    types = PaholeTypes(pahole_61())
    expected = expected.format(mtu=types.member("net_device", "mtu").offset,
                               sndbuf=types.member("sock", "sk_sndbuf").offset)
    program = build("61", [Probe("ip_rcv", 1, fields={"f": path})])
    assert args_of(program)["c_f"] == expected


def test_sk_paths_use_sk_pos_when_given():
    program = build("61", [Probe("tcp_connect", sk_pos=1, fields={"s": "sk.sk_sndbuf"})])
    assert re.match(r"^\+\d+\(%di\):x32$", args_of(program)["c_s"])
    el7 = build("el7", [Probe("ip_output", 2, 1, fields={"s": "sk.__sk_common.skc_state"})])
    assert args_of(el7)["c_s"] == "+18(%di):u8"            # sk in %di, skb in %si
    assert args_of(el7)["skb"] == "%si:u64"


@pytest.mark.parametrize("host_key, path, why", [
    ("61", "skb_shinfo(skb).gso_size", "skb->head + skb->end"),
    ("61", "skb.nosuch", "no member nosuch"),
    ("61", "skb.len.x", "not a struct or a pointer"),
    ("61", "skb.headers", "name one of its members"),
    ("61", "skb.dev", None),                                # a pointer: its address, a number
])
def test_paths_the_layout_cannot_resolve_are_usage_errors(host_key, path, why):
    probe = Probe("ip_rcv", 1, fields={"f": path})
    if why is None:
        assert args_of(build(host_key, [probe]))["c_f"] == "+16(%di):x64"
        return
    with pytest.raises(UsageError) as err:
        build(host_key, [probe])
    assert why in str(err.value) and "\n" not in str(err.value)
    assert "field f ({}) of ip_rcv".format(path) in str(err.value)


@pytest.mark.parametrize("path, missing", [
    ("skb.dev.mtu", "net_device.mtu"), ("sk.sk_sndbuf", "sock.sk_sndbuf")])
def test_el7_members_not_in_the_table_are_left_out(path, missing):
    program = build("el7", [Probe("ip_rcv", 1, fields={"f": path})])
    assert "c_f" not in args_of(program)
    assert [w for w in program.warnings if missing in w and "field f ({})".format(path) in w]


def test_field_without_its_argument():
    with pytest.raises(UsageError) as err:
        build("61", [Probe("tcp_connect", sk_pos=1, fields={"l": "skb.len"})])
    assert "field l reads skb, which this probe does not have" in str(err.value)


def test_peek_on_61_reads_both_iov_iter_views_and_the_type():
    args = args_of(build_manifest("61", "http1"))
    # msghdr.msg_iter at 16; iov_iter: iter_type u8 at 0, iov/ubuf (a union) at 24; iovec.iov_base at 0
    # 64 bytes as eight user-memory words per view (6.1 refuses +u in arrays)
    assert [args["pi{}".format(at)] for at in (0, 8, 56)] == [
        "+u0(+0(+40(%si))):x64", "+u8(+0(+40(%si))):x64", "+u56(+0(+40(%si))):x64"]
    assert [args["pu{}".format(at)] for at in (0, 56)] == ["+u0(+40(%si)):x64", "+u56(+40(%si)):x64"]
    assert "pi64" not in args and "pu64" not in args
    assert args["it6"] == "+16(%si):x8"                    # ITER_UBUF is 6 on 6.1
    assert build_manifest("61", "http1").warnings == []


def test_peek_before_5_3_is_one_warning_naming_the_function_and_stap():
    program = build_manifest("el7", "http1")
    assert program.warnings == [
        "tcp_sendmsg: ftrace cannot read user memory on kernel 3.10.0-1160.el7.x86_64 "
        "(kprobe_events needs the +u fetch of 5.3): the event comes "
        "without the payload; use --backend stap"]
    assert not any(re.match(r"p[iu]\d+=|it\d", arg) for arg in program.part.definitions[0].args)


def test_peek_where_the_types_lack_msghdr_is_a_warning():
    facts = saved_host("lab-6.1.json")
    backend = FtraceBackend(layout_for=backend_61()._layout_for)   # LayoutTypes: no msghdr
    probes = manifest.resolve(manifest.load("http1"), facts.kernel).probes
    program = backend.build(TraceRequest(probes, FlowFilter(), facts, run_id="lt4242"))
    assert len(program.warnings) == 1
    assert "cannot find the user buffer of struct msghdr" in program.warnings[0]


@pytest.mark.parametrize("probe", [
    Probe("x", 1, args={"reason": 7}), Probe("x", 1, args={"reason; rm": 2}),
    Probe("x", 1, args={"msg": 2}, peek={"arg": "msg", "bytes": 129}),
    Probe("x", 1, peek={"arg": "msg", "bytes": 8}),
    Probe("x", 1, fields={"Bad": "skb.len"}), Probe("x", 1, fields={"f": "skb.len) x"}),
    Probe("x", kind="return", caller=True),
])
def test_hostile_or_invalid_extras_are_usage_errors(probe):
    with pytest.raises(UsageError):
        build("61", [probe])


def test_registers_are_the_x86_64_argument_order():
    assert ARG_REGISTERS == ("%di", "%si", "%dx", "%cx", "%r8", "%r9")
