"""The stap backend's program (backends/stap/build.py): golden scripts (tests/golden/stap/,
regenerated as tests/conftest.py says), hostile input refused, extras where asked, a
module built elsewhere. Whether the scripts compile and run is proved in the lab
(tests/lab/test_stap.py).
"""
import collections
import ipaddress

import pytest

from conftest import golden, saved_host
from legacytrace import manifest
from legacytrace.backends import stap
from legacytrace.errors import UsageError
from legacytrace import filterexpr as fx
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest
from legacytrace.procfilter import ProcessFilter


#: 6.1 positions (docs/kernel-facts.md): ip_output/ip_finish_output (net, sk, skb).
PROBES_61 = [
    Probe("ip_rcv", 1), Probe("ip_local_deliver", 1), Probe("tcp_v4_rcv", 1),
    Probe("ip_output", 3, 2), Probe("ip_finish_output", 3, 2), Probe("__dev_queue_xmit", 1),
]


#: EL7 3.10.0-1160 positions: ip_output/ip_finish_output (sk, skb), ip_local_out_sk.
PROBES_EL7 = [
    Probe("ip_rcv", 1), Probe("ip_local_out_sk", 2, 1), Probe("ip_output", 2, 1),
    Probe("dev_queue_xmit", 1), Probe("kfree_skb", 1, egress=True),
]


def request(probes, flow=None, release="6.1.0-56-amd64", processes=None):
    return TraceRequest(probes, flow or FlowFilter(), HostFacts(release=release), run_id="lt4242",
                        processes=processes)


def build(probes, flow=None, release="6.1.0-56-amd64", processes=None):
    return stap.StapBackend().build(request(probes, flow, release, processes))


CASES = collections.OrderedDict([
    ("all-flows-61", lambda: build(PROBES_61)),
    ("icmp-from-host-61", lambda: build(PROBES_61, FlowFilter.parse(proto="icmp", saddr="10.0.2.15"))),
    ("udp6-dport-61", lambda: build(PROBES_61, FlowFilter.parse(
        proto="udp", daddr="fd00:1::/64", dport="53"))),
    ("tcp-fields-el7", lambda: build(
        PROBES_EL7[:3] + [Probe("tcp_v4_rcv", 1, fields=collections.OrderedDict([
            ("gso", "skb_shinfo(skb).gso_size"), ("mark", "skb.mark"),
            ("mtu", "skb.dev.mtu"), ("sndbuf", "sk.sk_sndbuf")]))],
        FlowFilter.parse(proto="tcp", sport="80"), release="3.10.0-1160.el7.x86_64")),
    ("http1-61", lambda: build_manifest("http1", "lab-6.1.json", FlowFilter.parse(
        proto="tcp", dport="80"))),
    ("http1-el7", lambda: build_manifest("http1", "el7-3.10.json", FlowFilter.parse(
        proto="tcp", dport="80"))),
    ("drops-61", lambda: build_manifest("drops", "lab-6.1.json", FlowFilter.parse(proto="udp"))),
    ("drops-el7", lambda: build_manifest("drops", "el7-3.10.json", FlowFilter.parse(proto="udp"))),
    ("process-el7", lambda: build(PROBES_EL7, FlowFilter.parse(proto="udp"),
                                  release="3.10.0-1160.el7.x86_64",
                                  processes=ProcessFilter([812, 900], ["nginx"]))),
])


def build_manifest(name, host, flow):
    """A bundled manifest resolved for a saved host, as `legacytrace generate` builds it."""
    facts = saved_host(host)
    probes = manifest.resolve(manifest.load(name), facts.kernel).probes
    return stap.StapBackend().build(TraceRequest(probes, flow, facts, run_id="lt4242"))


@pytest.mark.parametrize("case", list(CASES))
def test_golden(case):
    golden("stap/{}.stp".format(case), CASES[case]().text)


def test_build_is_pure_and_names_the_probes():
    first = build(PROBES_61, FlowFilter.parse(proto="udp"))
    second = build(PROBES_61, FlowFilter.parse(proto="udp"))
    assert first.text == second.text
    assert first.part.probes == [p.name for p in PROBES_61]
    assert first.part.release == "6.1.0-56-amd64"
    for probe in PROBES_61:
        assert 'kprobe.function("{}") ?'.format(probe.name) in first.text


def test_positions_reach_pointer_arg():
    text = build([Probe("ip_output", 3, 2)]).text
    assert "skb = pointer_arg(3)" in text
    text = build([Probe("ip_output", 2, 1)]).text
    assert "skb = pointer_arg(2)" in text


def test_filter_compiles_to_c_comparisons():
    text = build(PROBES_61, FlowFilter.parse(proto="tcp", saddr="192.168.0.0/16", dport="443")).text
    body = text[text.index("static int lt_flow_match"):]
    body = body[:body.index("\n}\n")]
    assert "p->family == 4 && lt_addr_in(p->saddr, lt_n0_net, lt_n0_mask, 4)" in body
    assert "(p->proto == 6) && p->dport == 443" in body
    assert "p->sport" not in body
    assert "lt_n0_net[16] = { 192, 168, 0, 0," in text
    assert "lt_n0_mask[16] = { 255, 255, 0, 0," in text


def test_empty_filter_keeps_everything():
    text = build(PROBES_61).text
    body = text[text.index("static int lt_flow_match"):]
    assert body[:body.index("\n}\n")].rstrip().endswith("return 1;")
    assert "lt_n0_net" not in text


HOSTILE_TEXT = [
    'ip_rcv") { system("id") } probe begin { x = ("',
    "ip_rcv%}",
    "ip_rcv\nprobe begin {}",
    "ip_rcv\n",
    "ip_rcv/*",
    "ip_rcv*/",
    "ip_rcv //",
    "a" * 200,
    "",
    "ip rcv",
    "ip_rcv;",
    "ip_rcv\x00",
    "ip_r\u00e9v",
]


@pytest.mark.parametrize("name", HOSTILE_TEXT)
def test_hostile_function_name_is_refused(name):
    with pytest.raises(UsageError):
        build([Probe(name, 1)])


@pytest.mark.parametrize("field", HOSTILE_TEXT + ["Len", "x" * 33, "9len"])
def test_hostile_field_name_is_refused(field):
    with pytest.raises(UsageError):
        build([Probe("ip_rcv", 1, fields={field: "skb.len"})])


@pytest.mark.parametrize("path", [
    'skb.len"); system("id', "skb.len%}", "skb.len\n", "skb./*len", "skb.len*/",
    "skb->len", "skb.len + 1", "skb", "skb.", "current.pid", "skb.a.b.c.d.e",
    "skb." + "a" * 65, "sk.sk_mark; system", "skb_shinfo(sk).gso_size", "SKB.len",
])


def test_hostile_field_path_is_refused(path):
    with pytest.raises(UsageError):
        build([Probe("ip_rcv", 1, fields={"f": path})])


@pytest.mark.parametrize("position", [0, 7, -1, True, "1", 1.0, "1) + system(\"id\""])
def test_bad_argument_positions_are_refused(position):
    with pytest.raises(UsageError):
        build([Probe("ip_rcv", position)])
    with pytest.raises(UsageError):
        build([Probe("ip_rcv", 1, sk_pos=position)])


def test_field_needs_its_pointer():
    with pytest.raises(UsageError):
        build([Probe("sock_sendmsg", None, fields={"len": "skb.len"})])
    with pytest.raises(UsageError):
        build([Probe("sock_sendmsg", None, fields={"mark": "sk.sk_mark"})])
    text = build([Probe("tcp_sendmsg", None, 1, fields={"mark": "sk.sk_mark"})]).text
    assert "sk = pointer_arg(1)" in text


def probe_block(text, name):
    """The script's probe for `name`, up to its closing brace."""
    body = text[text.index('probe kprobe.function("{}")'.format(name)):]
    return body[:body.index("\n}\n")]


def test_peek_reads_the_msg_argument_of_each_kernel():
    """tcp_sendmsg's struct msghdr * is argument 2 from 4.1, 3 on 3.10/el7 (http1.yaml)."""
    new = probe_block(CASES["http1-61"]().text, "tcp_sendmsg")
    old = probe_block(CASES["http1-el7"]().text, "tcp_sendmsg")
    assert 'lt_peek(pointer_arg(2), 64)' in new and 'sk = pointer_arg(1)' in new
    assert 'lt_peek(pointer_arg(3), 64)' in old and 'sk = pointer_arg(2)' in old
    for body in (new, old):
        assert "lt_sock(sk)" in body and "lt_packet(" not in body
    assert "peek" in stap.StapBackend.features


def test_drop_reason_and_caller_where_the_kernel_has_them():
    """kfree_skb_reason(skb, reason) on 6.1; kfree_skb(skb) on el7: the caller only."""
    new = probe_block(CASES["drops-61"]().text, "kfree_skb_reason")
    old = probe_block(CASES["drops-el7"]().text, "kfree_skb")
    assert 'sprintf("\\t@reason=%d", int_arg(2))' in new and "@reason" not in old
    for body in (new, old):
        assert "symdata(lt_caller())" in body and "lt_packet(skb)" in body
        assert 'sprintf("\\tmark=%d", @cast(skb, "sk_buff", "kernel<net/sock.h>")->mark)' in body


def test_extras_only_where_asked():
    body = probe_block(build([Probe("ip_rcv", 1)]).text, "ip_rcv")
    assert "@reason" not in body and "@caller" not in body and "lt_peek" not in body


@pytest.mark.parametrize("probe", [
    Probe("tcp_sendmsg", None, 1, args={"msg": 2}, peek={"arg": "msg", "bytes": 129}),
    Probe("tcp_sendmsg", None, 1, args={"msg": 2}, peek={"arg": "msg", "bytes": 0}),
    Probe("tcp_sendmsg", None, 1, args={"msg": 2}, peek={"arg": "msg", "bytes": "64); x("}),
    Probe("tcp_sendmsg", None, 1, args={"msg": 2}, peek={"arg": "msg", "bytes": True}),
    Probe("tcp_sendmsg", None, 1, args={"msg": 2}, peek={"arg": "sk", "bytes": 64}),
    Probe("tcp_sendmsg", None, 1, args={"msg": 2}, peek={"arg": "msg", "bytes": 64, "x": 1}),
    Probe("tcp_sendmsg", None, 1, peek={"arg": "msg", "bytes": 64}),
    Probe("tcp_sendmsg", None, 1, args={"msg": 1}),
    Probe("tcp_sendmsg", None, 1, args={"msg": 7}),
    Probe("tcp_sendmsg", None, 1, args={"msg": "2) + system(\"id\""}),
    Probe("tcp_sendmsg", None, 1, args={"buf": 2}),
    Probe("kfree_skb_reason", 1, args={"reason": 1}),
    Probe("kfree_skb_reason", 1, args={"reason": 2, "msg": 2}),
    Probe("kfree_skb", 1, caller="yes"),
])


def test_hostile_extras_are_refused(probe):
    with pytest.raises(UsageError):
        build([probe])


class RawFilter(object):
    """A filter whose expression skipped the parser: the backend must check it again."""

    def __init__(self, expr):
        self.expr = expr


@pytest.mark.parametrize("values", [
    fx.Proto(None, "6) return 1; system(\"id\"); if (0"), fx.Proto(None, 256),
    fx.Proto(None, -1), fx.Proto(None, True), fx.Proto(None, 6.0),
    fx.Port(fx.SRC, 65536, 65536, None), fx.Port(fx.DST, "80", "80", None),
    fx.Port(fx.DST, "80 */ %}", "80", 6), fx.Family(5), fx.Family("4"),
    fx.Net(fx.SRC, "10.0.0.1"), fx.Net(fx.DST, "10.0.0.0/8\n%}"),
    fx.Not(fx.Net("src\n%}", ipaddress.ip_network("10.0.0.0/8"))),
])
def test_hostile_filter_values_are_refused(values):
    with pytest.raises(UsageError):
        build(PROBES_61, RawFilter(values))


@pytest.mark.parametrize("release", ["6.1\n%{ system %}", "6.1 */", "", "../../etc", None, "x" * 101])
def test_hostile_release_is_refused(release):
    with pytest.raises(UsageError):
        build(PROBES_61, release=release)


def test_no_probe_is_a_usage_error():
    with pytest.raises(UsageError):
        build([])


def test_module_program_needs_a_module_built_under_its_name(tmp_path):
    backend = stap.StapBackend()
    with pytest.raises(UsageError):
        backend.module_program(str(tmp_path / "lt_missing.ko"))
    renamed = tmp_path / "lt_icmp.ko"
    renamed.write_bytes(b"\x7fELF\0lt_other\0")
    with pytest.raises(UsageError):
        backend.module_program(str(renamed))
    module = tmp_path / "lt_other.ko"
    renamed.rename(module)
    program = backend.module_program(str(module))
    assert program.part.module == str(module)
    for bad in ("icmp.ko", "lt_a-b.ko", "lt_x.o", "lt_.ko"):
        with pytest.raises(UsageError):
            backend.module_program(str(tmp_path / bad))


def test_the_process_filter_skips_other_tasks_but_never_an_interrupt():
    text = CASES["process-el7"]().text
    condition = 'if (lt_context() == 0 && !(pid() == 812 || pid() == 900 || execname() == "nginx"))'
    assert text.count(condition) == len(PROBES_EL7)
    assert build(PROBES_EL7).text.count("lt_context() == 0 &&") == 0
