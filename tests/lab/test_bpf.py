"""The bpf backend on the lab kernels bpftrace runs on: kprobes with BTF-typed sk_buff access.

Proves: ping, a UDP datagram and a TCP connection appear with the right addresses,
ports and protocol at receive and transmit functions; the sender's pid and comm on
the transmit side; a flow filter shows only its flow. The raw LTB1 lines are kept in
LEGACYTRACE_LAB_SHARED/bpf-kprobe-raw.txt for the parser's unit tests. Through the CLI:
events bpftrace loses (a flood into a one-page perf buffer) are counted in the summary
line and the JSON summary, and a stop during the flood leaves no bpftrace behind.
"""
import os
import re
import signal
import socket
import threading
import time

import pytest

import labkit

from legacytrace import backends
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import probe_host
from legacytrace.model import Probe, TraceRequest

from test_lifecycle import Run, foreign, settled  # noqa: F401 (foreign is a fixture)

pytestmark = pytest.mark.unsupported("el7", reason=labkit.NO_BPFTRACE)

LOOPBACK = "127.0.0.1"
RECEIVE = {"ip_rcv", "ip_local_deliver", "tcp_v4_rcv", "udp_rcv", "icmp_rcv"}


class Done(Exception):
    pass


def probes():
    """The receive and transmit functions traced here, with the device queue and tcp_sendmsg;
    positions from the bundled manifests for this kernel."""
    return (labkit.manifest_probes("generic", *sorted(RECEIVE | {"ip_output"}))
            + [p for p in labkit.manifest_probes("generic") if "dev_queue_xmit" in p.name]
            + [Probe(p.name, p.skb_pos, p.sk_pos) for p in labkit.manifest_probes("http1")])


def xmit_function():
    return next(p.name for p in probes() if "dev_queue_xmit" in p.name)


def trace(flow, traffic, raw=None):
    """Events of the bpf backend while `traffic()` runs (list of Workloads returned too)."""
    facts = probe_host()
    backend = backends.get("bpf")
    assert backend.check(facts).available, backend.check(facts).reason
    program = backend.build(TraceRequest(probes(), flow, facts, run_id="lt{}".format(os.getpid())))
    assert program.mode == "kprobe"
    found, workloads = [], []

    def run_traffic():
        try:
            workloads.extend(traffic())
        finally:
            time.sleep(2)
            os.kill(os.getpid(), signal.SIGALRM)

    def done(signum, frame):
        raise Done()

    previous = signal.signal(signal.SIGALRM, done)
    worker = threading.Thread(target=run_traffic)
    try:
        with backend.run(program) as session:
            worker.start()
            try:
                for line in session.lines():
                    if raw is not None:
                        raw.write(line + "\n")
                    event = backend.parse(line, program)
                    if event is not None:
                        found.append(event)
            except Done:
                pass
        worker.join()
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not session.lost
    return found, workloads


def all_three():
    return [labkit.ping()] + labkit.udp_open_port() + labkit.http_request()


@pytest.fixture(scope="module")
def traced(lab_shared):
    labkit.loopback_up()
    with open(str(lab_shared / "bpf-kprobe-raw.txt"), "w") as raw:
        return trace(FlowFilter(), all_three, raw)


def test_ping_at_receive_and_transmit_with_the_sender(traced):
    found, workloads = traced
    ping = workloads[0]
    echo = [e for e in found if e.proto == 1 and e.icmp_id == ping.pid]
    assert {(e.family, e.saddr, e.daddr) for e in echo} == {(4, LOOPBACK, LOOPBACK)}
    assert {"ip_rcv", "icmp_rcv"} <= {e.func for e in echo}
    sent = [e for e in echo if e.func == "ip_output" and e.icmp_type == 8]
    assert [e.icmp_seq for e in sent] == [1, 2]
    assert all((e.pid, e.comm, e.context) == (ping.pid, "ping", "task") for e in sent)


def test_udp_datagram_with_ports_and_sender(traced):
    found, workloads = traced
    sender = workloads[1]
    udp = [e for e in found if e.proto == 17 and e.dport == sender.dport]
    assert {"ip_rcv", "udp_rcv", "ip_output", xmit_function()} <= {e.func for e in udp}
    assert {(e.saddr, e.daddr) for e in udp} == {(LOOPBACK, LOOPBACK)}
    assert len({e.sport for e in udp}) == 1
    out = [e for e in udp if e.func == "ip_output"]
    assert [(e.pid, e.comm, e.context) for e in out] == [(sender.pid, sender.comm, "task")]


def test_tcp_connection_both_ways_and_the_client_sends(traced):
    found, workloads = traced
    client = workloads[3]
    tcp = [e for e in found if e.proto == 6 and client.dport in (e.sport, e.dport)]
    assert {(e.saddr, e.daddr) for e in tcp} == {(LOOPBACK, LOOPBACK)}
    to_server = [e for e in tcp if e.dport == client.dport]
    assert {"tcp_v4_rcv", "ip_output", "tcp_sendmsg"} <= {e.func for e in to_server}
    # tcp_sendmsg has no IP header yet: its tuple comes from the socket.
    sendmsg = [e for e in to_server if e.func == "tcp_sendmsg"]
    assert sendmsg and all((e.pid, e.comm) == (client.pid, "curl") for e in sendmsg)
    syn = [e for e in to_server if e.func == "ip_output"][0]
    assert (syn.pid, syn.comm, syn.context) == (client.pid, "curl", "task")
    assert any(e.func in RECEIVE and e.sport == client.dport for e in tcp)


def test_a_flow_filter_shows_only_its_flow(lab_shared):
    labkit.loopback_up()
    port = labkit.free_port()
    flow = FlowFilter.parse(proto="tcp", daddr=LOOPBACK, dport=str(port))

    def traffic():
        # The HTTP request uses its own port; only the connection to `port` may appear.
        listener = labkit.start_and_wait_for(
            ["python3", "-u", "-c", "import socket;s=socket.socket();s.bind(('127.0.0.1',{}));"
             "s.listen(1);print('ready');c,_=s.accept();c.recv(10)".format(port)], "ready")
        client = labkit.run_process("tcp-filter", ["python3", "-c",
                                    "import socket;socket.create_connection(('127.0.0.1',{}))"
                                    ".sendall(b'x')".format(port)], dport=port)
        listener.wait(30)
        return [labkit.ping(), client] + labkit.udp_open_port()

    found, workloads = trace(flow, traffic)
    assert found and all(flow.matches(e) for e in found)
    assert {e.proto for e in found} == {6} and {e.dport for e in found} == {port}


LOST = re.compile(r"^lost events: (\d+) \((.*)\)$", re.M)
FLOOD_PORT = 47014


def flood(count):
    """`count` datagrams to a receiver with a tiny buffer (most are dropped: no backpressure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind((LOOPBACK, FLOOD_PORT))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(count):
                sender.sendto(b"x" * 64, (LOOPBACK, FLOOD_PORT))


def test_lost_events_are_counted_and_a_stop_in_a_flood_leaves_nothing(foreign, tmp_path):
    # One page per CPU of perf ring buffer (--buffer-size 4, the least) holds about 16
    # events: a flood overruns it while legacytrace reads.
    run = Run("bpf", tmp_path, args=["--buffer-size", "4"])
    run.wait_for_events(lambda: flood(1))
    # 3000 datagrams (9000 events) overrun it many times over; 20000 stalled the TCG guest (RCU).
    sender = threading.Thread(target=flood, args=(3000,), daemon=True)
    sender.start()
    shown = 0
    while sender.is_alive():
        run.read(0.5)
        shown += len(run.lines)
        del run.lines[:]                # the summary comes after the stop
    started = time.monotonic()
    code = run.stop(signal.SIGINT)
    stopped = time.monotonic() - started
    assert code == 0 and "Traceback" not in run.stderr, run.stderr
    match = LOST.search(run.stderr)
    assert match, run.stderr
    total, causes = int(match.group(1)), match.group(2)
    assert total > 0 and "bpftrace perf buffer full" in causes, run.stderr
    assert run.summary is not None and run.summary["lost_total"] == total, run.lines[-1:]
    assert stopped < 120, "stopping took {:.0f} s".format(stopped)
    print("bpf, 1-page perf buffer: {} events shown, {} lost ({}), stop took {:.1f} s".format(
        shown + len(run.events), total, causes, stopped))
    assert settled(foreign) == []
