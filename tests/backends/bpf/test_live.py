"""The bpf backend live on this host's kernel: real bpftrace, real loopback traffic.

Runs as root where bpftrace, BTF and tracefs exist (on the development machine's
6.18 kernel without kprobes this is the tracepoint mode); under
LEGACYTRACE_REQUIRE_KERNEL=1 a missing feature fails instead of skipping.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import require
from legacytrace import backends, select
from legacytrace.kernel import tracepoints
from legacytrace.backends import checks
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts, probe_host
from legacytrace.kernel.tracefs import ensure as ensure_tracefs
from legacytrace.model import Probe, TraceRequest

PROBES = [Probe("__netif_receive_skb_core", 1), Probe("__dev_queue_xmit", 1)]
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def host():
    require(os.geteuid() == 0, "needs root")
    require(shutil.which("bpftrace"), "needs bpftrace")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "needs BTF")
    ensure_tracefs()  # as `legacytrace trace` does: tracefs may not be mounted after boot
    facts = probe_host()
    require(facts.tracefs, "needs a mounted tracefs")
    subprocess.call(["ip", "link", "set", "lo", "up"])
    return facts


def named(host, function):
    """What events of `function` are called here: the tracepoint's name in tracepoint mode."""
    if checks.dynamic_mode(host) == checks.TRACEPOINT:
        return tracepoints.of(function).name
    return function


class Timeout(Exception):
    pass


def trace(host, flow, traffic, seconds=3.0):
    """Run the backend while `traffic()` runs; return (events, lost, what the run left)."""
    backend = backends.get("bpf")
    program = backend.build(TraceRequest(PROBES, flow, host, run_id="lt{}".format(os.getpid())))
    found = []

    def expire(signum, frame):
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, expire)
    session = backend.run(program)
    try:
        with session:
            proc, folder = session.proc, session.folder
            worker = threading.Thread(target=traffic)
            worker.start()
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                for line in session.lines():
                    event = backend.parse(line, program)
                    if event is not None:
                        found.append(event)
            except Timeout:
                pass
        left = [what for what, gone in (("bpftrace", proc.poll() is not None),
                                        (folder, not os.path.exists(folder))) if not gone]
        worker.join()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return found, session.lost, left


class Traffic(object):
    """Loopback ping and one UDP datagram from processes whose pid the test knows."""

    def __init__(self, port):
        self.port = port
        self.ping = self.udp = None
        self.udp_sport = None

    def __call__(self):
        time.sleep(0.3)
        ping = subprocess.Popen(["ping", "-c", "2", "-i", "0.2", LOOPBACK],
                                stdout=subprocess.DEVNULL)
        ping.wait()
        self.ping = ping.pid
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((LOOPBACK, self.port))
        sender = subprocess.Popen(
            [sys.executable, "-c",
             "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
             "s.bind(('127.0.0.1',0));print(s.getsockname()[1],flush=True);"
             "s.sendto(b'legacytrace',('127.0.0.1',int(sys.argv[1])))", str(self.port)],
            stdout=subprocess.PIPE, universal_newlines=True)
        self.udp_sport = int(sender.stdout.readline())
        sender.wait()
        self.udp = sender.pid
        receiver.recvfrom(100)
        receiver.close()


def free_port():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_auto_selection_picks_bpf_here(host):
    verdict = backends.get("bpf").check(host)
    assert verdict.available, verdict.reason
    if checks.dynamic_mode(host) == checks.TRACEPOINT:
        assert select.choose(host)[0] == "bpf"


def test_loopback_ping_and_udp_with_tuples_and_senders(host):
    traffic = Traffic(free_port())
    found, lost, left = trace(host, FlowFilter(), traffic)
    assert not lost
    assert left == [], "the stop left {}".format(left)
    lo = [e for e in found if e.dev == "lo"]
    pings = [e for e in lo if e.proto == 1 and e.icmp_id == traffic.ping]
    assert {(e.saddr, e.daddr, e.family) for e in pings} == {(LOOPBACK, LOOPBACK, 4)}
    queue, receive = named(host, "__dev_queue_xmit"), named(host, "__netif_receive_skb_core")
    sent = [e for e in pings if e.func == queue and e.icmp_type == 8]
    assert [e.icmp_seq for e in sent] == [1, 2]
    assert all((e.pid, e.comm, e.context) == (traffic.ping, "ping", "task") for e in sent)
    replies = [e for e in pings if e.icmp_type == 0]
    assert {e.func for e in replies} == {queue, receive}
    assert all(e.context == "softirq" for e in replies)
    udp = [e for e in lo if e.proto == 17 and e.dport == traffic.port]
    assert {(e.func, e.saddr, e.sport, e.daddr) for e in udp} == {
        (func, LOOPBACK, traffic.udp_sport, LOOPBACK)
        for func in (queue, receive)}
    sender = [e for e in udp if e.func == queue]
    assert [(e.pid, e.comm, e.context, e.length) for e in sender] == [
        (traffic.udp, os.path.basename(sys.executable)[:15], "task", 20 + 8 + 11 + 14)]


def test_the_flow_filter_runs_in_the_kernel(host):
    traffic = Traffic(free_port())
    flow = FlowFilter.parse(proto="udp", daddr=LOOPBACK, dport=str(traffic.port))
    found, _, _ = trace(host, flow, traffic)
    # Only the datagram passed the in-kernel filter: no ping, no other traffic.
    assert found and all(flow.matches(e) for e in found)
    assert {e.func for e in found} == {named(host, "__dev_queue_xmit"),
                                       named(host, "__netif_receive_skb_core")}


def test_the_kprobe_program_passes_bpftrace_semantic_checks_here(host, tmp_path):
    """bpftrace's dry run checks every BTF type and member the kprobe program uses."""
    lab = HostFacts(**dict(host.to_dict(), kprobe_events=True, kprobe_pmu=True))
    probes = [Probe("ip_rcv", 1), Probe("ip_output", 3, 2), Probe("tcp_v4_rcv.isra.0", 1)]
    flow = FlowFilter.parse(proto="tcp", saddr="10.0.0.0/8", dport="80")
    program = backends.get("bpf").build(TraceRequest(probes, flow, lab, run_id="lt1"))
    script = tmp_path / "kprobe.bt"
    script.write_text(program.text)
    result = subprocess.run(["bpftrace", "-d", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    errors = [line for line in result.stdout.splitlines()
              if "ERROR" in line and "RLIMIT_MEMLOCK" not in line]
    assert not errors and "AST after: Semantic" in result.stdout, result.stdout[-2000:]
