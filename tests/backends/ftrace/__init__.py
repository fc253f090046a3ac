"""Tests of the ftrace backend, and the EL7 host most of them build for."""
from legacytrace.backends.ftrace import FtraceBackend
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
