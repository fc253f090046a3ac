"""Limits and load on each lab kernel, through the `legacytrace` CLI.

--count stops after N events, --duration after T seconds, --rate-limit shows at most N events
a second and counts the rest; a bounded loopback UDP flood overruns the ftrace ring buffer,
the overruns are counted in the summary (stderr), and a stop during the flood neither hangs
nor leaves anything attached. `--json` carries no summary object: the summary goes to stderr.
"""
import re
import signal
import socket
import threading
import time

import pytest

from test_lifecycle import BPF, Run, ours, ping, settled, udp  # noqa: F401 (fixtures below)
from test_lifecycle import foreign  # noqa: F401

FLOOD = 200000
LOST = re.compile(r"^lost events: (\d+) \((.*)\)$", re.M)


def flood(port, count=FLOOD):
    """`count` datagrams to a receiver with a tiny buffer (it drops most: no backpressure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            payload = b"x" * 64
            for _ in range(count):
                sender.sendto(payload, ("127.0.0.1", port))


def lost_counts(stderr):
    match = LOST.search(stderr)
    assert match, stderr
    return int(match.group(1)), match.group(2)


def test_count_stops_after_n_events(foreign, tmp_path):
    run = Run("ftrace", tmp_path, flow="icmp", args=["-c", "3"])
    deadline = time.monotonic() + 300
    while run.proc.poll() is None:
        assert time.monotonic() < deadline, run.stderr
        ping()
        run.read(1.0)
    assert run.finish() == 0, run.stderr
    assert len(run.events) == 3, run.lines
    assert "count of 3 events reached" in run.stderr
    assert ours(foreign) == []


def test_duration_stops_the_trace(foreign, tmp_path):
    run = Run("ftrace", tmp_path, args=["-T", "5"])
    run.wait_for_events(ping)               # attached (the interpreter starts slowly here)
    attached = time.monotonic()
    assert run.finish(timeout=60) == 0, run.stderr
    assert time.monotonic() - attached < 30
    assert "duration of 5 s reached" in run.stderr
    assert ours(foreign) == []


def test_rate_limit_shows_n_per_second_and_counts_the_rest(foreign, tmp_path):
    run = Run("ftrace", tmp_path, flow="udp", args=["--rate-limit", "5"])
    run.wait_for_events(lambda: udp(count=20))
    started = time.monotonic()
    shown = len(run.lines)
    udp(count=2000)
    seconds = time.monotonic() - started + 2
    assert run.stop(signal.SIGINT) == 0, run.stderr
    total, causes = lost_counts(run.stderr)
    assert "rate limit" in causes and total > 0, run.stderr
    assert len(run.events) - shown <= 5 * (seconds + 2), (len(run.events), seconds)
    assert ours(foreign) == []


@pytest.mark.parametrize("backend", ["ftrace", BPF])
def test_flood_is_counted_and_a_stop_during_it_leaves_nothing(backend, foreign, tmp_path):
    run = Run(backend, tmp_path)
    run.wait_for_events(ping)
    sender = threading.Thread(target=flood, args=(47013,), daemon=True)
    sender.start()
    drain = time.monotonic() + 600
    shown = 0
    while sender.is_alive():                # keep reading (and forgetting): memory stays flat
        assert time.monotonic() < drain, "the flood did not end"
        run.read(0.5)
        shown += len(run.lines)
        del run.lines[:]
    started = time.monotonic()
    code = run.stop(signal.SIGINT)
    stopped = time.monotonic() - started
    assert code == 0 and "Traceback" not in run.stderr, run.stderr
    assert stopped < 120, "stopping took {:.0f} s".format(stopped)
    total, causes = lost_counts(run.stderr)
    assert run.summary is not None and run.summary["lost_total"] == total, run.lines[-1:]
    if backend == "ftrace":                 # 4 MiB per CPU cannot hold 200k packets' events
        assert total > 0 and "ring buffer overrun" in causes, run.stderr
    print("{}: {} events shown, lost: {} ({}), stop took {:.1f} s".format(
        backend, shown + len(run.lines), total, causes, stopped))
    assert settled(foreign) == []
