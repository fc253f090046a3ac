"""The bundled manifests on the stap backend, in the lab kernel (issue 7), and `trace -b stap`
through the CLI in a guest without kernel headers (issue 8).

Host phase (`host` marker): each manifest's program, resolved for the guest's release, is
compiled into the backend's module cache (LEGACYTRACE_LAB_CACHE/stap-manifests, shared with
the guest), as `legacytrace build` would. Guest phase: the same programs (the same text, so
the same cache key) run from the cache while known traffic runs, and the events must name
the right process, tuple and extras (request line, drop reason, caller). The raw LT1 lines
are kept in LEGACYTRACE_LAB_SHARED for tests/data/stap/.
"""
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import labkit
import test_stap
from legacytrace.kernel import btf, symbols
from legacytrace.backends import stap
from legacytrace.backends.stap import cache as stap_cache
from legacytrace.backends.stap import session as stap_session
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import TraceRequest

#: Fixed ports, so that the host phase can compile their filters before the guest exists.
HTTP_PORT = 47080
CONNECT_PORT = 47081
GENERIC_PORT = 47082
CLI_PORT = 47083
#: manifest -> flow filter of its program (FlowFilter.parse keywords).
PROGRAMS = {
    "icmp-senders": {"proto": "icmp"},
    "http1": {"proto": "tcp", "dport": str(HTTP_PORT)},
    "tcp-connect": {"proto": "tcp", "dport": str(CONNECT_PORT)},
    "drops": {"proto": "udp"},
    "generic": {"proto": "tcp"},
    "cli": {"proto": "tcp", "dport": str(CLI_PORT)},
}
#: The manifest each program is built from (the CLI test traces tcp-connect).
MANIFESTS = {"cli": "tcp-connect"}
PY_PATH = "/from-python"
PY_CLIENT = ("import http.client,sys;c=http.client.HTTPConnection(sys.argv[1],int(sys.argv[2]));"
             "c.request('GET',sys.argv[3]);print(c.getresponse().status)")
#: bash opens a TCP connection and writes one line: cheap to start under TCG.
TCP_SEND = 'exec 3<>/dev/tcp/"$1"/"$2"; printf "hello\\n" >&3; exec 3>&-'


def request_for(name, release):
    """The TraceRequest of a program: the manifest resolved for the lab kernel, as `legacytrace
    trace` resolves it there (the same in the host phase, which compiles it, and the guest)."""
    spec = MANIFESTS.get(name, name)
    return TraceRequest(labkit.manifest_probes(spec), FlowFilter.parse(**PROGRAMS[name]),
                        HostFacts(release=release), run_id="lt{}".format(os.getpid()), manifest=spec)


def program(name, release):
    return stap.StapBackend().build(request_for(name, release))


@pytest.fixture
def module_cache(lab_cache, monkeypatch, stap_runtime):
    path = lab_cache / "stap-manifests"
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(path))
    monkeypatch.setenv(stap_cache.RUNTIME_ENV, str(stap_runtime))
    return path


# --- host phase ------------------------------------------------------------------

@pytest.mark.host
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_host_compiles_the_manifest(name, lab_release, module_cache):
    module = stap.StapBackend().compile(program(name, lab_release))
    assert os.path.isfile(module)


# --- guest phase -------------------------------------------------------------------

class Tracer(test_stap.Tracer):
    """The manifest's program, from the module cache, its lines kept in the shared folder."""

    def __init__(self, name, release, lab_shared):
        super().__init__(program(name, release), capture=lab_shared / "stap-manifest-{}-{}.txt"
                         .format(name, os.uname().release))

    def __enter__(self):
        super().__enter__()
        if self.attach_seconds >= 60:
            self.__exit__(None, None, None)
            raise AssertionError("the module was not taken from the cache ({:.0f} s to attach)"
                                 .format(self.attach_seconds))
        return self


def bash_sends_a_line(name, port):
    """bash connects to a labkit.Listener on `port` and writes one line."""
    return labkit.run_process(name, ["bash", "-c", TCP_SEND, "bash", labkit.LOOPBACK, str(port)],
                              dport=port)


def of(events, workload, func=None):
    return [e for e in events if e.pid == workload.pid and func in (None, e.func)]


def test_icmp_senders_names_ping_and_its_command_line(lab_release, lab_shared, module_cache,
                                                      loopback):
    with Tracer("icmp-senders", lab_release, lab_shared) as tracer:
        ping = labkit.ping()
    requests = [e for e in of(tracer.events, ping) if e.icmp_type == 8]
    assert [e.icmp_seq for e in requests] == [1, 2], tracer.lines
    for event in requests:
        assert event.func == "ip_finish_output" and event.context == "task"
        assert (event.comm, event.cmdline) == ("ping", " ".join(ping.argv))
        assert (event.family, event.saddr, event.daddr) == (4, labkit.LOOPBACK, labkit.LOOPBACK)
    assert {e.proto for e in tracer.events} == {1}


def http_server(root):
    """busybox httpd on HTTP_PORT serving the two paths the clients ask for."""
    for path in (labkit.HTTP_PATH, PY_PATH):
        Path(root, path.lstrip("/")).write_text("hello from the legacytrace lab\n")
    argv = ["busybox", "httpd", "-f", "-p", "{}:{}".format(labkit.LOOPBACK, HTTP_PORT),
            "-h", root]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    labkit.wait_listening(HTTP_PORT)
    return server


def test_http1_shows_the_request_line_of_curl_and_of_python(lab_release, lab_shared,
                                                             module_cache, loopback):
    url = "http://{}:{}{}".format(labkit.LOOPBACK, HTTP_PORT, labkit.HTTP_PATH)
    with tempfile.TemporaryDirectory(prefix="ltlab-http1-") as root:
        server = http_server(root)
        try:
            with Tracer("http1", lab_release, lab_shared) as tracer:
                curl = labkit.run_process("curl", ["curl", "-sS", "--http1.1", "-o", "/dev/null",
                                                   "-w", "%{http_code}", url], dport=HTTP_PORT)
                python = labkit.run_process("python", ["python3", "-c", PY_CLIENT,
                                                       labkit.LOOPBACK, str(HTTP_PORT), PY_PATH],
                                            dport=HTTP_PORT)
        finally:
            labkit.stop_process(server, signal.SIGTERM)
    assert curl.output.strip() == "200" and python.output.strip() == "200"
    events = tracer.events
    for client, path in ((curl, labkit.HTTP_PATH), (python, PY_PATH)):
        sent = of(events, client, "tcp_sendmsg")
        assert sent, (client.as_dict(), tracer.lines)
        first = sent[0]
        assert first.fields.get("request") == "GET {} HTTP/1.1".format(path), first
        assert first.comm == client.comm and first.context == "task"
        assert first.cmdline.startswith(" ".join(client.argv[:2])), first
        assert (first.family, first.proto, first.daddr, first.dport) == (
            4, 6, labkit.LOOPBACK, HTTP_PORT)
        assert first.skb is None and first.length is None
    # the filter (dport 80-like) keeps the server's answers out
    assert {e.dport for e in events} == {HTTP_PORT}


def test_tcp_connect_shows_destination_and_process(lab_release, lab_shared, module_cache,
                                                   loopback):
    with labkit.Listener(CONNECT_PORT), Tracer("tcp-connect", lab_release, lab_shared) as tracer:
        client = bash_sends_a_line("connect", CONNECT_PORT)
    assert client.returncode == 0, client.output
    connects = of(tracer.events, client, "tcp_connect")
    assert len(connects) == 1, tracer.lines
    event = connects[0]
    assert (event.comm, event.cmdline) == ("bash", " ".join(client.argv))
    assert (event.proto, event.saddr, event.daddr, event.dport) == (
        6, labkit.LOOPBACK, labkit.LOOPBACK, CONNECT_PORT)
    assert event.sport and event.sport != CONNECT_PORT
    assert event.fields == {"state": 2}  # TCP_SYN_SENT: tcp_v4_connect set it before


def test_drops_shows_a_datagram_to_a_closed_port_with_reason_and_caller(
        lab_release, lab_shared, module_cache, loopback):
    """With a reason where the kernel has kfree_skb_reason (5.17+); before, kfree_skb has none."""
    dropper = labkit.manifest_probes("drops")[0]
    with Tracer("drops", lab_release, lab_shared) as tracer:
        sender = labkit.udp_closed_port()
    dropped = [e for e in tracer.events if e.dport == sender.dport]
    assert len(dropped) == 1, tracer.lines
    event = dropped[0]
    assert event.func == dropper.name and event.proto == 17
    if "reason" in dropper.args:
        reasons = dict((name, value) for value, name in
                       btf.load(labkit.BTF).enum_values("skb_drop_reason").items())
        assert event.fields["reason"] == reasons["SKB_DROP_REASON_NO_SOCKET"], event
    else:
        assert "reason" not in event.fields, event
    caller = event.fields["caller"]
    if isinstance(caller, int):
        # symdata() found no symbol table in a module built on the host (seen on 6.1): the
        # number is symbolized in user space, as `legacytrace trace` does (legacytrace.enrich).
        caller = symbols.Kallsyms.read().name(caller)
    assert re.match(r"^(__udp4_lib_rcv|udp_rcv)\+0x[0-9a-f]+$", caller or ""), event
    assert event.fields["mark"] == 0


def test_generic_shows_a_tcp_exchange_on_both_paths(lab_release, lab_shared, module_cache,
                                                    loopback):
    with labkit.Listener(GENERIC_PORT):
        tracer, client = test_stap.whole_trace(
            lambda: Tracer("generic", lab_release, lab_shared),
            lambda: bash_sends_a_line("exchange", GENERIC_PORT))
    assert client.returncode == 0, client.output
    events = tracer.events
    sport = next(e.sport for e in of(events, client) if e.dport == GENERIC_PORT)
    forward = {e.func for e in events if (e.sport, e.dport) == (sport, GENERIC_PORT)}
    backward = {e.func for e in events if (e.sport, e.dport) == (GENERIC_PORT, sport)}
    probed = {p.name for p in labkit.manifest_probes("generic")}
    transmit = probed & {"ip_local_out", "ip_local_out_sk", "ip_output", "ip_finish_output",
                         "__dev_queue_xmit", "dev_queue_xmit"}
    receive = probed & {"__netif_receive_skb", "ip_rcv", "ip_rcv_core", "ip_local_deliver",
                        "ip_local_deliver_finish", "tcp_v4_rcv"}
    assert len(transmit) == 4 and len(receive) == 5, probed
    # The lab's EL7 build (gcc 11) inlines ip_local_out_sk into ip_queue_xmit, TCP's way out,
    # while keeping the symbol for other callers: TCP does not pass the probed copy there.
    transmit -= {"ip_local_out_sk"}
    for seen in (forward, backward):
        assert transmit <= seen and receive <= seen, (seen, tracer.report, tracer.lines[:40])


# --- issue 8: the CLI in a guest that has no kernel headers ------------------------------

def loaded_lt_modules():
    modules = [line.split()[0] for line in Path("/proc/modules").read_text().splitlines()]
    in_sys = [p.name for p in Path("/sys/module").iterdir()]
    return sorted(set(m for m in modules + in_sys if m.startswith("lt_")))


def start_cli(args):
    """`legacytrace trace ARGS` once it says it traces with stap, and its stderr lines so far."""
    tracer = subprocess.Popen([sys.executable, "-m", "legacytrace", "trace"] + args,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
    return tracer, wait_tracing(tracer)


def wait_tracing(tracer):
    """The CLI's stderr lines up to its `tracing with stap` line (killed if it never comes)."""
    before = []
    for line in tracer.stderr:
        before.append(line)
        if line.startswith("legacytrace: tracing with stap"):
            return before
    tracer.kill()
    raise AssertionError("the CLI did not start tracing: " + "".join(before))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_trace_with_stap_runs_the_cached_module_and_leaves_nothing(
        sig, lab_release, module_cache, loopback):
    assert loaded_lt_modules() == []
    tracer, before = start_cli(["--backend", "stap", "--proto", "tcp", "--dport", str(CLI_PORT),
                                "-m", "tcp-connect", "--json", "-T", "120"])
    try:
        assert any(name.startswith("lt_") for name in loaded_lt_modules())
        with labkit.Listener(CLI_PORT):
            client = bash_sends_a_line("cli-connect", CLI_PORT)
        time.sleep(1.0)
        tracer.send_signal(sig)
        # The CLI's own bound: lines for FINISH_TIMEOUT, staprun's exit for STOP_TIMEOUT (a
        # run waited 60 s here and timed out once, with the module gone 11 s later).
        out, err = tracer.communicate(
            timeout=stap_session.FINISH_TIMEOUT + stap_session.STOP_TIMEOUT + 60)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert tracer.returncode == 0, "".join(before) + err
    objects = [json.loads(line) for line in out.splitlines()]
    events = [obj for obj in objects if "type" not in obj]
    assert objects[-1]["type"] == "summary" and objects[-1]["events"] == len(events)
    connects = [e for e in events if e["pid"] == client.pid and e["func"] == "tcp_connect"]
    assert [(e["daddr"], e["dport"]) for e in connects] == [(labkit.LOOPBACK, CLI_PORT)], out
    assert "({})".format(sig.name) in err, err
    assert loaded_lt_modules() == [], "the stap module stayed loaded after {}".format(sig.name)


# --- issue 8: events lost in the transport are counted ---------------------------------

FLOOD_PORT = 47084
FLOOD_MODULE = "lt_lab_flood"
FLOOD_DATAGRAMS = 10000


def flood_program(release):
    """Five probes per datagram of the flood (positions from the generic manifest), only its port."""
    probes = labkit.manifest_probes("generic", "ip_output", "ip_finish_output", "ip_rcv", "udp_rcv")
    probes += [p for p in labkit.manifest_probes("generic") if "dev_queue_xmit" in p.name]
    return stap.StapBackend().build(TraceRequest(
        probes, FlowFilter.parse(proto="udp", dport=str(FLOOD_PORT)), HostFacts(release=release),
        run_id="lt{}".format(os.getpid())))


@pytest.mark.host
def test_host_builds_a_module_with_a_tiny_transport_buffer(lab_release, stap_build):
    """stap -s 1: one MB of transport buffer per CPU, the smallest stap allows."""
    stap_build(FLOOD_MODULE, flood_program(lab_release).text,
               options=("-g", "-s", "1") + stap_cache.STAP_DEFINES)


def test_a_flood_nobody_reads_loses_events_and_the_summary_counts_them(stap_module, loopback):
    """The CLI's stdout is not read during the flood, so the CLI blocks writing while its
    reader thread keeps staprun drained: lines beyond the backlog are dropped and counted,
    in the summary's JSON and text. The backlog (one line, the least it takes) and the stdout
    pipe (one page) are small so that the few lines a boot whose SystemTap transport fails
    still delivers overflow them too (CI runs got 1,548 events and no overflow with 2,000
    lines of backlog and a 64 KiB pipe, and 30 events with 20 lines and one page). Every line the module produced, 5 a datagram, was an
    event or a counted loss in the run that checked it; SystemTap's own transport can lose
    lines it does not count (README.md), so the test asks no equality."""
    tracer = subprocess.Popen(
        [sys.executable, "-m", "legacytrace", "trace", "--stap-module",
         str(stap_module(FLOOD_MODULE)), "--json", "-T", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        env=dict(os.environ, **{stap_session.BACKLOG_ENV: "1"}))
    fcntl.fcntl(tracer.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)   # empty yet: cannot fail
    try:
        before = wait_tracing(tracer)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            receiver.bind((labkit.LOOPBACK, FLOOD_PORT))
            for _ in range(FLOOD_DATAGRAMS):
                sender.sendto(b"legacytrace-flood", (labkit.LOOPBACK, FLOOD_PORT))
        tracer.send_signal(signal.SIGINT)
        out, err = tracer.communicate(timeout=600)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert tracer.returncode == 0, "".join(before) + err
    summary = json.loads(out.splitlines()[-1])
    assert summary["type"] == "summary", out[-500:]
    behind = summary["lost"].get("stap lines the parser fell behind on", 0)
    assert behind > 0, (summary, err)
    assert "stap lines the parser fell behind on: {}".format(behind) in err, err
    assert summary["events"] + summary["lost_total"] <= FLOOD_DATAGRAMS * 5, summary
    assert loaded_lt_modules() == []
