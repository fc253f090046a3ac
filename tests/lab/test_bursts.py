"""Bursts and stops on each lab kernel, through the CLI: a burst that the default
--buffer-size is sized for loses nothing, and a stop right after a flood accounts for every
event the probes produced (events shown plus losses counted by cause).

Per datagram to the test's port, ip_output and udp_rcv run once each (loopback: the sender's
IP output and the receiver's UDP input), so with `-r` keeping those two functions and the flow
filter keeping that port, the probes produce exactly two events a datagram; the receiver's
small buffer drops datagrams only after udp_rcv. stap is not here: its transport can lose lines
without counting them (README.md, "Stopping").
"""
import json
import signal
import socket
import threading
import time

import pytest

import labkit
from test_expressions import wait_tracing
from test_lifecycle import BACKENDS, settled
from test_lifecycle import foreign  # noqa: F401 (a fixture)

#: The lab benchmark's loop (bench/lab.py): 2,000 datagrams, 16,000 events at the generic
#: manifest's functions.
BURST = 2000
FLOOD = 20000
TWO_FUNCTIONS = r"^(ip_output|udp_rcv)$"
STOP_TIMEOUT = 300
#: No new line for this long: the tracer has read what the burst produced.
QUIET = 5.0


def send(port, count):
    """`count` datagrams as fast as this process sends them, to a receiver that keeps few."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind((labkit.LOOPBACK, port))
        for _ in range(count):
            sender.sendto(b"legacytrace-burst", (labkit.LOOPBACK, port))


def traced(backend, args, port, count, tmp_path, settle=False):
    """The summary of `legacytrace trace -b BACKEND ARGS` stopped with SIGINT after `count`
    datagrams were sent to `port` (with `settle`, once the output has stopped growing). The
    output is read while they go, as a terminal would, so that only the mechanism's buffer
    stands between the probes and the CLI."""
    tracer = labkit.CliTrace(["-b", backend] + args, tmp_path)
    try:
        wait_tracing(tracer)
        sender = threading.Thread(target=send, args=(port, count), daemon=True)
        sender.start()
        deadline = time.monotonic() + STOP_TIMEOUT
        while sender.is_alive():
            assert time.monotonic() < deadline, "the datagrams were not sent in time"
            tracer.read(0.2)
        if settle:
            read_until_quiet(tracer)
    finally:
        tracer.proc.send_signal(signal.SIGINT)
        code = tracer.finish(STOP_TIMEOUT)
    assert code == 0 and tracer.summary is not None, tracer.stderr
    return tracer.summary


def keep(lab_shared, name, backend, summary):
    """The run's figures in LEGACYTRACE_LAB_SHARED (BENCHMARKS.md quotes them)."""
    figures = dict((key, summary[key]) for key in ("events", "lines_read", "lost", "filtered"))
    (lab_shared / "{}-{}-{}.json".format(name, backend, labkit.kernel_release())).write_text(
        json.dumps(figures, indent=2, sort_keys=True))


def read_until_quiet(tracer):
    """Read until no line has come for QUIET seconds: the tracer has read what was made."""
    seen = None
    while seen != len(tracer.lines):
        seen = len(tracer.lines)
        quiet = time.monotonic() + QUIET
        while time.monotonic() < quiet:
            tracer.read(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_burst_the_default_buffer_is_sized_for_loses_nothing(backend, foreign, tmp_path,
                                                               lab_shared):
    port = labkit.free_port(socket.SOCK_DGRAM)
    summary = traced(backend, ["udp and dst port {}".format(port)], port, BURST, tmp_path,
                     settle=True)
    keep(lab_shared, "burst", backend, summary)
    assert summary["lost_total"] == 0, summary
    assert summary["events"] >= 2 * BURST, summary
    assert settled(foreign) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stop_right_after_a_flood_accounts_for_every_event(backend, foreign, tmp_path,
                                                             lab_shared):
    port = labkit.free_port(socket.SOCK_DGRAM)
    summary = traced(backend, ["-r", TWO_FUNCTIONS, "udp and dst port {}".format(port)], port,
                     FLOOD, tmp_path)
    keep(lab_shared, "flood-stop", backend, summary)
    assert summary["filtered"] == 0, summary
    assert summary["events"] + summary["lost_total"] == 2 * FLOOD, summary
    assert settled(foreign) == []
