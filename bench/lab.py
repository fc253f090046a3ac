"""Lab benchmarks (issue 9): attach and detach time, per-event cost and in-kernel filtering of
each backend, measured through the CLI a user runs (`legacytrace trace --json`, the default
manifest `generic`) on the lab's real kernel.

    make bench-lab                                   # labctl.py bench --cpus 1 --icount
    tests/lab/labctl.py bench [--cpus N] [--icount] [-- GUEST ARGS]
    bench/lab.py host SHARED                         # on the host: stap modules, cold and cached
    bench/lab.py guest SHARED [--backends ...]       # in the lab guest: everything else

`labctl.py bench` runs `host` before the boot and `guest` in one boot (tests/lab/README.md).
The stap backend cannot compile in the guest (no compiler, no headers): its modules are
built on the host with `legacytrace build` (timed there: the cold compile) and run in the
guest with `legacytrace trace --stap-module` (the cached start: the module load).

The workload is this process itself: UDP datagrams over loopback, round robin to 100 ports
(100 flows), each received before the next is sent, so that the kernel's send and receive
path (the receive softirq runs in the sender's context on loopback) is what the thread's CPU
time measures. Under `--icount` (QEMU -icount shift=0,sleep=off) the guest's clocks count
instructions, so a figure repeats from run to run whatever else the host does.
Benchmarks print figures; nothing here asserts a speed.
"""
import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import benchkit

sys.path.insert(0, os.path.join(benchkit.REPO, "tests", "lab"))
import labkit  # noqa: E402  (the lab's tracefs and loopback helpers)

LEGACYTRACE = os.path.join(os.path.dirname(sys.executable), "legacytrace")
BACKENDS = ("ftrace", "bpf", "stap")
PAYLOAD = b"legacytrace-bench"
#: The workload's flows: one sending socket to 100 receiving ports, 47100..47199.
BASE_PORT = 47100
FLOWS = 100
#: The 1% filters, by name: one destination port of the hundred, as one term and as an
#: expression of five (fixed: the stap modules are built first). Each keeps the same flow.
FILTERS = collections.OrderedDict([
    ("filtered", ("udp dst port {}".format(BASE_PORT),)),
    ("filtered5", ("udp and dst port {} and dst host 127.0.0.1 and not src port 7 and "
                   "(src net 127.0.0.0/8 or src host 10.0.0.1)".format(BASE_PORT),)),
])
#: Group and event prefix of the bare probes (kprobe_profile shows event names only).
BARE_GROUP = "ltbench"
BARE_PREFIX = "bench_"
ATTACH_TIMEOUT = 900          # guest seconds; bpftrace alone takes 60-90 s under TCG
STOP_TIMEOUT = 300
#: A tracer has caught up when its output has not grown for this long.
SETTLE_SECONDS = 2.0
BPF_PROG_TYPE_KPROBE = 2


# --- host: the stap modules -------------------------------------------------------------------

def stap_module_path(shared, name):
    return os.path.join(shared, "lt_bench_{}.ko".format(name))


def stap_build(shared, name, flow, cache, stap_dir=None):
    """`legacytrace build` of the default manifest for the lab kernel, into SHARED.

    `cache` is legacytrace's module cache; `stap_dir` (SYSTEMTAP_DIR) holds stap's own
    cache of compiled scripts, which a cold build must not find either. Timed with its
    descendants (stap, gcc, make: wait4 counts the waited-for ones)."""
    argv = [sys.executable, "-m", "legacytrace", "build", "-b", "stap",
            "-r", os.environ["LEGACYTRACE_LAB_RELEASE"],
            "-R", os.environ["LEGACYTRACE_LAB_STAP_RUNTIME"],
            "-o", stap_module_path(shared, name)] + list(flow)
    env = dict(os.environ, LEGACYTRACE_STAP_CACHE=cache)
    if stap_dir:
        env["SYSTEMTAP_DIR"] = stap_dir
    timed = benchkit.run_timed(argv, env=env)
    if timed.returncode != 0:
        raise SystemExit("bench: {} failed:\n{}".format(" ".join(argv), timed.stderr))
    return timed


def cmd_host(args):
    """Cold compile (an empty module cache) and a cache hit of the default manifest's module;
    the filtered module from the lab's persistent cache (it is not timed)."""
    benchkit.header("stap: building the default manifest's module on the host", [
        "legacytrace build -b stap -r RELEASE -R RUNTIME -o lt_bench_all.ko (manifest generic)",
        "cold: LEGACYTRACE_STAP_CACHE and SYSTEMTAP_DIR (stap's own cache) are empty "
        "directories (stap -p4 and the kernel module build run); cached: the same command "
        "again (the module comes from legacytrace's cache)",
        "wall time and CPU time of the command with its descendants (wait4)",
        "kernel: " + os.environ["LEGACYTRACE_LAB_RELEASE"]])
    cold = tempfile.mkdtemp(prefix="ltbench-stap-")
    try:
        rows = [("build", "wall s", "cpu s")]
        for label in ("cold", "cached"):
            timed = stap_build(args.shared, "all", (), os.path.join(cold, "legacytrace"),
                               os.path.join(cold, "systemtap"))
            rows.append((label, "{:.1f}".format(timed.wall), "{:.1f}".format(timed.cpu)))
    finally:
        shutil.rmtree(cold, ignore_errors=True)
    for name, flow in FILTERS.items():
        stap_build(args.shared, name, flow,
                   os.path.join(os.environ["LEGACYTRACE_LAB_CACHE"], "stap-backend"))
    benchkit.table(rows)
    write_json(args.json, {"stap_build": {row[0]: {"wall": float(row[1]), "cpu": float(row[2])}
                                          for row in rows[1:]}})
    return 0


# --- guest: workload --------------------------------------------------------------------------

class Workload(object):
    """One sending socket and FLOWS receiving ones on loopback."""

    def __init__(self):
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receivers = []
        for port in range(BASE_PORT, BASE_PORT + FLOWS):
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind((labkit.LOOPBACK, port))
            receiver.settimeout(30)
            self.receivers.append(receiver)

    def send(self, count, port_index=None):
        """`count` datagrams, round robin over the ports (or to one), each received before the
        next; returns (thread CPU seconds, wall seconds) of the loop."""
        cpu, wall = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID), time.monotonic()
        for i in range(count):
            k = i % FLOWS if port_index is None else port_index
            self.sender.sendto(PAYLOAD, (labkit.LOOPBACK, BASE_PORT + k))
            self.receivers[k].recv(64)
        return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID) - cpu, time.monotonic() - wall

    def one(self):
        """A datagram of the filtered flow: traffic that every run shows."""
        self.send(1, port_index=0)


# --- guest: kernel state ----------------------------------------------------------------------

def generic_functions():
    """The functions `legacytrace trace` probes here: the default manifest resolved against
    this kernel's available_filter_functions, as the CLI resolves it."""
    from legacytrace import manifest as manifestmod
    from legacytrace.kernel import host as hostmod, symbols
    facts = hostmod.probe_host()
    functions = symbols.KernelFunctions(facts.tracefs)
    result = manifestmod.resolve(manifestmod.load("generic"), facts.kernel,
                                 exists=functions.__contains__)
    return sorted({probe.name for probe in result.probes})


def kprobe_hits(root, names):
    """nhit of the named kprobe events from kprobe_profile (`  EVENT  NHIT  NMISSED`)."""
    hits = {}
    with open(os.path.join(str(root), "kprobe_profile")) as profile:
        for line in profile:
            fields = line.split()
            if len(fields) >= 3 and fields[0].rpartition("/")[2] in names:
                hits[fields[0].rpartition("/")[2]] = int(fields[1])
    return hits


class BareProbes(object):
    """A kprobe_events probe without fetch args on each function, enabled in an own instance:
    the cheapest kprobe tracing there is, and a hit counter for the other runs."""

    def __init__(self, functions):
        self.functions = functions
        self.session = labkit.TraceSession(BARE_GROUP)
        self.names = set()

    def __enter__(self):
        self.session.__enter__()
        for func in self.functions:
            event = self.session.add_kprobe("p:{}/{}{} {}".format(BARE_GROUP, BARE_PREFIX, func, func))
            self.session.enable(event)
            self.names.add(event.split("/")[1])
        return self

    def __exit__(self, *exc):
        self.session.close()

    def hits(self):
        return sum(kprobe_hits(self.session.root, self.names).values())


def debugfs_kprobes():
    """Lines of /sys/kernel/debug/kprobes/list: every armed kprobe, whoever made it (kprobe_events,
    a stap module, a bpftrace perf kprobe)."""
    path = "/sys/kernel/debug/kprobes/list"
    if not os.path.exists(path):
        subprocess.run(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"])
    with open(path) as listing:
        return listing.read().splitlines()


def process_tree(pid):
    """pid and its descendants: {pid: (name, state, utime + stime in clock ticks)}."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(entry)) as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), name, fields[0], int(fields[11]) + int(fields[12]))
    tree, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        if parent in table:
            tree[parent] = table[parent][1:]
            todo.extend(p for p, row in table.items() if row[0] == parent)
    return tree


def tree_cpu(pid):
    """CPU seconds of a tracer and its helpers (bpftrace, staprun, stapio) so far."""
    return sum(row[2] for row in process_tree(pid).values()) / float(os.sysconf("SC_CLK_TCK"))


def attached_state(root, pid):
    """Everything the run of tracer `pid` can leave in the kernel or as a process (any
    bpftrace, staprun or stapio counts), as comparable strings."""
    with open(os.path.join(str(root), "kprobe_events")) as events:
        found = ["kprobe_event " + line.strip() for line in events if "legacytrace_" in line]
    found += ["instance " + name for name in os.listdir(os.path.join(str(root), "instances"))
              if name.startswith("legacytrace_")]
    found += ["armed kprobe " + line for line in debugfs_kprobes()]
    with open("/proc/modules") as modules:
        found += ["module " + line.split()[0] for line in modules if line.startswith("lt_")]
    for other, (name, state, _) in process_tree(1).items():
        if name in ("bpftrace", "staprun", "stapio") and state != "Z":  # see test_lifecycle.ours
            found.append("process {} {}".format(name, other))
    # only its own folder (other runs' may come and go in a shared /tmp)
    own = "legacytrace_lt{}_".format(pid)
    tmp = tempfile.gettempdir()
    found += ["folder " + os.path.join(tmp, name) for name in os.listdir(tmp) if name.startswith(own)]
    return set(found)


def bpf_run_count(pid):
    """Runs of the kprobe programs a tracer's processes hold (fdinfo run_cnt; counted only
    while kernel.bpf_stats_enabled is 1, 5.1+)."""
    total = 0
    for proc in process_tree(pid):
        fd_dir = "/proc/{}/fd".format(proc)
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) != "anon_inode:bpf-prog":
                    continue
                with open("/proc/{}/fdinfo/{}".format(proc, fd)) as info:
                    facts = dict(line.split(":", 1) for line in info if ":" in line)
            except OSError:
                continue
            if int(facts.get("prog_type", "-1")) == BPF_PROG_TYPE_KPROBE:
                total += int(facts.get("run_cnt", "0"))
    return total


def ftrace_run_hits(root, pid):
    """nhit of the kprobe events of the ftrace backend's run (group legacytrace_lt<pid>)."""
    prefix = "legacytrace_lt{}/".format(pid)
    with open(os.path.join(str(root), "kprobe_events")) as events:
        names = {line.split()[0].split("/", 1)[1] for line in events
                 if line.split(":", 1)[-1].startswith(prefix)}
    return sum(kprobe_hits(root, names).values())


class bpf_stats(object):
    """kernel.bpf_stats_enabled=1 for a while (it adds two clock reads per program run)."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self):
        with open(self.PATH) as current:
            self.before = current.read().strip()
        with open(self.PATH, "w") as setting:
            setting.write("1")

    def __exit__(self, *exc):
        with open(self.PATH, "w") as setting:
            setting.write(self.before)


# --- guest: a trace through the CLI -----------------------------------------------------------

class TraceFailed(Exception):
    """A tracer did not attach, print or stop: the other backends' figures still count."""


class Trace(object):
    """`legacytrace trace --json` of one backend in its own session; output into files."""

    def __init__(self, backend, name, workdir, shared, root):
        """`name`: "all" (no flow filter) or one of FILTERS."""
        argv = [LEGACYTRACE, "trace", "--json"] + list(FILTERS.get(name, ()))
        if backend == "stap":
            argv += ["--stap-module", stap_module_path(shared, name)]
        else:
            argv += ["-b", backend]
        label = "{}-{}".format(backend, name)
        self.out_path = os.path.join(workdir, label + ".jsonl")
        self.err_path = os.path.join(workdir, label + ".stderr")
        self.root = root
        self.baseline = attached_state(root, None)  # what a clean stop returns to
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.pid = self.proc.pid

    def stderr(self):
        with open(self.err_path) as err:
            return err.read()

    def lines(self):
        with open(self.out_path, "rb") as out:
            return out.read().count(b"\n")

    def summary(self):
        """The CLI's summary: the last JSON line, written at exit."""
        with open(self.out_path, "rb") as out:
            last = out.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        summary = json.loads(last.decode("utf-8")) if last else {}
        if summary.get("type") != "summary":
            raise TraceFailed("no summary line at the end of {}".format(self.out_path))
        return summary

    def lost(self):
        """The CLI's count of lost events by cause."""
        return self.summary()["lost"]

    def _fail(self, what):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(STOP_TIMEOUT)
        raise TraceFailed("{} (exit {}): {}".format(what, self.proc.poll(),
                                                    self.stderr().strip()[-600:]))

    def wait_attached(self):
        """Seconds from the start to the CLI's `tracing with` line (probes attached)."""
        deadline = self.started + ATTACH_TIMEOUT
        while "legacytrace: tracing with" not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._fail("the tracer did not attach")
            time.sleep(0.1)
        return time.monotonic() - self.started

    def wait_first_event(self, workload):
        """Seconds from the start to the first line on stdout while a datagram goes every 0.5 s."""
        deadline = self.started + ATTACH_TIMEOUT
        while True:
            workload.one()
            for _ in range(5):
                if self.lines():
                    return time.monotonic() - self.started
                time.sleep(0.1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._fail("no event came out")

    def settle(self):
        """The line count once output stopped growing (the tracer caught up)."""
        count, quiet_since = self.lines(), time.monotonic()
        while time.monotonic() - quiet_since < SETTLE_SECONDS:
            time.sleep(0.2)
            now = self.lines()
            if now != count:
                count, quiet_since = now, time.monotonic()
        return count

    def stop(self):
        """SIGINT; seconds to the CLI's exit and to a clean kernel, and what was left if not."""
        stopped = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise TraceFailed("did not end within {} s of SIGINT".format(STOP_TIMEOUT))
        exited = time.monotonic() - stopped
        left = self.at_exit = sorted(attached_state(self.root, self.pid) - self.baseline)
        while left and time.monotonic() - stopped < STOP_TIMEOUT:
            time.sleep(0.1)
            left = sorted(attached_state(self.root, self.pid) - self.baseline)
        return exited, time.monotonic() - stopped, left


# --- guest: the figures -----------------------------------------------------------------------

def cost_runs(workload, count, repeat, trace=None):
    """`repeat` loops of `count` datagrams; per loop: workload CPU and wall seconds, and with a
    trace its CPU seconds and the lines it printed. The least-CPU loop is the figure."""
    loops = []
    for _ in range(repeat):
        lines, cpu = (trace.settle(), tree_cpu(trace.pid)) if trace else (0, 0.0)
        work_cpu, wall = workload.send(count)
        loop = {"cpu": work_cpu, "wall": wall}
        if trace:
            loop["lines"] = trace.settle() - lines
            loop["tracer_cpu"] = tree_cpu(trace.pid) - cpu
        loops.append(loop)
    return min(loops, key=lambda loop: loop["cpu"])


def attach_and_cost(backend, workload, args, workdir, root):
    trace = Trace(backend, "all", workdir, args.shared, root)
    result = {"attached": trace.wait_attached(), "first_event": trace.wait_first_event(workload)}
    progress("{}: attached after {:.1f} s, first event after {:.1f} s".format(
        backend, result["attached"], result["first_event"]))
    result["cost"] = cost_runs(workload, args.count, args.repeat, trace)
    result["exit"], result["clean"], result["left"] = trace.stop()
    result["at_exit"] = trace.at_exit
    result["lost"] = trace.lost()
    progress("{}: {}; exit {:.1f} s and clean {:.1f} s after SIGINT{}{}".format(
        backend, describe_cost(result["cost"]), result["exit"], result["clean"],
        "; still there at exit: " + ", ".join(trace.at_exit) if trace.at_exit else "",
        "; LEFT: " + ", ".join(result["left"]) if result["left"] else ""))
    progress("{}: lost over the run: {}".format(backend, describe_lost(result["lost"])))
    return result


def describe_lost(lost):
    return ", ".join("{}: {}".format(cause, n) for cause, n in sorted(lost.items())) or "none"


def filtering(backend, name, workload, functions, args, workdir, root):
    """Probe hits (the bare counters on the same functions; the backend's own counter where
    it has one) against the lines that reached user space, for a 1% filter: the event lines
    the CLI read from the mechanism (its summary's lines_read, less those read before the
    loop, which were all printed: only matching datagrams went before it), and those it
    printed."""
    trace = Trace(backend, name, workdir, args.shared, root)
    trace.wait_attached()
    trace.wait_first_event(workload)
    with BareProbes(functions) as bare, bpf_stats():
        own = {"ftrace": ftrace_run_hits, "bpf": lambda root, pid: bpf_run_count(pid)}.get(backend)
        lines, hits = trace.settle(), bare.hits()
        own_hits = own(root, trace.pid) if own else None
        workload.send(args.filter_count)
        result = {"lines": trace.settle() - lines, "hits": bare.hits() - hits,
                  "own_hits": own(root, trace.pid) - own_hits if own else None}
    result["exit"], result["clean"], result["left"] = trace.stop()
    result["read"] = trace.summary()["lines_read"] - lines
    result["fraction"] = result["read"] / float(result["hits"] or 1)
    progress("{} {}: {} of {} probe hits reached user space, {} printed (own counter: "
             "{}){}".format(backend, name, result["read"], result["hits"], result["lines"],
                            result["own_hits"],
        "; LEFT: " + ", ".join(result["left"]) if result["left"] else ""))
    return result


def describe_cost(loop):
    return "workload {:.3f} s CPU, {:.3f} s wall{}".format(
        loop["cpu"], loop["wall"], ", tracer {:.2f} s CPU, {} lines".format(
            loop["tracer_cpu"], loop["lines"]) if "lines" in loop else "")


def progress(message):
    print("-- " + message)
    sys.stdout.flush()


def cmd_guest(args):
    labkit.loopback_up()
    root = labkit.tracefs_root()
    functions = generic_functions()
    workload = Workload()
    benchkit.header("lab: attach/detach, per-event cost and filtering per backend (CLI, generic)", [
        "kernel {} under QEMU TCG ({}); the guest sees {} CPU(s)".format(
            os.uname().release, os.environ.get("LEGACYTRACE_LAB_ACCEL", "tcg"), os.cpu_count()),
        "tracers: legacytrace trace --json -b BACKEND (stap: --stap-module built on the host), "
        "stdout and stderr to files",
        "attach: start -> `tracing with` on stderr, and -> first stdout line while one UDP "
        "datagram goes every 0.5 s; detach: SIGINT -> exit, and -> nothing left "
        "(kprobe_events, instances, debugfs kprobes/list, lt_ modules, bpftrace/staprun/stapio, "
        "/tmp folders)",
        "cost: {} datagrams over loopback to {} ports, each received, by this process's thread "
        "(CLOCK_THREAD_CPUTIME_ID: send path plus the receive softirq); least CPU of {} loops"
        .format(args.count, FLOWS, args.repeat),
        "bare: p:{}/{}FUNC FUNC without fetch args on the same {} functions, enabled in an own "
        "instance".format(BARE_GROUP, BARE_PREFIX, len(functions)),
        "filtering: {} datagrams (1 flow of {} matches) under each of: {}; hits from the bare "
        "probes' kprobe_profile, lines read from the CLI's summary (lines_read), printed from "
        "stdout".format(args.filter_count, FLOWS, "; ".join(
            "{} = '{}'".format(name, " ".join(flow)) for name, flow in FILTERS.items())),
        "functions: " + " ".join(functions)])
    workdir = tempfile.mkdtemp(prefix="ltbench-")
    figures = {"functions": functions, "count": args.count, "filter_count": args.filter_count,
               "untraced": cost_runs(workload, args.count, args.repeat)}
    progress("untraced: " + describe_cost(figures["untraced"]))
    with BareProbes(functions) as bare:
        hits = bare.hits()
        figures["bare"] = cost_runs(workload, args.count, args.repeat)
        figures["hits_per_loop"] = (bare.hits() - hits) // args.repeat
    progress("bare: {}, {} hits a loop".format(describe_cost(figures["bare"]), figures["hits_per_loop"]))
    for backend in args.backends:
        try:
            figures[backend] = attach_and_cost(backend, workload, args, workdir, root)
            figures[backend]["filtering"] = dict(
                (name, filtering(backend, name, workload, functions, args, workdir, root))
                for name in FILTERS)
        except TraceFailed as failed:
            figures[backend] = {"failed": str(failed)}
            progress("{}: FAILED: {}".format(backend, failed))
    measured = [b for b in args.backends if "failed" not in figures[b]]
    figures["untraced_after"] = cost_runs(workload, args.count, args.repeat)
    progress("untraced again: " + describe_cost(figures["untraced_after"]))
    report(figures, measured)
    write_json(args.json, figures)
    return 0 if measured == list(args.backends) else 1


def report(figures, backends):
    """The three tables; cost per event = (traced - untraced workload CPU) / probe hits."""
    hits = figures["hits_per_loop"]
    base = min(figures["untraced"]["cpu"], figures["untraced_after"]["cpu"])

    def per_event(loop):
        return (loop["cpu"] - base) / hits * 1e6

    bare = per_event(figures["bare"])
    print("attach and detach (seconds):")
    rows = [("backend", "start->attached", "start->first event", "SIGINT->exit", "SIGINT->clean",
             "left")]
    for b in backends:
        f = figures[b]
        rows.append((b, "{:.1f}".format(f["attached"]), "{:.1f}".format(f["first_event"]),
                     "{:.1f}".format(f["exit"]), "{:.1f}".format(f["clean"]),
                     ", ".join(f["left"]) or "nothing"))
    benchkit.table(rows)
    print("per-event cost ({} datagrams, {} probe hits a loop; untraced {:.3f} s workload CPU):"
          .format(figures["count"], hits, base))
    rows = [("tracer", "workload cpu s", "us/event", "x bare", "lines", "tracer cpu s",
             "tracer us/line", "lost over the run (CLI summary)")]
    rows.append(("bare kprobe", "{:.3f}".format(figures["bare"]["cpu"]), "{:.2f}".format(bare),
                 "1.0", "-", "-", "-", "-"))
    for b in backends:
        loop = figures[b]["cost"]
        rows.append((b, "{:.3f}".format(loop["cpu"]), "{:.2f}".format(per_event(loop)),
                     "{:.1f}".format(per_event(loop) / bare if bare > 0 else float("nan")),
                     str(loop["lines"]), "{:.2f}".format(loop["tracer_cpu"]),
                     "{:.0f}".format(loop["tracer_cpu"] / max(loop["lines"], 1) * 1e6),
                     describe_lost(figures[b]["lost"])))
    benchkit.table(rows)
    print("filtering (1 flow of {}, {} datagrams):".format(FLOWS, figures["filter_count"]))
    rows = [("backend", "filter", "probe hits", "own counter", "lines read", "lines printed",
             "fraction reaching user space")]
    for b in backends:
        for name, f in figures[b]["filtering"].items():
            rows.append((b, name, str(f["hits"]),
                         "-" if f["own_hits"] is None else str(f["own_hits"]), str(f["read"]),
                         str(f["lines"]), "{:.4f}".format(f["fraction"])))
    benchkit.table(rows)
    sys.stdout.flush()


def write_json(path, figures):
    if path:
        with open(path, "w") as out:
            json.dump(figures, out, indent=1, sort_keys=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    host = sub.add_parser("host", help="on the host: build the stap modules into SHARED")
    host.set_defaults(func=cmd_host)
    guest = sub.add_parser("guest", help="in the lab guest: every other figure")
    guest.set_defaults(func=cmd_guest)
    guest.add_argument("-b", "--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    guest.add_argument("--count", type=int, default=2000, help="datagrams per cost loop")
    guest.add_argument("--repeat", type=int, default=3, help="cost loops per tracer")
    guest.add_argument("--filter-count", type=int, default=5000,
                       help="datagrams of the filtering workload")
    for p in (host, guest):
        p.add_argument("shared", help="LEGACYTRACE_LAB_SHARED: the stap modules")
        p.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(arguments.func(arguments))
