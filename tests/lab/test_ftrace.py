"""The ftrace backend on each lab kernel (kprobe_events; struct offsets from BTF, or on EL7
from the table of known builds).

Proves: tuples of ping, UDP and TCP at receive and transmit functions agree with tcpdump;
the sender's pid on the transmit side; a flow filter (compiled into event filters) shows
that flow only; cleanup after SIGINT, SIGTERM, a closed pipe, and SIGKILL + cleanup, with
another tool's enabled probe left alone; the offsets agree with the kernel (BTF with pahole,
the EL7 table with the kernel's headers); the standalone sh script works and its capture parses.
Argument positions come from the bundled manifests, resolved for the running kernel.

The tracer runs as a separate process (DRIVER: the backend under the project's trace loop,
JSON Lines on stdout), so that signals reach it as they reach `legacytrace trace`. It also
records the raw trace_pipe lines in LEGACYTRACE_LAB_SHARED for the parser's unit tests.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import labkit

from legacytrace.kernel import features, offsets
from legacytrace.backends.ftrace import FtraceBackend
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest

#: A function no kernel has: kprobe_events refuses it, and the run must warn and go on.
REFUSED = "legacytrace_lab_no_such_function"


def lab_probes():
    """(name, skb_pos, sk_pos) of the functions traced here, positions from the bundled manifests
    for this kernel: the generic manifest's IPv4 path and device queue and drop functions as
    `trace` picks them, tcp_sendmsg (http1), tcp_connect (tcp-connect), and REFUSED."""
    probes = labkit.manifest_probes("generic", "ip_rcv", "ip_local_deliver", "tcp_v4_rcv",
                                    "udp_rcv", "icmp_rcv", "ip_output", "ip_finish_output")
    probes += [p for p in labkit.manifest_probes("generic")
               if p.name in ("__dev_queue_xmit", "dev_queue_xmit", "kfree_skb", "kfree_skb_reason",
                             "sk_skb_reason_drop")]
    probes += labkit.manifest_probes("http1") + labkit.manifest_probes("tcp-connect")
    return [(p.name, p.skb_pos, p.sk_pos) for p in probes] + [(REFUSED, 1, None)]


def xmit_function():
    """The device queue function the generic manifest probes on this kernel."""
    return next(name for name, _, _ in lab_probes() if "dev_queue_xmit" in name)


def shared_file(lab_shared, what):
    """LEGACYTRACE_LAB_SHARED/ftrace-kprobe-KERNEL-WHAT, kept for tests/data/ftrace/."""
    return Path(str(lab_shared)) / "ftrace-kprobe-{}-{}".format(labkit.lab_kernel(), what)

DRIVER = r"""
import json, os, sys
from legacytrace import render, trace
from legacytrace.backends.ftrace import FtraceBackend
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Limits, Probe, TraceRequest

spec = json.loads(sys.argv[1])
raw = open(spec["raw"], "a") if spec.get("raw") else None

class Recording(FtraceBackend):
    def parse_lines(self, lines, program=None):
        if raw is not None:
            raw.writelines(line + "\n" for line in lines if line)
            raw.flush()
        return FtraceBackend.parse_lines(self, lines, program)

facts = HostFacts.from_dict(spec["facts"])
probes = [Probe(name, skb, sk) for name, skb, sk in spec["probes"]]
flow = FlowFilter.parse(**spec["flow"])
backend = Recording()
request = TraceRequest(probes, flow, facts, run_id="lt{}".format(os.getpid()))
program = backend.build(request)
stats = render.Summary()

# A buffered writer over stdout: under -u a write that SIGINT interrupts part way is not
# finished by the text layer, which would cut a JSON line
out = open(1, "w", buffering=1, closefd=False)
sink = render.JsonRenderer(out)
def announce():
    sys.stderr.write("ready {}\n".format(program.part.group))
    sys.stderr.flush()
try:
    ended = trace.run(backend, program, flow, Limits(duration=spec.get("duration")), sink, stats,
                      attached=announce)
    out.flush()
except BrokenPipeError:
    ended = "closed pipe"
sys.stderr.write("ended: {}; lost {}\n".format(ended, dict(stats.lost)))
"""


def guest_facts():
    """The facts the ftrace backend uses, read directly: probe_host() also times bpftrace
    loading a program, which takes minutes under TCG."""
    root = labkit.tracefs_root()
    btf = Path("/sys/kernel/btf/vmlinux")
    return HostFacts(release=os.uname().release, root=True, tracefs=str(root),
                     kprobe_events=(root / "kprobe_events").exists(),
                     kprobe_syntax=features.readme_kprobe_syntax((root / "README").read_text()),
                     instances=(root / "instances").is_dir(), btf=str(btf) if btf.exists() else None)


@pytest.fixture(scope="module")
def tracing():
    root = labkit.tracefs_root()
    assert (root / "kprobe_events").exists(), "the lab kernel has kprobe_events"
    return root


@pytest.fixture
def foreign_probe(tracing):
    """Another tool's probe, enabled in the top-level buffer before our run."""
    events = tracing / "kprobe_events"
    labkit.append_line(events, "p:ltforeign/sentinel ip_rcv")
    enable = tracing / "events" / "ltforeign" / "sentinel" / "enable"
    enable.write_text("1")
    yield events
    enable.write_text("0")
    labkit.append_line(events, "-:ltforeign/sentinel")


class Tracer:
    """The DRIVER process: start, wait until attached, stop, collect events."""

    def __init__(self, flow=None, raw=None, duration=None):
        spec = {"probes": lab_probes(), "flow": flow or {}, "raw": str(raw) if raw else None,
                "duration": duration, "facts": guest_facts().to_dict()}
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", DRIVER, json.dumps(spec)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True, start_new_session=True)
        self.warnings = []
        line = self.proc.stderr.readline()
        # a refused function: warned (legacytrace.errors.warn), the run goes on
        while line.startswith("legacytrace: warning: ftrace: "):
            self.warnings.append(line)
            line = self.proc.stderr.readline()
        if not line.startswith("ready "):
            try:
                _, err = self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            raise AssertionError("tracer did not attach: " + line + err)
        self.group = line.split()[1]
        self.pid = self.proc.pid

    def stop(self, sig=signal.SIGINT, timeout=60):
        time.sleep(2)                         # the reader takes the last events (TCG is slow)
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr = err
        return [_loads(line) for line in out.splitlines() if line.startswith("{")]


def _loads(line):
    try:
        return json.loads(line)
    except ValueError as exc:
        raise AssertionError("not JSON ({}): {}".format(exc, line))


def assert_nothing_of_ours_left(tracing, group):
    text = (tracing / "kprobe_events").read_text()
    assert "legacytrace_" not in text, text
    assert not (tracing / "instances" / group).exists()
    assert "ltforeign/sentinel" in text
    assert (tracing / "events" / "ltforeign" / "sentinel" / "enable").read_text().strip() == "1"


def tuple_of(event):
    return (event["saddr"], event["daddr"], event["proto"], event["sport"], event["dport"])


def truth_tuple(packet):
    proto = {"icmp": "icmp", "udp": "udp", "tcp": "tcp"}[packet.proto]
    return (packet.src, packet.dst, proto, packet.sport, packet.dport)


def test_tuples_pids_and_functions_match_tcpdump(tracing, foreign_probe, traffic, ground_truth,
                                                 lab_shared):
    tracer = Tracer(raw=shared_file(lab_shared, "all-traffic.trace"))
    ping, closed, sender, receiver, client, server = traffic.all()
    packets = ground_truth.stop()
    events = tracer.stop()
    assert "ended:" in tracer.stderr and "Traceback" not in tracer.stderr, tracer.stderr
    assert_nothing_of_ours_left(tracing, tracer.group)
    shared_file(lab_shared, "all-traffic.workloads.json").write_text(json.dumps(
        [w.as_dict() for w in (ping, closed, sender, receiver, client, server)]))
    shared_file(lab_shared, "all-traffic.tcpdump.txt").write_text(
        "\n".join(p.line for p in packets) + "\n")
    assert [w for w in tracer.warnings if REFUSED + " is not traced" in w], tracer.warnings
    by_func = {}
    for event in events:
        by_func.setdefault(event["func"], []).append(event)
    # every packet tcpdump saw on lo is received once: ip_rcv shows its tuple
    received = [tuple_of(e) for e in by_func["ip_rcv"]]
    for packet in packets:
        assert truth_tuple(packet) in received, packet.line
    # and the same tuples at the transmit functions and at the device queue (data at L2)
    for func in ("ip_output", "ip_finish_output", xmit_function()):
        seen = [tuple_of(e) for e in by_func[func]]
        for packet in packets:
            assert truth_tuple(packet) in seen, (func, packet.line)
    # receive-side transport functions: data at L4, the IP header before it
    for func, proto in (("tcp_v4_rcv", "tcp"), ("udp_rcv", "udp"), ("icmp_rcv", "icmp")):
        assert by_func[func] and all(e["proto"] == proto for e in by_func[func]), func
    # the senders' pids on the transmit side, in task context
    echo = [e for e in by_func["ip_output"] if e["proto"] == "icmp" and e["icmp_type"] == 8]
    assert len(echo) == 2 and all((e["pid"], e["comm"], e["context"]) == (ping.pid, "ping", "task")
                                  for e in echo), echo
    udp_out = [e for e in by_func["ip_output"] if e["proto"] == "udp" and e["dport"] == closed.dport]
    assert udp_out and {e["pid"] for e in udp_out} == {closed.pid}
    syn = [e for e in by_func["tcp_connect"] if e["dport"] == client.dport]
    assert len(syn) == 1 and syn[0]["pid"] == client.pid and syn[0]["daddr"] == "127.0.0.1"
    sends = [e for e in by_func["tcp_sendmsg"] if e["dport"] == client.dport]
    assert sends and {e["pid"] for e in sends} == {client.pid}
    assert all(e["length"] == 84 for e in by_func["ip_rcv"] if e["proto"] == "icmp"
               and e["icmp_type"] in (0, 8))
    assert all(e["dev"] == "lo" for e in by_func["ip_rcv"])


def test_flow_filter_shows_that_flow_only(tracing, foreign_probe, traffic, lab_shared):
    port = labkit.free_port(socket.SOCK_DGRAM)
    raw = shared_file(lab_shared, "udp-filter.trace")
    tracer = Tracer(flow={"proto": "udp", "daddr": "127.0.0.1", "dport": str(port)}, raw=raw)
    group = tracer.group
    filter_file = tracing / "instances" / group / "events" / group / "ip_rcv" / "filter"
    kernel_filter = filter_file.read_text()
    traffic.ping()
    traffic.http_request()
    sent = labkit.udp_send("udp", port)
    events = tracer.stop()
    assert re.search(r"_dp == \d+", kernel_filter) and "none" not in kernel_filter, kernel_filter
    assert events, tracer.stderr
    assert {(e["proto"], e["daddr"], e["dport"]) for e in events} == {("udp", "127.0.0.1", port)}
    assert {"ip_rcv", "ip_output"} <= {e["func"] for e in events}
    assert {e["pid"] for e in events if e["func"] == "ip_output"} == {sent.pid}
    # in-kernel filtering: no ICMP or TCP packet reached trace_pipe at the filtered functions
    at_ip_rcv = [l for l in raw.read_text().splitlines() if " ip_rcv: " in l]
    assert at_ip_rcv, "no ip_rcv line recorded"
    assert not [l for l in at_ip_rcv if FtraceBackend().parse(l).proto != 17], at_ip_rcv
    assert_nothing_of_ours_left(tracing, group)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "closed pipe"])
def test_every_exit_path_removes_our_probes_only(how, tracing, foreign_probe, traffic):
    tracer = Tracer()
    text = (tracing / "kprobe_events").read_text()
    assert tracer.group in text and (tracing / "instances" / tracer.group).is_dir()
    if how == "closed pipe":                   # `legacytrace trace | head -1`
        traffic.ping(1)
        assert tracer.proc.stdout.readline().startswith("{")
        tracer.proc.stdout.close()
        traffic.ping(1)
        traffic.ping(1)
        tracer.proc.wait(timeout=60)
        tracer.stderr = tracer.proc.stderr.read()
        assert "closed pipe" in tracer.stderr or "ended:" in tracer.stderr
    else:
        traffic.ping(1)
        tracer.stop(getattr(signal, how))
    assert "Traceback" not in tracer.stderr, tracer.stderr
    assert_nothing_of_ours_left(tracing, tracer.group)


def test_sigkill_leftovers_are_found_and_only_they_removed(tracing, foreign_probe):
    tracer = Tracer()
    tracer.proc.kill()
    tracer.proc.wait(timeout=30)
    facts = guest_facts()
    backend = FtraceBackend()
    left = backend.leftovers(facts)
    assert left and all(tracer.group in item for item in left)
    assert "tracefs instance " + tracer.group in left
    removed = backend.cleanup(facts)
    assert sorted(removed) == sorted(left)
    assert backend.leftovers(facts) == []
    assert_nothing_of_ours_left(tracing, tracer.group)


@pytest.mark.unsupported("el7", reason="no BTF: its offsets come from the known-builds table, "
                         "which test_known_build_table_agrees_with_the_kernel_headers checks")
def test_btf_offsets_agree_with_pahole():
    facts = guest_facts()
    layout = offsets.layout_for(facts)
    assert layout.source == "btf"
    for struct, members in (("sk_buff", ["len", "protocol", "network_header", "head", "data", "dev"]),
                            ("sock_common", ["skc_daddr", "skc_rcv_saddr", "skc_dport", "skc_num",
                                             "skc_family"])):
        from_pahole = labkit.btf_offsets(struct, members)
        assert {m: layout.field(struct, m).offset for m in members} == from_pahole


@pytest.mark.host
@pytest.mark.unsupported("6.1", "5.10", reason="a kernel with BTF: the ftrace backend takes its "
                         "offsets from BTF, not from the known-builds table")
def test_known_build_table_agrees_with_the_kernel_headers(lab_release, stap_build):
    """Every offset and size of the table for this release, asserted against the kernel's own
    headers at compile time: a wrong entry fails the build of this module, naming itself."""
    layout = offsets.from_table(lab_release)
    asserts = []
    for struct, members in layout.structs.items():
        for member, field in members.items():
            if field is None:
                continue
            asserts.append('_Static_assert(offsetof(struct {s}, {m}) == {o} && sizeof(((struct {s} *)0)->{m}) '
                           '== {z}, "struct {s}.{m} is not at {o} with size {z}");'.format(
                               s=struct, m=member, o=field.offset, z=field.size))
    script = ("%{\n#include <linux/skbuff.h>\n#include <linux/netdevice.h>\n#include <net/sock.h>\n"
              + "\n".join(asserts) + "\n%}\nprobe begin { exit() }\n")
    assert len(asserts) >= 19
    assert stap_build("lt_offsets", script).stat().st_size > 0


def test_standalone_sh_script_captures_and_cleans_up(tracing, foreign_probe, traffic, tmp_path,
                                                     lab_shared):
    facts = guest_facts()
    backend = FtraceBackend()
    program = backend.build(TraceRequest(labkit.manifest_probes("generic", "ip_rcv", "ip_output"),
                                         None, facts, run_id="lt1"))
    script = tmp_path / "trace.sh"
    script.write_text(backend.export(program, "sh"))
    capture = tmp_path / "capture.trace"
    proc = subprocess.Popen(["sh", str(script), str(capture)], stderr=subprocess.PIPE,
                            universal_newlines=True, start_new_session=True)
    assert "capturing" in proc.stderr.readline()
    group = "legacytrace_lt{}".format(proc.pid)
    assert group in (tracing / "kprobe_events").read_text()
    ping = traffic.ping()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130, proc.stderr.read()
    text = capture.read_text()
    shared_file(lab_shared, "sh-capture.trace").write_text(text)
    events = [e for e in map(backend.parse, text.splitlines()) if e]
    echo = [e for e in events if e.func == "ip_output" and e.icmp_type == 8]
    assert len(echo) == 2 and {e.pid for e in echo} == {ping.pid}
    assert {(e.saddr, e.daddr, e.proto) for e in events if e.func == "ip_rcv"} == \
        {("127.0.0.1", "127.0.0.1", 1)}
    assert_nothing_of_ours_left(tracing, group)


@pytest.mark.unsupported("el7", reason="options/record-tgid arrived in 4.14")
def test_record_tgid_column_parses(tracing, traffic, lab_shared):
    """With the global record-tgid option (restored after) lines gain a (TGID) column."""
    option = tracing / "options" / "record-tgid"
    before = option.read_text().strip()
    option.write_text("1")
    try:
        raw = shared_file(lab_shared, "record-tgid.trace")
        tracer = Tracer(raw=raw)
        ping = traffic.ping(1)
        events = tracer.stop()
    finally:
        option.write_text(before)
    lines = [l for l in raw.read_text().splitlines() if "(" in l.split("[")[0]]
    assert lines, "no line with a tgid column"
    echo = [e for e in events if e["func"] == "ip_output" and e["icmp_type"] == 8]
    assert echo and echo[0]["pid"] == ping.pid == echo[0]["tid"]


def test_cli_cleanup_after_sigkill(tracing, foreign_probe):
    tracer = Tracer()
    tracer.proc.kill()
    tracer.proc.wait(timeout=30)
    cli = Path(sys.executable).parent / "legacytrace"
    done = subprocess.run([str(cli), "cleanup", "-b", "ftrace"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert done.returncode == 0, done.stdout
    assert tracer.group in done.stdout
    assert_nothing_of_ours_left(tracing, tracer.group)
