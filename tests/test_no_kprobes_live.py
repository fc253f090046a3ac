"""The CLI live on a kernel without kprobes (this development machine's 6.18): ftrace's
tracepoint mode and bpf's, as a user meets them.

Each test runs the real `legacytrace` as root, with loopback pings as traffic; under
LEGACYTRACE_REQUIRE_KERNEL=1 a missing feature fails instead of skipping.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import require
from legacytrace.kernel.host import probe_host
from legacytrace.kernel.tracefs import ensure as ensure_tracefs
from test_bad_input import LEGACYTRACE, check, leftovers_of, run


@pytest.fixture(scope="module")
def host():
    require(os.geteuid() == 0, "needs root")
    ensure_tracefs()
    facts = probe_host()
    require(facts.tracefs and facts.tracepoints, "needs tracefs with net/skb tracepoints")
    require(facts.kprobes is False, "needs a kernel without kprobes (tracepoint mode)")
    subprocess.call(["ip", "link", "set", "lo", "up"])
    return facts


@pytest.fixture(scope="module")
def bpftrace(host):
    require(shutil.which("bpftrace") and host.btf, "needs bpftrace and BTF")


@pytest.fixture
def ping():
    """Loopback pings for the length of a test."""
    proc = subprocess.Popen(["ping", "-i", "0.2", "127.0.0.1"], stdout=subprocess.DEVNULL)
    yield proc
    proc.kill()
    proc.wait()


def events(result):
    return [json.loads(line) for line in result.out.splitlines() if '"type"' not in line]


def test_ftrace_refuses_a_flow_filter_before_tracing(host, ping):
    result = run(["trace", "-b", "ftrace", "icmp", "-T", "3"])
    check(result, 1, "backend ftrace cannot run this trace here", "no flow filter")
    assert "tracing with" not in result.err


def test_auto_picks_a_backend_that_answers_a_flow_filter(host, bpftrace, ping):
    result = run(["trace", "icmp", "-T", "3", "--json"])
    assert result.code == 0, result.err
    found = events(result)
    assert found and all(e["backend"] == "bpf" and e["proto"] == "icmp" for e in found)


def test_ftrace_refuses_a_manifest_no_tracepoint_fires_in(host):
    check(run(["trace", "-b", "ftrace", "-m", "http1", "-T", "3"]), 1,
          "http1: the ftrace backend can trace none of its functions (tcp_sendmsg)")


def test_ftrace_traces_what_the_regex_keeps(host, ping):
    result = run(["trace", "-b", "ftrace", "-r", "net_dev_queue", "-T", "2", "--json"])
    assert result.code == 0, result.err
    found = events(result)
    assert found and {e["func"] for e in found} == {"net:net_dev_queue"}
    assert "legacytrace: tracing with ftrace (all flows); Ctrl-C to stop" in result.err


def test_ftrace_and_bpf_name_the_same_tracepoints_alike(host, bpftrace, ping):
    names = {}
    for backend in ("ftrace", "bpf"):
        result = run(["trace", "-b", backend, "-T", "3", "--json"])
        assert result.code == 0, result.err
        names[backend] = {e["func"] for e in events(result) if e["dev"] == "lo"}
    assert {"net:net_dev_queue", "net:netif_receive_skb"} <= names["ftrace"] & names["bpf"]


def test_the_duration_starts_once_the_probes_are_attached(host, bpftrace, ping):
    """bpftrace takes about a second to attach here: a shorter -T used to end the trace
    before it started ("0 events", never "tracing with")."""
    result = run(["trace", "icmp", "-T", "0.5", "--json"])
    assert result.code == 0, result.err
    assert "tracing with bpf" in result.err and "duration of 0.5 s reached" in result.err


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def killed_run(backend):
    """A trace killed with SIGKILL once it traces: what it attached stays. Returns its pid."""
    proc = subprocess.Popen([LEGACYTRACE, "trace", "-b", backend], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, universal_newlines=True)
    for line in proc.stderr:
        if "tracing with" in line:
            break
    proc.kill()
    proc.wait()
    proc.stderr.close()
    return proc.pid


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("backend, words", [
    ("ftrace", ["ftrace: cannot read /sys/kernel/tracing to look for leftovers"]),
    ("bpf", ["bpf: /tmp/legacytrace_lt", "is still there"]),
])
def test_cleanup_that_cannot_look_or_remove_says_so(host, backend, words):
    if backend == "bpf":
        require(shutil.which("bpftrace") and host.btf, "needs bpftrace and BTF")
    if run(["--version"], prefix=NOBODY).code != 0:
        pytest.skip("this venv's interpreter is not readable by uid 65534 (e.g. under /root)")
    pid = killed_run(backend)
    try:
        assert leftovers_of(pid), "the killed run left nothing to clean up"
        result = run(["cleanup", "-b", backend], prefix=NOBODY)
        assert result.code == 1 and "removed 0" not in result.out, (result.out, result.err)
        assert result.last.startswith("Error: ") and result.last.endswith("run as root (sudo)")
        assert all(word in result.last for word in words), result.last
        assert leftovers_of(pid)
    finally:
        cleaned = run(["cleanup", "-b", backend])
    assert cleaned.code == 0 and "legacytrace_lt{}".format(pid) in cleaned.out, cleaned.err
    assert leftovers_of(pid) == []


def test_a_bpf_run_says_little_before_it_traces(host, bpftrace, ping):
    result = run(["trace", "icmp", "-c", "1"])
    assert result.code == 0, result.err
    preamble = result.err.split("legacytrace: tracing with bpf (icmp)")[0].splitlines()
    assert len(preamble) <= 2 and all(len(line) < 140 for line in preamble), preamble


def test_list_functions_lists_only_what_tracepoint_mode_traces(host):
    from legacytrace.kernel import tracepoints
    result = run(["list-functions"])
    assert result.code == 0, result.err
    names = result.out.split()
    assert "__dev_queue_xmit" in names and all(tracepoints.of(name) for name in names)
    assert "this kernel has no kprobes" in result.err


def test_ftrace_refuses_a_process_filter_before_tracing(host, ping):
    result = run(["trace", "-b", "ftrace", "-p", str(ping.pid), "-T", "3"])
    check(result, 1, "backend ftrace cannot run this trace here",
          "the packets a process receives cannot be told (pid {})".format(ping.pid))
    assert "tracing with" not in result.err


#: A UDP echo server in a process of its own; it prints "ready" once bound.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
"""
UDP_ECHO_PORT = 47211


@pytest.fixture
def udp_echo(host):
    """The echo server and a client process that asks it every 0.2 s, for one test."""
    server = subprocess.Popen([sys.executable, "-c", UDP_ECHO, str(UDP_ECHO_PORT)],
                              stdout=subprocess.PIPE, universal_newlines=True)
    assert server.stdout.readline().strip() == "ready"
    client = subprocess.Popen([sys.executable, "-c", (
        "import socket, time\nc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "c.settimeout(1)\nwhile True:\n    c.sendto(b'x', ('127.0.0.1', {}))\n"
        "    c.recv(10)\n    time.sleep(0.2)\n").format(UDP_ECHO_PORT)])
    yield server, client
    for proc in (client, server):
        proc.kill()
        proc.wait()


def test_bpf_pid_filter_keeps_what_the_server_sends_and_receives(host, bpftrace, udp_echo):
    server, client = udp_echo
    result = run(["trace", "-b", "bpf", "-p", str(server.pid), "-T", "4", "--json", "udp"])
    assert result.code == 0, result.err
    found = events(result)
    assert found, result.err
    assert all(e["owner_pid"] == server.pid for e in found), found
    assert all(e["pid"] == server.pid for e in found if e["context"] == "task"), found
    received = [e for e in found if e["dport"] == UDP_ECHO_PORT]
    assert received and all(e["context"] == "softirq" for e in received), found
    assert [e for e in found if e["sport"] == UDP_ECHO_PORT and e["context"] == "task"]
    assert not [e for e in found if e["pid"] == client.pid and e["context"] == "task"]


def test_bpf_attributes_every_ping_from_the_first_event_to_the_last(host, bpftrace, ping):
    result = run(["trace", "-b", "bpf", "-T", "3", "--json", "icmp"])
    assert result.code == 0, result.err
    found = [e for e in events(result) if e["icmp_id"] is not None]
    assert found, result.err
    requests = [e for e in found if e["func"] == "net:net_dev_queue" and e["icmp_type"] == 8]
    assert requests and all((e["context"], e["pid"]) == ("task", ping.pid) for e in requests)
    others = [e for e in found if e not in requests]
    assert others and all(e["context"] == "softirq" for e in others), others
    assert all((e["owner_pid"], e["owner_comm"]) == (ping.pid, "ping") for e in found), found
