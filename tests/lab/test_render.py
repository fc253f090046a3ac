"""Output and process attribution on the real lab kernel (kprobes), for each backend that runs there.

Proves, with ping over loopback traced by the project's trace loop feeding the three
renderers at once: task-context events carry the sending process's pid and command
line, read through /proc while it ran; softirq events carry none and render as
[softirq]; --flows follows each echo request's sk_buff from ip_output (ping) through
the softirq receive path to its egress function, with time deltas that only grow;
the JSON Lines and the summary count the same events.
"""
import io
import json
import os
import signal
import threading

import pytest

import labkit

from legacytrace import trace
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import probe_host
from legacytrace.model import FlowEvent, Limits, Probe, TraceRequest
from legacytrace.procinfo import CmdlineCache
from legacytrace.render import FlowsRenderer, JsonRenderer, LiveRenderer, Summary

PING_COUNT = 2


def lab_probes():
    """The functions of one echo request's journey over loopback, in order, then the drop
    function; positions from the generic manifest for this kernel. consume_skb, in no bundled
    manifest, frees a delivered packet: `void consume_skb(struct sk_buff *skb)` from 3.10 on."""
    generic = labkit.manifest_probes("generic")
    xmit = [p for p in generic if "dev_queue_xmit" in p.name]
    drop = [Probe(p.name, p.skb_pos, p.sk_pos, egress=True) for p in generic if p.egress]
    return (labkit.manifest_probes("generic", "ip_output", "ip_finish_output") + xmit
            + labkit.manifest_probes("generic", "ip_rcv", "ip_local_deliver", "icmp_rcv")
            + [Probe("consume_skb", 1, egress=True)] + drop)


def request_end():
    """Where an echo request's journey ends: icmp_rcv frees a message it handled with
    consume_skb, but with kfree_skb on 3.10 (net/ipv4/icmp.c there frees every message so)."""
    return "kfree_skb" if labkit.lab_kernel() == "el7" else "consume_skb"


def request_path():
    """The journey of one echo request over loopback, as lab_probes() see it."""
    freeing = ("consume_skb", "kfree_skb", "kfree_skb_reason", "sk_skb_reason_drop")
    return [p.name for p in lab_probes() if p.name not in freeing] + [request_end()]


def make_backend(name):
    """The backend; bpftrace gets longer to compile and attach in a TCG guest on a busy host."""
    from legacytrace.backends.bpf import BpfBackend
    from legacytrace.backends.ftrace import FtraceBackend
    if name == "bpf":
        return BpfBackend(start_timeout=400)
    return FtraceBackend()


class Tee(object):
    """Every event to each renderer, as if the CLI had asked for all three outputs."""

    def __init__(self, *renderers):
        self.renderers = renderers

    def events(self, evs):
        for renderer in self.renderers:
            renderer.events(evs)

    def close(self, summary):
        for renderer in self.renderers:
            renderer.close(summary)


@pytest.fixture(scope="module", params=["ftrace", pytest.param(
    "bpf", marks=pytest.mark.unsupported("el7", reason=labkit.NO_BPFTRACE))])
def traced_ping(request, loopback, lab_shared):
    """Trace ping -c 2 with every renderer; returns the ping Workload and the outputs.

    The outputs are also left in LEGACYTRACE_LAB_SHARED (render-BACKEND.*) for a human.
    """
    facts = probe_host()
    backend = make_backend(request.param)
    available = backend.check(facts)
    assert available.available, "{} cannot run in the lab: {}".format(request.param,
                                                                      available.reason)
    probes = lab_probes()
    flow = FlowFilter.parse(proto="icmp")
    program = backend.build(TraceRequest(probes, flow, facts, run_id="lt{}".format(os.getpid())))
    live, lines, flows = io.StringIO(), io.StringIO(), io.StringIO()
    sink = Tee(LiveRenderer(live), JsonRenderer(lines, summary=True),
               FlowsRenderer(flows, egress=[p.name for p in probes if p.egress]))
    summary = Summary()
    attached, finished, result = threading.Event(), threading.Event(), {}

    def traffic():
        while not attached.wait(0.5):
            if finished.is_set():               # the attach failed
                return
        result["ping"] = labkit.run_process(
            "ping", ["ping", "-n", "-c", str(PING_COUNT), "-i", "0.5", "-W", "5", labkit.LOOPBACK])
        finished.wait(1.0)                      # the last events reach the tracer
        os.kill(os.getpid(), signal.SIGTERM)    # ends the trace loop as `kill` would
    thread = threading.Thread(target=traffic)
    # trace.run restores this handler when it returns: a SIGTERM that comes late is harmless.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        thread.start()
        ended = trace.run(backend, program, flow, Limits(duration=600), sink, summary,
                          enrich=CmdlineCache().enrich_all, attached=attached.set)
    finally:
        finished.set()
        thread.join()
        signal.signal(signal.SIGTERM, previous)
    sink.close(summary)
    for suffix, out in (("live.txt", live), ("jsonl", lines), ("flows.txt", flows)):
        (lab_shared / "render-{}.{}".format(request.param, suffix)).write_text(out.getvalue())
    (lab_shared / "render-{}.summary.txt".format(request.param)).write_text(
        "ended: {}\n{}\n".format(ended, summary.to_text()))
    assert "ping" in result, "the tracer never attached; ended: " + ended
    assert result["ping"].returncode == 0, result["ping"].output
    return result["ping"], live.getvalue(), lines.getvalue(), flows.getvalue(), summary


def test_attribution_in_every_output(traced_ping):
    ping, live, lines, flows, summary = traced_ping
    cmdline = " ".join(ping.argv)
    objects = [json.loads(line) for line in lines.splitlines()]
    events, last = objects[:-1], objects[-1]
    assert events and last["type"] == "summary"
    assert all(list(e) == list(FlowEvent._fields) for e in events)
    # ping's own transmit path: its pid, comm and command line
    sent = [e for e in events if e["func"] == "ip_output" and e["icmp_type"] == 8]
    assert len(sent) == PING_COUNT, sent
    assert all((e["pid"], e["comm"], e["context"], e["cmdline"]) ==
               (ping.pid, "ping", "task", cmdline) for e in sent), sent
    # the receive path runs in softirq: no command line, whoever was interrupted
    received = [e for e in events if e["func"] == "ip_rcv"]
    assert received and all(e["context"] != "task" for e in received), received
    assert all(e["cmdline"] is None for e in events if e["context"] != "task")
    # the live view says the same
    live_lines = live.splitlines()
    assert live_lines[0].split() == ["TIME", "CPU", "PROCESS", "FUNCTION", "LEN", "FLOW"]
    mine = [l for l in live_lines if " ip_output " in l and " echo-request " in l]
    assert len(mine) == PING_COUNT
    assert all("ping[{}]".format(ping.pid) in l and l.endswith('cmd="{}"'.format(cmdline))
               for l in mine), mine
    softirq = [l for l in live_lines if " [softirq] " in l]
    assert softirq and not [l for l in softirq if "cmd=" in l]
    # JSON Lines, live lines and the summary count the same events
    assert last["events"] == len(events) == len(live_lines) - 1 == summary.events
    assert last["functions"] == dict(summary.functions)


def test_flows_follow_each_echo_request_to_its_end(traced_ping):
    ping, live, lines, flows, summary = traced_ping
    blocks = [b.splitlines() for b in flows.strip("\n").split("\n\n")]
    requests = [b for b in blocks if " echo-request " in b[0]
                and "by ping[{}]".format(ping.pid) in b[1]]
    assert len(requests) == PING_COUNT, flows
    for block in requests:
        body = [line.split() for line in block[2:-1]]
        funcs = [fields[3] for fields in body]
        assert [f for f in request_path() if f in funcs] == funcs, block
        assert funcs[0] == "ip_output" and "ip_rcv" in funcs, block
        assert block[-1].endswith("ended at " + request_end()), block
        deltas = [float(fields[0].strip("+us")) for fields in body]
        assert deltas[0] == 0 and deltas == sorted(deltas), block
        owners = [fields[2] for fields in body]
        assert owners[funcs.index("ip_output")] == "ping[{}]".format(ping.pid)
        assert owners[funcs.index("ip_rcv")] in ("[softirq]", "[hardirq]"), block
    assert summary.evicted == 0
