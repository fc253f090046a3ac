"""Building ftrace programs (backends/ftrace/build.py): the text and the sh export, golden
files (regenerated as tests/conftest.py says), and `sh -n` over every sh script.
"""
import os
import subprocess

import pytest

from conftest import GOLDEN, golden, saved_host
from . import EL7_PROBES, build, el7_backend, el7_host
from legacytrace import manifest
from legacytrace.backends.ftrace import FtraceBackend
from legacytrace.backends.ftrace.build import hex_types
from legacytrace.errors import UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel import tracepoints
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest
from legacytrace.procfilter import ProcessFilter


def test_golden_el7_udp_flow_text_and_sh():
    backend = el7_backend()
    program = build(FlowFilter.parse(proto="udp", daddr="127.0.0.1", dport="9999"), backend=backend)
    golden("ftrace/el7-udp.txt", program.text)
    golden("ftrace/el7-udp.sh", backend.export(program, "sh"))


def test_golden_tracepoint_mode():
    host = HostFacts(release="6.18.44-fc-v669", root=True, tracefs="/sys/kernel/tracing",
                     instances=True, tracepoints=["net:netif_receive_skb", "net:net_dev_queue",
                                                  "skb:kfree_skb", "skb:consume_skb"])
    backend = FtraceBackend(layout_for=None)          # tracepoint mode needs no layout
    program = build(FlowFilter.parse(proto="icmp"), host=host, backend=backend)
    assert program.mode == "tracepoint"
    golden("ftrace/tracepoints.txt", program.text)
    golden("ftrace/tracepoints.sh", backend.export(program, "sh"))


def test_the_sh_script_sizes_the_instance_as_the_request_asks():
    request = TraceRequest(EL7_PROBES, FlowFilter(), el7_host(), run_id="lt1", buffer_kb=65536)
    backend = el7_backend()
    script = backend.export(backend.build(request), "sh")
    assert 'echo 65536 > "$I/buffer_size_kb"' in script.splitlines()


def test_hex_types_where_the_readme_lists_them():
    host = el7_host(kprobe_syntax=["comm", "x-types"])
    assert hex_types(host) and not hex_types(el7_host())
    text = build(host=host).text
    assert ":x64" in text and ":u64" not in text.split("f_ver")[0]


@pytest.mark.parametrize("run_id", ["", None, "lt1; echo", "LT1", "a" * 60])
def test_bad_run_id(run_id):
    with pytest.raises(UsageError, match="invalid run id"):
        build(probes=[Probe("ip_rcv", 1)], run_id=run_id)


def _scripts():
    """(name, sh script) of every program the unit tests build: the golden ones, and each
    bundled manifest on EL7 and the lab's 6.1 (kprobe mode) and on this machine's 6.18
    (tracepoint mode), with and without a flow filter."""
    from .test_kprobe_extras import build_manifest
    yield "el7-udp", el7_backend().export(build(FlowFilter.parse(proto="udp", dport="53")), "sh")
    tracepoint = FtraceBackend()
    for name in manifest.bundled_names():
        for flow in ({}, dict(proto="udp", dport="53")):
            for host_key in ("el7", "61"):
                program = build_manifest(host_key, name, flow and FlowFilter.parse(**flow))
                yield "{}-{}".format(name, host_key), FtraceBackend().export(program, "sh")
        facts = saved_host("fc-6.18.json")
        probes = manifest.resolve(manifest.load(name), facts.kernel).probes
        if any(tracepoints.of(probe.name, probe.tracepoint) for probe in probes):
            program = tracepoint.build(TraceRequest(probes, FlowFilter(), facts, run_id="lt1"))
            yield "{}-6.18".format(name), tracepoint.export(program, "sh")


def test_every_generated_sh_script_is_valid_sh():
    """`sh -n` reads each script without running it: a syntax error fails here."""
    checked = []
    for name, script in _scripts():
        proc = subprocess.Popen(["sh", "-n"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
        _, err = proc.communicate(script)
        assert proc.returncode == 0 and not err, (name, err)
        checked.append(name)
    assert len(checked) >= 2 * 2 * len(manifest.bundled_names())


@pytest.mark.parametrize("name", ["el7-udp.sh", "tracepoints.sh"])
def test_the_golden_sh_scripts_are_valid_sh(name):
    path = os.path.join(GOLDEN, "ftrace", name)
    assert subprocess.call(["sh", "-n", path]) == 0


def test_golden_process_filter_in_every_probe_filter():
    """-p 812 with its threads 812-814 and 900: common_pid of those threads, or interrupt
    context (common_flags), joined to the flow filter where there is one."""
    request = TraceRequest(EL7_PROBES, FlowFilter.parse(proto="udp"), el7_host(),
                           run_id="lt4242", processes=ProcessFilter([812], (), [812, 813, 814, 900]))
    backend = el7_backend()
    program = backend.build(request)
    golden("ftrace/el7-process.txt", program.text)
    golden("ftrace/el7-process.sh", backend.export(program, "sh"))
    assert all(event_filter.lstrip("(").startswith(
        "common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900")
        for _, _, event_filter in program.part.events)


def test_a_comm_or_too_many_threads_leave_the_process_filter_to_user_space():
    comm = TraceRequest(EL7_PROBES, FlowFilter(), el7_host(), run_id="lt4242",
                        processes=ProcessFilter([812], ["nginx"]))
    assert all(f is None or "common_pid" not in f for _, _, f in el7_backend().build(comm).part.events)
    many = TraceRequest(EL7_PROBES, FlowFilter(), el7_host(), run_id="lt4242",
                        processes=ProcessFilter([2], (), range(2, 4000, 2)))
    program = el7_backend().build(many)
    assert all(f is None or "common_pid" not in f for _, _, f in program.part.events)
    assert any("process filter" in warning for warning in program.warnings)


def test_tracepoint_mode_refuses_a_process_filter_it_cannot_judge():
    host = HostFacts(release="6.18.44-fc-v669", root=True, tracefs="/sys/kernel/tracing",
                     instances=True, tracepoints=["net:netif_receive_skb", "net:net_dev_queue"])
    backend = FtraceBackend(layout_for=None)
    program = backend.build(TraceRequest([Probe("__netif_receive_skb_core", 1)], FlowFilter(),
                                         host, run_id="lt4242",
                                         processes=ProcessFilter([812])))
    assert "pid 812" in backend.ready(program, host)
