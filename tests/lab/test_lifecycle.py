"""Lifecycle of `legacytrace trace` on each lab kernel, through the CLI itself.

Every way a trace ends leaves nothing attached: SIGINT, SIGTERM, a closed pipe
(`| head -1`) and an exception mid-trace (a bug, injected through sitecustomize: the CLI
prints one "internal error" line), for the ftrace (kprobes) and bpf backends. After SIGKILL, `legacytrace cleanup`
removes what the dead run left and nothing of a live run; two concurrent runs with different
filters see their own flows only. A probe of another tool (group ltforeign, enabled at the top
level) is there, still enabled, after every test. A function kprobes refuse ends the run with
one line.

tests/lab/test_ftrace.py covers the same exit paths for the ftrace backend driven from Python;
this file drives the installed CLI, as a user does.
"""
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import labkit


UDP_PORT = 47011
#: The flows of the tests, as CLI flags.
FLOWS = {"all": [], "udp": ["udp dst port {}".format(UDP_PORT)], "icmp": ["icmp"]}
#: Raises in the parser after LEGACYTRACE_TEST_FAIL_AFTER events: a bug mid-trace.
FAILING_PARSE = """
import os
from legacytrace import backends
_get = backends.get
def get(name):
    backend = _get(name)
    parse, left = backend.parse, [int(os.environ["LEGACYTRACE_TEST_FAIL_AFTER"])]
    def failing(line, program=None):
        event = parse(line, program)
        if event is not None:
            left[0] -= 1
            if left[0] < 0:
                raise RuntimeError("injected by test_lifecycle")
        return event
    backend.parse = failing
    return backend
backends.get = get
"""
#: A loaded module of the stap backend: lt_NAME_<staprun pid> (staprun -R renames it).
STAP_MODULE = re.compile(r"^lt_\w*_[0-9]+$")
ATTACH_TIMEOUT = 300          # bpftrace takes 60-90 s to attach under TCG
STOP_TIMEOUT = 120


def manifest_path(folder):
    """A manifest of ip_rcv, ip_output and udp_rcv, positions from the generic manifest for
    this kernel: a user's own manifest file, as the CLI reads one."""
    lines = ["functions:"]
    for probe in labkit.manifest_probes("generic", "ip_rcv", "ip_output", "udp_rcv"):
        sk = ", sk_pos: {}".format(probe.sk_pos) if probe.sk_pos else ""
        lines.append("  - {{name: {}, skb_pos: {}{}}}".format(probe.name, probe.skb_pos, sk))
    path = Path(str(folder)) / "lifecycle.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --- guest helpers ------------------------------------------------------------------------

class Tracing(object):
    """The tracefs root, and what was there before the test (the guest's /tmp shows the
    host's, where a killed run of someone else may have left a folder)."""

    def __init__(self, root):
        self.root = root
        self.baseline = []
        self.baseline = ours(self)

    def __truediv__(self, name):
        return self.root / name


@pytest.fixture
def foreign(loopback):
    """Another tool's probe, enabled at the top level, before our runs and checked after."""
    root = labkit.tracefs_root()
    tracing = Tracing(root)
    labkit.append_line(root / "kprobe_events", "p:ltforeign/sentinel ip_rcv")
    enable = root / "events" / "ltforeign" / "sentinel" / "enable"
    try:
        enable.write_text("1")
        yield tracing
        assert "ltforeign/sentinel" in (root / "kprobe_events").read_text()
        assert enable.read_text().strip() == "1", "another tool's probe was disabled"
    finally:
        enable.write_text("0")
        labkit.append_line(root / "kprobe_events", "-:ltforeign/sentinel")


def ours(tracing):
    """What legacytrace runs attached and left since the test began, by kind."""
    root = tracing.root
    found = [line for line in (root / "kprobe_events").read_text().splitlines()
             if "legacytrace_" in line]
    found += ["instance " + name for name in os.listdir(str(root / "instances"))
              if name.startswith("legacytrace_")]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except (OSError, ValueError):
            continue
        name, _, fields = rest.rpartition(") ")
        # A zombie holds nothing attached; the lab's init (virtme-ng) does not reap
        # orphans, so the child of a SIGKILLed run stays one.
        if name in ("bpftrace", "staprun", "stapio") and not fields.startswith("Z"):
            found.append("process {} {}".format(name, pid))
    found += ["module " + line.split()[0] for line in Path("/proc/modules").read_text().splitlines()
              if STAP_MODULE.match(line.split()[0])]
    found += ["folder " + str(p) for p in Path(tempfile.gettempdir()).glob("legacytrace_lt*")]
    return [item for item in found if item not in tracing.baseline]


def settled(tracing, timeout=60):
    """ours() once processes that are ending have ended: a bpftrace told to stop by its
    parent's death still detaches its probes, which takes seconds under TCG."""
    deadline = time.monotonic() + timeout
    left = ours(tracing)
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = ours(tracing)
    return left


def ping():
    subprocess.run(["ping", "-n", "-c", "1", "-W", "2", labkit.LOOPBACK],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def udp(port=UDP_PORT, count=1):
    """Datagrams from this process (no interpreter to start: that takes 10 s under TCG)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(b"legacytrace-lifecycle", (labkit.LOOPBACK, port))


class Run(labkit.CliTrace):
    """`legacytrace trace -b BACKEND MANIFEST FLOW --json ARGS` in its own session."""

    def __init__(self, backend, folder, flow="all", args=(), env=None, pipe_to=None):
        super().__init__(["-b", backend, "-m", manifest_path(folder)] + FLOWS[flow] + list(args),
                         folder, env=env, pipe_to=pipe_to)

    def wait_for_events(self, traffic, count=1, timeout=ATTACH_TIMEOUT):
        """Make traffic until `count` lines came out (the probes are attached then)."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            assert time.monotonic() < deadline, "no events within {} s: {}".format(
                timeout, self.stderr)
            traffic()
            if not self.read(2.0) or self.proc.poll() is not None:
                self.read(0.5)
                assert len(self.lines) >= count, "ended before {} events: {}".format(
                    count, self.stderr)

    def stop(self, sig):
        time.sleep(0.5)
        self.proc.send_signal(sig)
        return self.finish()

    def finish(self, timeout=STOP_TIMEOUT):
        return super().finish(timeout)


@pytest.fixture
def cli_env():
    return {}


#: stap is not here: in the guest `trace -b stap` is refused for want of kernel headers
#: (checks.stap), although the module could come from the cache; tests/lab/test_stap.py
#: proves the killed-staprun cleanup through the backend.
BPF = pytest.param("bpf", marks=pytest.mark.unsupported("el7", reason=labkit.NO_BPFTRACE))
BACKENDS = ["ftrace", BPF]


#: Every way a trace can end, for ftrace; for bpf the two that differ for its session (a
#: stop signal, and SIGKILL in the next test). The other ends take the same path through
#: the trace loop and Session.detach() whatever the backend, and each bpftrace start costs
#: 60-90 s under TCG: the lab's time goes where a backend can differ.
ENDS = [(how, "ftrace") for how in ("SIGINT", "SIGTERM", "closed pipe", "exception")] + [
    pytest.param("SIGINT", "bpf", marks=BPF.marks)]


def traffic_for(flow):
    return {"all": ping, "icmp": ping, "udp": udp}[flow]


# --- every way a trace ends leaves nothing attached ----------------------------------------

@pytest.mark.parametrize("how, backend", ENDS)
def test_every_end_leaves_nothing_attached(how, backend, foreign, tmp_path, cli_env):
    env = dict(cli_env)
    if how == "exception":
        (tmp_path / "sitecustomize.py").write_text(FAILING_PARSE)
        env.update(PYTHONPATH=str(tmp_path), LEGACYTRACE_TEST_FAIL_AFTER="1")
    run = Run(backend, tmp_path, env=env, pipe_to="head -1" if how == "closed pipe" else None)
    try:
        if how == "exception":
            run.wait_for_events(ping)
            while run.proc.poll() is None and run.read(2.0):
                ping()                      # the second event raises
            code = run.finish()
            assert code == 1, run.stderr
            assert "internal error: RuntimeError: injected by test_lifecycle" in run.stderr
        elif how == "closed pipe":
            run.wait_for_events(ping)       # head printed its line and exited
            deadline = time.monotonic() + STOP_TIMEOUT
            while run.proc.poll() is None:  # the next writes find the pipe closed
                assert time.monotonic() < deadline, "still running after head ended: " + run.stderr
                ping()
                run.read(1.0)
            run.finish()
        else:
            run.wait_for_events(ping)
            code = run.stop(getattr(signal, how))
            assert code == 0, run.stderr
            assert "({})".format(how) in run.stderr, run.stderr
    finally:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
    assert "Traceback" not in run.stderr, run.stderr
    assert ours(foreign) == [], run.stderr


# --- SIGKILL: cleanup removes the dead run's leftovers only ----------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_cleanup_after_sigkill_removes_only_the_dead_run(backend, foreign, tmp_path, cli_env):
    live = Run(backend, tmp_path / "..", flow="udp", env=cli_env)
    dead = Run(backend, tmp_path, env=cli_env)
    try:
        dead.wait_for_events(ping)
        live.wait_for_events(udp)
        before = ours(foreign)
        dead.proc.kill()                         # no handler runs: the kernel side may stay
        dead.proc.wait(30)
        time.sleep(2)                            # children that die with it (bpftrace, staprun)
        left = [item for item in ours(foreign) if item not in before or
                "lt{}".format(dead.proc.pid) in item]
        done = subprocess.run([labkit.LEGACYTRACE, "cleanup", "-b", backend], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=120,
                              env=dict(os.environ, **cli_env))
        assert done.returncode == 0 and "Traceback" not in done.stdout, done.stdout
        now = ours(foreign)
        assert not [item for item in now if "lt{}".format(dead.proc.pid) in item], (now, done.stdout)
        if backend in ("ftrace", "bpf"):         # named after the run: cleanup names them
            assert "lt{}".format(dead.proc.pid) in done.stdout, (left, done.stdout)
        assert "lt{}".format(live.proc.pid) not in done.stdout
        udp()                                    # the live run still traces
        count = len(live.lines)
        live.wait_for_events(udp, count + 1, timeout=60)
        assert live.stop(signal.SIGINT) == 0, live.stderr
    finally:
        for run in (live, dead):
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
    assert settled(foreign) == [], live.stderr


# --- two runs at once, different filters -----------------------------------------------------

@pytest.mark.parametrize("backend", ["ftrace"])  # bpf runs share nothing in the kernel
def test_concurrent_runs_see_their_own_flows(backend, foreign, tmp_path, cli_env):
    udp_run = Run(backend, tmp_path, flow="udp", env=cli_env)
    icmp_run = Run(backend, tmp_path, flow="icmp", env=cli_env)
    try:
        udp_run.wait_for_events(lambda: (udp(), ping()))
        icmp_run.wait_for_events(lambda: (udp(), ping()))
        for _ in range(3):
            udp()
            ping()
        assert udp_run.stop(signal.SIGINT) == 0, udp_run.stderr
        # the other run's probes are still there and still trace
        count = len(icmp_run.lines)
        icmp_run.wait_for_events(ping, count + 1, timeout=60)
        assert icmp_run.stop(signal.SIGINT) == 0, icmp_run.stderr
    finally:
        for run in (udp_run, icmp_run):
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
    assert {(e["proto"], e["dport"]) for e in udp_run.events} == {("udp", UDP_PORT)}
    assert {e["proto"] for e in icmp_run.events} == {"icmp"}
    assert ours(foreign) == []


# --- a function kprobes cannot probe ------------------------------------------------------

def blacklisted(tracing):
    """Kernel functions kprobes refuse that kallsyms lists and available_filter_functions does
    not (on 6.1 none of the blacklist is there, measured in the lab), so the CLI reports them as
    absent before the kernel is asked. The kernel lists its blacklist in
    debug/kprobes/blacklist (from 4.1); before, the blacklist is the .kprobes.text section
    (functions marked __kprobes, 3.10), which kallsyms shows between its markers."""
    subprocess.run(["mount", "-t", "debugfs", "nodev", "/sys/kernel/debug"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listed = set(line.split()[0] for line in (tracing / "available_filter_functions")
                 .read_text().splitlines() if line.strip())
    blacklist = Path("/sys/kernel/debug/kprobes/blacklist")
    if blacklist.exists():
        names = set(line.split()[1] for line in blacklist.read_text().splitlines()
                    if len(line.split()) == 2)  # "START-END\tNAME"
    else:
        symbols = [line.split() for line in Path("/proc/kallsyms").read_text().splitlines()]
        at = dict((fields[2], int(fields[0], 16)) for fields in symbols if len(fields) == 3)
        start, end = at["__kprobes_text_start"], at["__kprobes_text_end"]
        names = set(fields[2] for fields in symbols if len(fields) == 3 and fields[1] in "tT"
                    and start < int(fields[0], 16) < end)
    return sorted(name for name in names - listed if re.match(r"^[a-z_][a-z0-9_]*$", name))


def test_a_function_kprobes_refuse_is_a_clean_error(foreign, tmp_path):
    candidates = blacklisted(foreign)
    assert candidates, "the kprobe blacklist is empty"
    manifest = tmp_path / "refused.yaml"
    manifest.write_text("functions:\n  - {{name: {}, skb_pos: 1}}\n".format(candidates[0]))
    done = subprocess.run([labkit.LEGACYTRACE, "trace", "-b", "ftrace", "-m", str(manifest),
                           "-T", "5"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
    assert last.startswith("Error: ") and candidates[0] in done.stderr, done.stderr
    assert ours(foreign) == []
