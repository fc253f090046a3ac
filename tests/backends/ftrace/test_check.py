"""Building ftrace programs: kprobe definitions, filters, the sh export (pure, golden files).

The golden files regenerate as tests/conftest.py says.
"""
import pytest

from legacytrace.backends.ftrace import FtraceBackend
from legacytrace.errors import LegacytraceError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel import offsets
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest


EL7 = "3.10.0-1160.el7.x86_64"


# The generic manifest's functions as resolved for EL7 (docs/kernel-facts.md positions).
EL7_PROBES = [Probe("ip_rcv", 1), Probe("ip_local_deliver", 1), Probe("tcp_v4_rcv", 1),
              Probe("ip_output", 2, 1), Probe("dev_queue_xmit", 1), Probe("kfree_skb", 1, egress=True),
              Probe("tcp_sendmsg", sk_pos=1), Probe("ip_rcv", kind="return")]


def el7_host(**extra):
    values = dict(release=EL7, root=True, tracefs="/sys/kernel/debug/tracing",
                  kprobe_events=True, instances=True)
    values.update(extra)
    return HostFacts(**values)


def el7_backend():
    return FtraceBackend(layout_for=lambda host: offsets.from_table(host.release))


def build(flow=None, probes=EL7_PROBES, host=None, backend=None, run_id="lt4242"):
    request = TraceRequest(probes, flow or FlowFilter(), host or el7_host(), run_id=run_id)
    return (backend or el7_backend()).build(request)


def test_no_layout_is_a_clear_error_naming_stap():
    backend = FtraceBackend(layout_for=lambda host: offsets.find_layout(
        "4.19.0-99-unknown", btf_path=None, vmlinux_paths=[], table="builds: []"))
    host = el7_host(release="4.19.0-99-unknown")
    with pytest.raises(LegacytraceError) as err:
        build(host=host, backend=backend)
    assert "stap" in str(err.value)
    assert not backend.check(host).available and "stap" in backend.check(host).reason


def test_check_modes():
    backend = el7_backend()
    assert backend.check(el7_host()).available
    assert "table el7" in backend.check(el7_host()).reason
    assert not backend.check(el7_host(root=False)).available
    tp = HostFacts(release="6.18.44", root=True, tracefs="/sys/kernel/tracing",
                   tracepoints=["net:netif_receive_skb"])
    answer = backend.check(tp)
    assert answer.available and "tracepoint mode" in answer.reason
    assert not backend.check(HostFacts(release="6.18.44", root=True, tracefs="/x")).available
