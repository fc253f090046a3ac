"""The bpf backend's program with the manifest extras (backends/bpf/build.py): custom
fields, args (reason), caller, peek.

Builds are typed with what a real kernel's BTF answered (tests/data/bpf/types-*.json,
recorded by tests/data/bpf/capture_types.py from the 6.1 lab kernel's and this machine's
6.18 BTF). Golden programs regenerate as tests/conftest.py says.
"""
import json
import os

import pytest

from conftest import golden
from . import DATA, DEV_618, LAB_61
from legacytrace import backends, manifest
from legacytrace.backends import bpf
from legacytrace.backends.bpf import build as bpf_build
from legacytrace.errors import UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel import btf
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest


LAB_618 = dict(DEV_618, kprobe_events=True, kprobe_pmu=True)


class Recorded(object):
    """bpf_build.Types answering from a recording of a real kernel's BTF."""

    def __init__(self, release):
        with open(os.path.join(DATA, "types-{}.json".format(release))) as recording:
            self.answers = json.load(recording)

    def member(self, struct_name, path):
        """The recorded C type and size (all the bpf backend reads of a member)."""
        answer = self.answers["member"]["{} {}".format(struct_name, path)]
        if isinstance(answer, dict):
            raise btf.BTFError(answer["error"])
        ctype, size = answer
        return btf.Member(path, None, size, None, 0, ctype)

    def signed(self, ctype):
        return self.answers["signed"][ctype]

    def enum(self, name):
        return self.answers["enum"][name]


def backend_for(release):
    return bpf.BpfBackend(types_for=lambda host: Recorded(release))


def build(facts, probes, release=None):
    release = release or facts["release"]
    request = TraceRequest(probes, FlowFilter(), HostFacts(**facts), run_id="lt4242")
    return backend_for(release).build(request)


def bundled(facts, *names):
    """The probes the bundled manifests resolve to on the kernel of `facts`."""
    kernel = HostFacts(**facts).kernel
    return [probe for name in names
            for probe in manifest.resolve(manifest.load(name), kernel).probes]


MANIFESTS = ("drops", "http1", "tcp-connect")


def test_bundled_manifests_on_the_lab_kernel_match_golden():
    golden("bpf/kprobe-manifests-6.1.bt", build(LAB_61, bundled(LAB_61, *MANIFESTS)).text)


def test_bundled_manifests_on_a_6_18_kernel_with_kprobes_match_golden():
    golden("bpf/kprobe-manifests-6.18.bt", build(LAB_618, bundled(LAB_618, *MANIFESTS)).text)


def test_drops_reads_the_reason_argument_the_return_address_and_the_mark():
    text = build(LAB_61, bundled(LAB_61, "drops")).text
    assert "\\treason=%llu,caller=%s,mark=%llu\\t" in text
    # kfree_skb_reason(struct sk_buff *skb, enum skb_drop_reason reason): the 2nd argument.
    assert '(uint64)arg1 & 0xffffffff, ksym(*(uint64 *)reg("sp")), ' \
           '(uint64)$skb->mark & 0xffffffff, comm);' in text


def test_6_11_drops_reads_the_reason_as_third_argument():
    facts = dict(LAB_618)
    probes = bundled(facts, "drops")
    assert [p.name for p in probes] == ["sk_skb_reason_drop"]
    assert "(uint64)arg2 & 0xffffffff" in build(facts, probes).text


def test_peek_layout_comes_from_the_kernels_btf():
    six_one = build(LAB_61, bundled(LAB_61, "http1")).text
    # 6.1: ITER_UBUF is 6, ITER_IOVEC 0, the iovecs are `iov`.
    assert "if ($lt_itype == 6) {\n    $lt_ubase = (uint64)$lt_msg->msg_iter.ubuf;" in six_one
    assert "if ($lt_itype == 0) {\n    $lt_ubase = (uint64)$lt_msg->msg_iter.iov->iov_base;" \
        in six_one
    six_eighteen = build(LAB_618, bundled(LAB_618, "http1")).text
    # 6.18: enum iter_type was reordered (ITER_UBUF first) and iov became __iov (6.4).
    assert "if ($lt_itype == 0) {\n    $lt_ubase = (uint64)$lt_msg->msg_iter.ubuf;" in six_eighteen
    assert "msg_iter.__iov->iov_base" in six_eighteen and "if ($lt_itype == 1)" in six_eighteen
    for text in (six_one, six_eighteen):
        assert "$lt_msg = (struct msghdr *)arg1;" in text
        assert "if ($lt_plen > 64) { $lt_plen = 64; }" in text
        assert "\\tpeek=%rx\\t" in text and "buf(uptr($lt_ubase), $lt_plen), comm);" in text


class IovIterBefore60(Recorded):
    """5.14..5.19's iov_iter as the reader sees it: iter_type and iov, no ubuf, no ITER_UBUF
    (include/linux/uio.h of 5.19); the rest answers as 6.1."""

    def member(self, struct_name, path):
        if (struct_name, path) == ("iov_iter", "ubuf"):
            raise btf.BTFError("struct iov_iter has no member ubuf")
        return super(IovIterBefore60, self).member(struct_name, path)

    def enum(self, name):
        values = dict(super(IovIterBefore60, self).enum(name))
        values.pop("ITER_UBUF")
        return values


def test_a_kernel_without_iter_ubuf_reads_only_iovecs():
    request = TraceRequest(bundled(LAB_61, "http1"), FlowFilter(),
                           HostFacts(**dict(LAB_61, release="5.19.0-1-amd64")), run_id="lt1")
    text = bpf.BpfBackend(types_for=lambda host: IovIterBefore60("6.1.0-56-amd64")).build(
        request).text
    assert "msg_iter.ubuf" not in text and "msg_iter.iov->iov_base" in text


def test_a_long_peek_raises_bpftraces_string_length():
    probe = bundled(LAB_61, "http1")[0]
    assert "BPFTRACE_STRLEN" not in build(LAB_61, [probe]).part.env
    probe.peek = {"arg": "msg", "bytes": 128}
    program = build(LAB_61, [probe])
    assert program.part.env["BPFTRACE_STRLEN"] == "128"
    assert "if ($lt_plen > 128) { $lt_plen = 128; }" in program.text


def test_bpftrace_is_told_where_the_kernels_btf_is():
    """bpftrace 0.17 finds no BTF by object id before 5.11 (the 5.10 lab kernel): the file."""
    assert bpf_build.bpftrace_env([], "/sys/kernel/btf/vmlinux")["BPFTRACE_BTF"] == \
        "/sys/kernel/btf/vmlinux"
    assert "BPFTRACE_BTF" not in bpf_build.bpftrace_env([], None)


@pytest.mark.parametrize("buffer_kb, pages", [(64, 16), (4096, 1024), (4097, 2048), (100, 32)])
def test_the_buffer_size_is_bpftraces_perf_ring_in_a_power_of_two_pages(buffer_kb, pages):
    env = bpf_build.bpftrace_env([], None, buffer_kb)
    assert env["BPFTRACE_PERF_RB_PAGES"] == str(pages)


def test_the_backend_says_it_peeks():
    assert "peek" in backends.get("bpf").features


def field(path, name="f", release="6.1.0-56-amd64", roots=None):
    roots = roots or {"skb": "$skb", "sk": "$sk", "skb_shinfo(skb)": bpf_build._SHINFO}
    return bpf_build.field_extra("fn", name, path, roots, Recorded(release))


@pytest.mark.parametrize("path, expr, conversion", [
    ("skb.mark", "(uint64)$skb->mark & 0xffffffff", "%llu"),
    ("skb.dev.name", "buf($skb->dev->name, 16)", "%rx"),
    ("skb.dev.ifindex", "(int64)$skb->dev->ifindex", "%lld"),
    ("skb.dev", "(uint64)$skb->dev", "%llu"),
    ("skb.tstamp", "(int64)$skb->tstamp", "%lld"),
    ("skb_shinfo(skb).gso_size",
     "(uint64)((struct skb_shared_info *)($skb->head + $skb->end))->gso_size & 0xffff", "%llu"),
    ("sk.__sk_common.skc_state", "(uint64)$sk->__sk_common.skc_state & 0xff", "%llu"),
    ("sk.__sk_common.skc_dport", "(uint64)$sk->__sk_common.skc_dport & 0xffff", "%llu"),
])


def test_field_paths_compile_to_btf_typed_expressions(path, expr, conversion):
    extra = field(path)
    assert (extra.name, extra.expr, extra.conversion) == ("f", expr, conversion)


@pytest.mark.parametrize("path, words", [
    ("skb.no_such_member", "field f (skb.no_such_member): struct sk_buff has no member "
                           "no_such_member: name a member the kernel's BTF has"),
    ("skb.dev.no_such_member", "struct net_device has no member no_such_member"),
    ("skb.len.value", "sk_buff.len has type unsigned int, not a struct"),
    ("sk.__sk_common", "field f (sk.__sk_common) is a struct sock_common, not a number"),
])


def test_a_path_the_kernel_lacks_is_a_usage_error_naming_the_field(path, words):
    with pytest.raises(UsageError) as err:
        field(path)
    assert words in str(err.value) and "function fn" in str(err.value)


@pytest.mark.parametrize("name, path", [
    ("f", 'skb.len); system("id"'), ("f", "skb.len\n}"), ("f", "skb->len"), ("f", "$skb.len"),
    ("f", "skb"), ("f", None), ('f"x', "skb.len"), ("F", "skb.len"), (None, "skb.len"),
    ("f\n", "skb.len")])


def test_hostile_fields_never_reach_the_program(name, path):
    with pytest.raises(UsageError, match=r"field (name .* must be lower-case|\S+ has path)"):
        build(LAB_61, [Probe("ip_rcv", 1, fields={name: path})])


@pytest.mark.parametrize("name", ["reason", "caller", "peek", "request"])
def test_a_field_may_not_take_a_name_the_backend_fills(name):
    with pytest.raises(UsageError, match="custom field '{}' has the name".format(name)):
        build(LAB_61, [Probe("ip_rcv", 1, fields={name: "skb.len"})])


def test_sk_fields_read_the_socket_argument_else_the_packets_socket():
    with_sk = build(LAB_61, [Probe("ip_output", 3, 2, fields={"fam": "sk.__sk_common.skc_family"})])
    assert "(uint64)$sk->__sk_common.skc_family & 0xffff, comm);" in with_sk.text
    only_skb = build(LAB_61, [Probe("ip_rcv", 1, fields={"fam": "sk.__sk_common.skc_family"})])
    assert "(uint64)$skb->sk->__sk_common.skc_family & 0xffff, comm);" in only_skb.text


def test_a_socket_function_has_no_skb_fields():
    with pytest.raises(UsageError, match="field len reads skb, which this probe does not have"):
        build(LAB_61, [Probe("tcp_connect", None, 1, fields={"len": "skb.len"})])


def test_tracepoint_mode_reads_fields_of_its_skb_and_names_the_location_caller():
    probes = [Probe("kfree_skb_reason", 1, fields={"mark": "skb.mark", "fam": "sk.__sk_common.skc_family"})]
    text = build(DEV_618, probes).text
    assert "\\tcaller=%s,reason=%d,mark=%llu,fam=%llu\\t" in text
    assert "(uint64)$skb->mark & 0xffffffff, (uint64)$skb->sk->__sk_common.skc_family & 0xffff" \
        in text


def test_tracepoint_mode_cannot_peek_and_says_so_once():
    program = build(DEV_618, [Probe("__dev_queue_xmit", 1, args={"msg": 2},
                                    peek={"arg": "msg", "bytes": 64})])
    assert [w for w in program.warnings if "peek" in w] == [
        "__dev_queue_xmit: events without the payload (peek): a tracepoint has no struct msghdr * "
        "and this kernel has no kprobes; the stap or ftrace backend can peek on a kernel with "
        "kprobes"]
    assert "buf(" not in program.text


def test_without_readable_btf_fields_and_peeks_are_skipped_with_a_warning():
    def unreadable(host):
        raise btf.BTFError("cannot read BTF /nowhere: No such file or directory")
    request = TraceRequest(bundled(LAB_61, "drops", "http1"), FlowFilter(),
                           HostFacts(**LAB_61), run_id="lt1")
    program = bpf.BpfBackend(types_for=unreadable).build(request)
    warnings = program.warnings
    assert "kfree_skb_reason: custom fields (mark) skipped: the bpf backend types them from the " \
           "target's BTF, which could not be read (cannot read BTF /nowhere: No such file or " \
           "directory)" in warnings
    assert any(w.startswith("tcp_sendmsg: events without the payload (peek)") for w in warnings)
    assert "reason=%llu,caller=%s\\t" in program.text and "buf(" not in program.text


def test_btf_is_read_only_when_a_probe_needs_it():
    def refuse(host):
        raise AssertionError("BTF read for a manifest without fields or peeks")
    request = TraceRequest([Probe("ip_rcv", 1)], FlowFilter(), HostFacts(**LAB_61), run_id="lt1")
    bpf.BpfBackend(types_for=refuse).build(request)


def test_recorded_facts_of_another_kernel_do_not_read_this_machines_btf():
    with pytest.raises(btf.BTFError, match="not of the target's 3.10.0-1160.el7.x86_64"):
        bpf_build.load_types(HostFacts(**dict(LAB_61, release="3.10.0-1160.el7.x86_64")))
