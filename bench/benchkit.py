"""What every benchmark in bench/ shares: the machine it ran on, timing a child, printing.

Benchmarks print figures; nothing here asserts a speed (tests never time anything).
A figure is only worth something with its method and machine beside it, so every
bench command prints both before its results.
"""
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    """One line per fact about where the figures come from (kernel, CPU, load, Python)."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "?"
    return [
        "host: {} (kernel {}, {})".format(platform.node(), platform.release(), platform.machine()),
        "cpu: {} x {}".format(os.cpu_count(), model),
        "load average at start: {} (other work on the machine slows wall time; "
        "CPU time is what is compared)".format(load),
        "python: {} {}".format(platform.python_implementation(), platform.python_version()),
    ]


def header(title, method):
    """Print the bench's title, its method (a list of lines) and the machine."""
    print("== " + title)
    print("method:")
    for line in method:
        print("  " + line)
    print("machine:")
    for line in machine():
        print("  " + line)
    sys.stdout.flush()


class Timed(object):
    """A finished child process: wall and CPU seconds (user + system), exit code, stderr."""

    __slots__ = ("wall", "cpu", "returncode", "stderr")

    def __init__(self, wall, cpu, returncode, stderr):
        self.wall = wall
        self.cpu = cpu
        self.returncode = returncode
        self.stderr = stderr


def run_timed(argv, stdin=None, stdout=None, env=None):
    """Run `argv` to its end; its own CPU time comes from wait4's rusage.

    CPU time of the child alone, unlike wall time, hardly changes when other
    processes compete for the cores, which they do on a shared 2-core machine.
    """
    with open(os.devnull, "w") as devnull, tempfile.TemporaryFile("w+") as stderr:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout or devnull, stderr=stderr,
                                env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        stderr.seek(0)
        text = stderr.read()
    returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return Timed(wall, usage.ru_utime + usage.ru_stime, returncode, text)


def best_of(repeat, argv, **kwargs):
    """The run with the least CPU time of `repeat` runs (the least disturbed one)."""
    runs = [run_timed(argv, **kwargs) for _ in range(repeat)]
    for timed in runs:
        if timed.returncode != 0:
            raise SystemExit("bench: {} failed ({}):\n{}".format(
                " ".join(shlex.quote(a) for a in argv), timed.returncode, timed.stderr))
    return min(runs, key=lambda timed: timed.cpu)


def table(rows):
    """Rows of strings as left-aligned columns (the first row is the heading)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
