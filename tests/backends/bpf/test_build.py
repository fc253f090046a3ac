"""The bpf backend's program (backends/bpf/build.py): rendered programs against golden
files (tests/golden/bpf/, regenerated as tests/conftest.py says), both modes, the flow
filter as numbers, what a request it cannot trace is told.
"""
import pytest

from conftest import golden
from . import DEV_618, LAB_61
from legacytrace import backends
from legacytrace.backends.bpf import build as bpf_build
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest
from legacytrace.procfilter import ProcessFilter


GENERIC = [Probe("ip_rcv", 1, description="IPv4 receive"),
           Probe("__netif_receive_skb_core", 1),
           Probe("ip_output", 3, 2),
           Probe("__dev_queue_xmit", 1),
           Probe("dev_queue_xmit", 1),
           Probe("kfree_skb_reason", 1, egress=True),
           Probe("tcp_v4_rcv.isra.0", 1)]


def request(facts, probes=GENERIC, flow=None, run_id="lt4242"):
    return TraceRequest(probes, flow or FlowFilter(), HostFacts(**facts), run_id=run_id)


def build(facts, **kw):
    return backends.get("bpf").build(request(facts, **kw))


@pytest.mark.parametrize("name, facts, flow", [
    ("kprobe-all.bt", LAB_61, FlowFilter()),
    ("kprobe-udp4.bt", LAB_61, FlowFilter.parse(proto="udp", saddr="127.0.0.0/8",
                                                daddr="127.0.0.1", dport="53")),
    ("tracepoint-all.bt", DEV_618, FlowFilter()),
    ("tracepoint-tcp6.bt", DEV_618, FlowFilter.parse(proto="tcp", saddr="::1",
                                                     daddr="fe80::/10", sport="80")),
])


def test_rendered_program_matches_golden(name, facts, flow):
    golden("bpf/" + name, build(facts, flow=flow).text)


def test_build_is_pure_and_repeatable():
    assert build(LAB_61).text == build(LAB_61).text


def test_kprobe_mode_reads_argument_positions_and_quotes_clone_names():
    text = build(LAB_61).text
    assert '  $skb = (struct sk_buff *)arg2;\n  $sk = (struct sock *)arg1;' in \
        text.split('kprobe:"ip_output"')[1]
    assert 'kprobe:"tcp_v4_rcv.isra.0"' in text
    assert "LTB2\\tkprobe\\tip_rcv\\t" in text


def test_tracepoint_mode_skips_functions_without_a_tracepoint_and_says_so():
    program = build(DEV_618)
    assert program.mode == "tracepoint"
    assert program.part.functions == ["net:netif_receive_skb", "net:net_dev_queue",
                                         "skb:kfree_skb"]
    warnings = "\n".join(program.warnings)
    for name in ("ip_rcv", "ip_output", "tcp_v4_rcv.isra.0"):
        assert "{}: skipped, no tracepoint".format(name) in warnings
    assert "dev_queue_xmit: skipped, tracepoint net:net_dev_queue already traces " \
           "__dev_queue_xmit" in warnings
    assert "tracepoint:skb:kfree_skb" in program.text
    # The drop reason is a field of the kfree_skb tracepoint from 5.17.
    assert "reason=%d" in program.text


def test_tracepoint_mode_drops_the_reason_before_5_17():
    text = build(dict(DEV_618, release="5.15.0-91-generic")).text
    assert "caller=%s" in text and "reason=" not in text and "args->reason" not in text


def test_tracepoint_mode_skips_tracepoints_the_kernel_lacks():
    program = build(dict(DEV_618, tracepoints=["net:net_dev_queue"]))
    assert program.part.functions == ["net:net_dev_queue"]
    assert any("lacks tracepoint net:netif_receive_skb" in w for w in program.warnings)


def test_nothing_traceable_is_one_clear_error():
    with pytest.raises(LegacytraceError, match="can trace none of its functions \\(ip_rcv\\)"):
        build(DEV_618, probes=[Probe("ip_rcv", 1)])


@pytest.mark.parametrize("name", [
    'ip_rcv"; system("reboot")', "ip_rcv\n}", "ip rcv", "../ip_rcv", "ip_rcv*", "",
    "1ip_rcv", "ip_rcv.isra", "x" * 200, None, 42])


def test_invalid_function_names_are_usage_errors_never_program_text(name):
    for facts in (LAB_61, DEV_618):
        with pytest.raises(UsageError, match="is not a kernel function name"):
            build(facts, probes=[Probe(name, 1)])


@pytest.mark.parametrize("pos", [0, 7, -1, "1", 1.0, True])
def test_invalid_argument_positions_are_usage_errors(pos):
    with pytest.raises(UsageError, match="skb_pos must be (an integer )?from 1 to 6"):
        build(LAB_61, probes=[Probe("ip_rcv", pos)])


@pytest.mark.parametrize("run_id", ["lt12 3", "LT123", "lt1;x", "", None, "a" * 40])
def test_invalid_run_ids_are_usage_errors(run_id):
    with pytest.raises(UsageError, match="invalid run id"):
        build(LAB_61, run_id=run_id)


def test_a_description_cannot_leave_its_comment():
    probe = Probe("ip_rcv", 1, description='x\n} BEGIN { system("id") } //\r')
    text = build(LAB_61, probes=[probe]).text
    assert '// ip_rcv: x } BEGIN { system("id") } //' in text
    assert "\nBEGIN { system" not in text and "\r" not in text


@pytest.mark.parametrize("name, facts", [("kprobe-process.bt", LAB_61),
                                         ("tracepoint-process.bt", DEV_618)])
def test_process_filter_golden(name, facts):
    """-p 812 -p 900 --comm nginx: task-context events of those, every interrupt's and every
    kernel thread's (user space judges those by their owner), joined to the flow filter."""
    processes = ProcessFilter([812, 900], ["nginx"])
    text = backends.get("bpf").build(TraceRequest(
        GENERIC, FlowFilter.parse(proto="udp"), HostFacts(**facts), run_id="lt4242",
        processes=processes)).text
    golden("bpf/" + name, text)
    assert ('($ctx != 0 || (curtask->flags & 0x200000) != 0 || pid == 812 || pid == 900 || '
            'comm == "nginx")') in text
