"""Running bpftrace (backends/bpf/session.py) with stand-ins for it: its errors in one
line, a stop that escalates, lost events counted, the leftovers of killed runs.
"""
import os
import subprocess
import sys

import pytest

from . import DATA
from legacytrace.backends.bpf import build as bpf_build, session as bpf_session
from legacytrace.errors import BackendUnavailable, LegacytraceError


def captured(name="loopback-6.18.txt"):
    with open(os.path.join(DATA, name)) as capture:
        return [line.rstrip("\n") for line in capture if not line.startswith("#")]


def read_stderr(name):
    with open(os.path.join(DATA, name)) as err:
        return err.read().splitlines()


@pytest.mark.parametrize("name, message", [
    ("stderr-nonroot.txt", "bpftrace could not run the program: bpftrace currently only "
                           "supports running as the root user.; run legacytrace as root"),
    ("stderr-bad-member.txt", "bpftrace could not run the program: Struct/union of type "
                              "'struct sk_buff' does not contain a field named 'no_such_member'"),
    ("stderr-no-tracepoint.txt", "bpftrace could not run the program: tracepoint not found: "
                                 "net:no_such_tp"),
])


def test_bpftrace_errors_are_quoted_in_one_line(name, message):
    text = bpf_session.explain(read_stderr(name), 1)
    assert text == message and "\n" not in text


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_are_the_folders_and_processes_of_dead_runs_only(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    tmp = tmp_path / "tmp"
    proc = tmp_path / "proc"
    for owner in (dead, alive):
        (tmp / "legacytrace_lt{}_abc".format(owner)).mkdir(parents=True)
    (tmp / "legacytrace_x_abc").mkdir()
    (tmp / "other").mkdir()
    for pid, argv in ((100, ["/usr/bin/bpftrace", "-B", "line",
                             str(tmp / "legacytrace_lt{}_abc".format(dead) / "trace.bt")]),
                      (101, ["/usr/bin/bpftrace", "-B", "line",
                             str(tmp / "legacytrace_lt{}_abc".format(alive) / "trace.bt")]),
                      (102, ["/usr/bin/vim", str(tmp / "legacytrace_lt{}_abc".format(dead) /
                                                 "trace.bt")])):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    found = bpf_session.find_leftovers(str(tmp), str(proc))
    assert found == [
        ("process", "bpftrace pid 100 of legacytrace_lt{}_abc".format(dead), 100),
        ("folder", str(tmp / "legacytrace_lt{}_abc".format(dead)),
         str(tmp / "legacytrace_lt{}_abc".format(dead)))]


def stand_in(tmp_path, body):
    """An executable that plays bpftrace: `body` is a shell script."""
    path = tmp_path / "bpftrace"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def session(executable, text="BEGIN {}\n", grace=1.0, timeout=10.0):
    from legacytrace.backends.base import Program
    program = Program("bpf", text, run_id="lt{}".format(os.getpid()), part=bpf_build.BpfPart([], {}))
    return bpf_session.BpftraceSession(program, executable, start_timeout=timeout, grace=grace)


def test_missing_bpftrace_is_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable, match="cannot start .*nothing/bpftrace"):
        with session(str(tmp_path / "nothing" / "bpftrace")):
            pass


def test_a_bpftrace_that_fails_is_quoted(tmp_path):
    exe = stand_in(tmp_path, "cat '{}' >&2; exit 1\n".format(
        os.path.join(DATA, "stderr-bad-member.txt")))
    with pytest.raises(BackendUnavailable, match="does not contain a field named"):
        with session(exe):
            pass


def test_events_before_begin_are_kept_lost_events_counted_and_stop_escalates(tmp_path):
    # Ignores SIGINT and SIGTERM: detach must go on to SIGKILL and still return.
    first = captured()[0]
    exe = stand_in(tmp_path, "trap '' INT TERM\necho 'Attaching 1 probes...'\n"
                             "printf '%s\\n' '{}'\necho 'LTB2\tBEGIN\tx'\necho 'Lost 7 events'\n"
                             "printf '%s\\n' '{}'\nexec sleep 60\n".format(first, first))
    with session(exe, grace=0.5) as live:
        lines = live.lines()
        assert [next(lines), next(lines)] == [first, first]
        folder = live.folder
        assert os.path.basename(folder).startswith("legacytrace_lt{}_".format(os.getpid()))
    assert live.lost == {"bpftrace perf buffer full": 7}
    assert live.proc.returncode == -9      # SIGKILL: it did not wait out the sleep
    assert not os.path.exists(folder)
    live.detach()  # idempotent


def test_a_bpftrace_that_never_attaches_times_out(tmp_path):
    exe = stand_in(tmp_path, "exec sleep 60\n")
    with pytest.raises(LegacytraceError, match="did not attach its probes within 0.5 s"):
        with session(exe, timeout=0.5, grace=0.5):
            pass
