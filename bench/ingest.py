"""Ingest rate: `legacytrace parse -b BACKEND FILE --json` against an awk one-liner.

    .venv/bin/python bench/ingest.py                    # every backend, 1,000,000 lines each
    .venv/bin/python bench/ingest.py -b bpf --lines 200000 --stages

For each backend a capture of real tracer output from tests/data/<backend>/ is
replicated to --lines lines (kept in --workdir between runs). Both programs read
that file and write to /dev/null: legacytrace turns each line into a FlowEvent and
a JSON Lines object (the CLI path: backend.parse -> flow filter -> summary ->
JsonRenderer), awk splits each line into the same fields and prints them as
"name":"value" pairs. The figure is events per CPU second of each, and their
ratio (target: legacytrace at least 0.25 of awk's rate, stretch 0.5).
--stages also times each step of the CLI path in this process, to show where
the time goes.
"""
import argparse
import hashlib
import itertools
import os
import re
import sys
import time

import benchkit

#: Captures of real tracer output (their READMEs say which kernel and command made them).
CAPTURES = {
    "bpf": ["tests/data/bpf/loopback-6.18.txt"],
    "stap": ["tests/data/stap/explore-6.1.0-56-amd64.txt"],
    "ftrace": ["tests/data/ftrace/lab-kprobes-6.1.0-56-amd64.trace_pipe",
               "tests/data/ftrace/lab-tracepoints-hashptr-6.1.0-56-amd64.trace_pipe"],
}

#: Columns of the line protocols (backends/bpf/templates/bpftrace.bt.j2: LTB2,
#: stap_templates/flows.stp.j2: LT1).
BPF_COLUMNS = ("tag source func time_ns cpu pid tid context skb sk len dev family proto saddr0 saddr1 "
               "daddr0 daddr1 sport dport icmp_type icmp_code icmp_id icmp_seq extras comm").split()
STAP_COLUMNS = ("tag kind time_ns cpu pid tid context func skb family proto saddr daddr sport "
                "dport icmp_type icmp_code icmp_id icmp_seq len dev comm cmdline").split()


def awk_columns(columns, rest):
    """A tab-splitting one-liner printing each named column as "name":"value" (`rest`: more)."""
    pairs = ",".join('\\"{}\\":\\"%s\\"'.format(name) for name in columns)
    args = ", ".join("${}".format(i) for i in range(1, len(columns) + 1))
    return ["-F", "\\t", '{{ printf "{{{}", {}; {} print "}}" }}'.format(pairs, args, rest)]


#: awk programs that split a line into the fields legacytrace reads and print them.
AWK = {
    "bpf": awk_columns(BPF_COLUMNS, ""),
    "stap": awk_columns(STAP_COLUMNS, 'for (i = {}; i <= NF; i++) printf ",\\"f%d\\":\\"%s\\"", i, $i;'
                    .format(len(STAP_COLUMNS) + 1)),
    # COMM-PID [CPU] FLAGS SECS: EVENT: [(SYMBOL+off/size)] name=value ...: comm and pid apart
    # (a comm may hold "-" and spaces), the CPU without brackets, time and event without
    # their colons, the function without its offset: the fields legacytrace reads.
    "ftrace": ['{ n = match($0, /-[0-9]+ +\\[/); comm = substr($0, 1, n - 1); sub(/^ +/, "", comm); '
               'split(substr($0, n + 1), f, / +/); '
               'printf "{\\"comm\\":\\"%s\\",\\"pid\\":\\"%s\\",\\"cpu\\":\\"%s\\",'
               '\\"flags\\":\\"%s\\",\\"time\\":\\"%s\\",\\"event\\":\\"%s\\"", comm, f[1], '
               'substr(f[2], 2, length(f[2]) - 2), f[3], substr(f[4], 1, length(f[4]) - 1), '
               'substr(f[5], 1, length(f[5]) - 1); i = 6; '
               'if (substr(f[6], 1, 1) == "(") { func = substr(f[6], 2); sub(/[+].*/, "", func); '
               'printf ",\\"func\\":\\"%s\\"", func; i = 7 } '
               'for (; i in f; i++) { k = index(f[i], "="); '
               'if (k) printf ",\\"%s\\":\\"%s\\"", substr(f[i], 1, k - 1), substr(f[i], k + 1) } '
               'print "}" }'],
}

#: The ftrace program of the figures before 2026-11-22: it splits on whitespace only (the
#: comm-pid and the function+offset stay one field each); still timed, for comparison.
AWK_WHITESPACE = {
    "ftrace": ['{ printf "{\\"task\\":\\"%s\\",\\"cpu\\":\\"%s\\",\\"flags\\":\\"%s\\",'
               '\\"time\\":\\"%s\\",\\"event\\":\\"%s\\",\\"at\\":\\"%s\\"", $1, $2, $3, $4, $5, $6; '
               'for (i = 7; i <= NF; i++) { n = index($i, "="); '
               'if (n) printf ",\\"%s\\":\\"%s\\"", substr($i, 1, n - 1), substr($i, n + 1) } '
               'print "}" }'],
}

#: Lines of the file that --stages times in this process.
STAGE_LINES = 200000

_EVENTS = re.compile(r"legacytrace: (\d+) events?")


def capture_lines(backend):
    """The captured lines of `backend`, comment lines (`#`, our own notes) left out."""
    lines = []
    for path in CAPTURES[backend]:
        with open(os.path.join(benchkit.REPO, path)) as capture:
            lines.extend(line for line in capture if line.strip() and not line.startswith("#"))
    return lines


def replicated(backend, count, workdir):
    """A file of `count` lines, the capture repeated; made once per capture content."""
    lines = capture_lines(backend)
    digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()[:12]
    path = os.path.join(workdir, "{}-{}-{}.txt".format(backend, count, digest))
    if not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".part", "w") as out:
            out.writelines(itertools.islice(itertools.cycle(lines), count))
        os.rename(path + ".part", path)
    return path


def measure(backend, path, lines, repeat, python, awk):
    """The table's rows for `backend`: against AWK, and against AWK_WHITESPACE where it has one."""
    cli = benchkit.best_of(repeat, [python, "-m", "legacytrace", "parse", "-b", backend, path,
                                    "--json"])
    events = int(_EVENTS.search(cli.stderr).group(1))
    rows = []
    for label, program in ((backend, AWK[backend]),
                           (backend + " (awk: whitespace only)", AWK_WHITESPACE.get(backend))):
        if program is None:
            continue
        ref = benchkit.best_of(repeat, [awk] + program + [path])
        rows.append([label, "{:,}".format(lines), "{:,}".format(events),
                     "{:,.0f}".format(events / cli.cpu), "{:.2f}".format(cli.cpu),
                     "{:.2f}".format(cli.wall), "{:,.0f}".format(lines / ref.cpu),
                     "{:.2f}".format(ref.cpu), "{:.2f}".format(ref.wall),
                     "{:.2f}".format(ref.cpu / cli.cpu)])
    return rows


def stages(backend, path):
    """Time each step of the CLI's parse path in this process (CPU seconds per line).

    Each step runs over every line or event at once, in the batches the CLI uses.
    """
    from legacytrace import backends, cli, flowfilter, owners, render, summary
    chosen = backends.get(backend)
    batches = []
    events = []
    steps = []

    def step(name, work):
        start = time.process_time()
        work()
        steps.append((name, time.process_time() - start))

    def read():
        with open(path) as capture:
            batches.extend(cli._line_batches(capture))

    def parse():
        for lines in batches:
            events.append(chosen.parse_lines(lines))

    flow = flowfilter.FlowFilter()
    stats = summary.Summary()
    with open(os.devnull, "w") as devnull:
        renderer = render.JsonRenderer(devnull)
        step("read lines", read)
        step("backend.parse", parse)
        step("flow.is_empty (no filter)", lambda: [flow.is_empty() for batch in events])
        replay = owners.Owners()
        step("Owners.attribute (replay)", lambda: [replay.attribute(batch) for batch in events])
        live = owners.Owners(owners.SocketTable())
        step("Owners.attribute (live)", lambda: [live.attribute(batch) for batch in events])
        step("Summary.add_all", lambda: [stats.add_all(batch) for batch in events])
        step("JsonRenderer.events", lambda: [renderer.events(batch) for batch in events])
    total = sum(seconds for _, seconds in steps)
    lines = sum(map(len, batches))
    print("  {} ({:,} lines, {:,} events): CPU microseconds per line".format(
        backend, lines, sum(map(len, events))))
    for name, seconds in steps:
        print("    {:<26} {:6.2f}  {:4.0%}".format(name, seconds / lines * 1e6, seconds / total))


def table_read(sockets, repeat=5):
    """What one read of the owners' socket table costs on this host (it is read at most every
    SocketTable interval, never per event), with `sockets` more UDP sockets of this process
    open: the least CPU and wall time of `repeat` reads."""
    import resource
    import socket
    from legacytrace import owners
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sockets + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
        sockets = min(sockets, hard - 256)
    held = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    for each in held:
        each.bind(("127.0.0.1", 0))
    best = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.monotonic()
        found = owners.read_sockets()
        spent = (time.process_time() - cpu, time.monotonic() - wall)
        best = spent if best is None or spent < best else best
    print("  owners.read_sockets(): {:,} sockets of {:,} processes, {:.1f} ms CPU, {:.1f} ms "
          "wall (least of {})".format(len(found), len(set(s.pid for s in found)),
                                      best[0] * 1e3, best[1] * 1e3, repeat))
    for each in held:
        each.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--backend", action="append", choices=sorted(CAPTURES),
                        help="only this backend (repeatable; default: all)")
    parser.add_argument("--lines", type=int, default=1000000, help="lines per capture file")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the least CPU counts")
    parser.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                          "legacytrace-bench"),
                        help="where the replicated captures are kept")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs legacytrace (e.g. .venv36/bin/python)")
    parser.add_argument("--awk", default="awk")
    parser.add_argument("--stages", action="store_true",
                        help="also time each step of the parse path in this process")
    args = parser.parse_args()
    chosen = args.backend or sorted(CAPTURES)
    python_version = benchkit.run_timed([args.python, "-c", "import platform; import sys; "
                                         "sys.stderr.write(platform.python_version())"]).stderr
    awk_version = benchkit.run_timed([args.awk, "-W", "version"]).stderr or "?"
    benchkit.header("ingest: legacytrace parse --json against awk", [
        "each capture (tests/data/BACKEND/, real tracer output) repeated to {:,} lines".format(
            args.lines),
        "legacytrace: {} -m legacytrace parse -b BACKEND FILE --json > /dev/null "
        "(Python {})".format(args.python, python_version),
        "awk: {} PROGRAM FILE > /dev/null ({}), PROGRAM printing every field as "
        "\"name\":\"value\" (shown below)".format(args.awk, awk_version.splitlines()[0]),
        "CPU time (user+system) of each process, the least of {} runs; rates are per CPU "
        "second".format(args.repeat),
        "ratio = legacytrace's rate / awk's rate (target >= 0.25, stretch 0.5)",
    ])
    rows = [["backend", "lines", "events", "lt ev/s", "lt cpu s", "lt wall s", "awk lines/s",
             "awk cpu s", "awk wall s", "ratio"]]
    for backend in chosen:
        path = replicated(backend, args.lines, args.workdir)
        rows.extend(measure(backend, path, args.lines, args.repeat, args.python, args.awk))
    print("results:")
    benchkit.table(rows)
    print("awk programs:")
    for backend in chosen:
        print("  {}: awk {}".format(backend, " ".join(_shell_quote(a) for a in AWK[backend])))
        if backend in AWK_WHITESPACE:
            print("  {} (whitespace only): awk {}".format(
                backend, " ".join(_shell_quote(a) for a in AWK_WHITESPACE[backend])))
    if args.stages:
        print("where the time goes (in-process, Python {}):".format(sys.version.split()[0]))
        for backend in chosen:
            stages(backend, replicated(backend, STAGE_LINES, args.workdir))
        for sockets in (0, 1000, 10000):
            table_read(sockets)


def _shell_quote(arg):
    return "'" + arg.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    main()
