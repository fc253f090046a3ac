"""The bundled manifests with the bpf backend on the lab kernels bpftrace runs on, through the CLI.

Each test is one `legacytrace trace -b bpf --json MANIFEST` (a bpftrace start costs 60-90 s
under TCG, so each manifest gets one run and several workloads within it):
- icmp-senders: ping's pid and full command line, with source and destination;
- http1: the request line of a request sent by curl and of one sent by a Python script
  (http.client), each with its own pid and comm (the peek of tcp_sendmsg's user buffer);
- tcp-connect: a connection's destination and the connecting process;
- drops: a UDP datagram to a closed port dropped, with its caller, and its reason (NO_SOCKET)
  where the kernel gives one (5.17+);
- the default manifest: one TCP exchange on the transmit and on the receive path.
Raw events of each run are kept in LEGACYTRACE_LAB_SHARED/bpf-manifest-NAME.jsonl.
"""
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

import labkit

pytestmark = pytest.mark.unsupported("el7", reason=labkit.NO_BPFTRACE)

ATTACH_TIMEOUT = 300          # bpftrace takes 60-90 s to attach under TCG
STOP_TIMEOUT = 120
#: Sent by the Python client of the http1 test: a path no other request uses.
PY_PATH = "/from-python-http-client"
PY_CLIENT = ("import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1])); "
             "c.request('GET', '" + PY_PATH + "'); print(c.getresponse().status)")
TRANSMIT = {"ip_local_out", "ip_output", "ip_finish_output", "__dev_queue_xmit", "dev_queue_xmit"}
RECEIVE = {"__netif_receive_skb", "ip_rcv_core", "ip_rcv", "ip_local_deliver",
           "ip_local_deliver_finish", "tcp_v4_rcv"}


class Trace(labkit.CliTrace):
    """`legacytrace trace -b bpf --json ARGS` in its own session, stdout collected."""

    def __init__(self, folder, args, env=None):
        super().__init__(["-b", "bpf"] + list(args), folder, env=env)

    def wait_attached(self, traffic, seen):
        """Make `traffic` until an event for which `seen(event)` holds came out."""
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while not any(seen(event) for event in self.events):
            assert self.proc.poll() is None, "trace ended: " + self.stderr
            assert time.monotonic() < deadline, "no event in {} s: {}".format(
                ATTACH_TIMEOUT, self.stderr)
            traffic()
            self.read(2.0)

    def stop(self, settle=3.0):
        """Read what is still coming for `settle` seconds, then SIGINT and read to the end."""
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self.read(0.5)
        self.proc.send_signal(signal.SIGINT)
        return self.finish(STOP_TIMEOUT)

    def keep(self, name):
        """The run's events into the shared folder, for a look after the lab run."""
        shared = os.environ.get("LEGACYTRACE_LAB_SHARED")
        if shared:
            Path(shared, "bpf-manifest-{}.jsonl".format(name)).write_text(
                "\n".join(self.lines) + "\n")


@pytest.fixture
def trace(loopback, tmp_path):
    runs = []

    def start(name, *args, env=None):
        run = Trace(tmp_path, list(args), env)
        runs.append((name, run))
        return run
    yield start
    for name, run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        run.keep(name)


# --- cheap traffic from this process (a new interpreter costs 10 s under TCG) ----------------

@pytest.fixture
def listener(loopback):
    with labkit.Listener() as server:
        yield server


def closed_port_datagram(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"legacytrace-drops", (labkit.LOOPBACK, port))


def own(events, pid):
    return [event for event in events if event["pid"] == pid and event["context"] == "task"]


# --- the tests -------------------------------------------------------------------------------

def test_icmp_senders_shows_ping_with_its_command_line(trace):
    run = trace("icmp-senders", "-m", "icmp-senders", "icmp")
    run.wait_attached(lambda: labkit.ping(1), lambda e: e["comm"] == "ping")
    ping = labkit.ping(2)
    code = run.stop()
    assert code == 0 and "Traceback" not in run.stderr, run.stderr
    sent = [e for e in own(run.events, ping.pid) if e["func"] in ("ip_finish_output", "ip_output")]
    assert len(sent) >= 2, run.lines[-20:]
    for event in sent:
        assert event["comm"] == "ping" and event["cmdline"] == " ".join(ping.argv), event
        assert (event["saddr"], event["daddr"], event["proto"]) == (
            labkit.LOOPBACK, labkit.LOOPBACK, "icmp"), event
    assert sorted(e["icmp_seq"] for e in sent if e["icmp_type"] == 8)[:2] == [1, 2]


def test_http1_shows_the_request_line_of_curl_and_of_a_python_script(trace, listener):
    run = trace("http1", "-m", "http1", "tcp", "dst", "port", str(listener.port))
    run.wait_attached(listener.exchange, lambda e: e.get("fields", {}).get("request"))
    curl = labkit.run_process("curl", ["curl", "-sS", "--http1.1", "-o", "/dev/null",
                                       "http://{}:{}{}".format(labkit.LOOPBACK, listener.port,
                                                               labkit.HTTP_PATH)])
    python = labkit.run_process("python", [sys.executable, "-c", PY_CLIENT, str(listener.port)])
    code = run.stop()
    assert code == 0 and "Traceback" not in run.stderr, run.stderr
    assert curl.returncode == 0 and python.output.strip() == "200", (curl.output, python.output)
    for client, line in ((curl, "GET {} HTTP/1.1".format(labkit.HTTP_PATH)),
                         (python, "GET {} HTTP/1.1".format(PY_PATH))):
        sent = [e for e in own(run.events, client.pid) if e["func"] == "tcp_sendmsg"]
        assert sent, (client.as_dict(), run.lines[-20:])
        event = sent[0]
        assert event["fields"].get("request") == line, event
        assert event["comm"] == client.comm and event["dport"] == listener.port, event


def test_tcp_connect_shows_the_destination_and_the_process(trace, listener):
    run = trace("tcp-connect", "-m", "tcp-connect", "tcp")
    run.wait_attached(listener.exchange, lambda e: e["func"] == "tcp_connect")
    bash = labkit.run_process("bash", ["bash", "-c", "exec 3<>/dev/tcp/{}/{}".format(
        labkit.LOOPBACK, listener.port)])
    code = run.stop()
    assert code == 0 and "Traceback" not in run.stderr, run.stderr
    connects = [e for e in own(run.events, bash.pid) if e["func"] == "tcp_connect"]
    assert len(connects) == 1, run.lines[-20:]
    event = connects[0]
    assert (event["daddr"], event["dport"], event["proto"]) == (
        labkit.LOOPBACK, listener.port, "tcp"), event
    assert event["comm"] == "bash" and event["sport"] > 0, event
    # TCP_SYN_SENT (include/net/tcp_states.h): tcp_v4_connect set it before tcp_connect.
    assert event["fields"]["state"] == 2, event


def no_socket_reason():
    """What a drop for want of a socket reads as: the name, or the running kernel's number."""
    from legacytrace.kernel import btf
    values = btf.load().enum_values("skb_drop_reason")
    return ["NO_SOCKET"] + [value for value, name in values.items()
                            if name == "SKB_DROP_REASON_NO_SOCKET"]


def test_drops_shows_a_datagram_to_a_closed_port_with_reason_and_caller(trace):
    port = labkit.free_port(socket.SOCK_DGRAM)
    run = trace("drops", "-m", "drops", "udp")
    run.wait_attached(lambda: closed_port_datagram(port), lambda e: e["dport"] == port)
    sender = labkit.udp_closed_port()
    code = run.stop()
    assert code == 0 and "Traceback" not in run.stderr, run.stderr
    drops = [e for e in run.events if e["dport"] == sender.dport
             and e["func"] in ("kfree_skb_reason", "sk_skb_reason_drop", "kfree_skb")]
    assert drops, run.lines[-20:]
    event = drops[0]
    said = run.stderr.count("no reason on this kernel")
    if "reason" in labkit.manifest_probes("drops")[0].args:
        assert event["fields"]["reason"] in no_socket_reason() and said == 0, event
    else:       # kfree_skb before 5.17: no reason, and the run says so once
        assert "reason" not in event["fields"] and said == 1, (event, run.stderr)
    # The UDP receive path frees the datagram it has no socket for.
    assert event["fields"]["caller"].startswith("__udp4_lib_rcv"), event
    assert (event["saddr"], event["daddr"]) == (labkit.LOOPBACK, labkit.LOOPBACK), event
    assert isinstance(event["fields"]["mark"], int), event


def test_default_manifest_shows_a_tcp_exchange_on_both_paths(trace, listener):
    run = trace("generic", "--proto", "tcp", "--dport", str(listener.port))
    run.wait_attached(listener.exchange, lambda e: e["func"] in TRANSMIT)
    sport = listener.exchange()
    code = run.stop()
    assert code == 0 and "Traceback" not in run.stderr, run.stderr
    tuple_ = {(labkit.LOOPBACK, sport, labkit.LOOPBACK, listener.port)}
    flow = [e for e in run.events if (e["saddr"], e["sport"], e["daddr"], e["dport"]) in tuple_]
    funcs = set(e["func"] for e in flow)
    assert funcs & TRANSMIT and funcs & RECEIVE, (funcs, run.lines[-20:])
    sent = [e for e in flow if e["func"] in TRANSMIT and e["context"] == "task"]
    assert sent and all(e["pid"] == os.getpid() for e in sent), sent[:3]
