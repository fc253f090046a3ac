"""Bursts and stops on each lab kernel, through the CLI: a burst that the default
--buffer-size is sized for loses nothing, and a stop right after a flood accounts for every
event the probes produced (events shown plus losses counted by cause).

Per datagram to the test's port, ip_output and udp_rcv run once each (loopback: the sender's
IP output and the receiver's UDP input), so with `-r` keeping those two functions and the flow
filter keeping that port, the probes produce exactly two events a datagram; the receiver's
small buffer drops datagrams only after udp_rcv. stap is not here: its transport can lose lines
without counting them (README.md, "Stopping").
"""
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


def traced_while(tracer, port, count):
    """Send `count` datagrams in a thread while the tracer's output is read (as a terminal
    would), so that only the mechanism's buffer stands between the probes and the CLI."""
    sender = threading.Thread(target=send, args=(port, count), daemon=True)
    sender.start()
    deadline = time.monotonic() + STOP_TIMEOUT
    while sender.is_alive():
        assert time.monotonic() < deadline, "the datagrams were not sent in time"
        tracer.read(0.2)


def start(backend, args, tmp_path):
    tracer = labkit.CliTrace(["-b", backend] + args, tmp_path)
    wait_tracing(tracer)
    return tracer


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_burst_the_default_buffer_is_sized_for_loses_nothing(backend, foreign, tmp_path):
    port = labkit.free_port(socket.SOCK_DGRAM)
    tracer = start(backend, ["udp and dst port {}".format(port)], tmp_path)
    try:
        traced_while(tracer, port, BURST)
        count, quiet_since = len(tracer.lines), time.monotonic()
        while time.monotonic() - quiet_since < QUIET:
            tracer.read(0.5)
            if len(tracer.lines) != count:
                count, quiet_since = len(tracer.lines), time.monotonic()
    finally:
        tracer.proc.send_signal(signal.SIGINT)
        code = tracer.finish(STOP_TIMEOUT)
    summary = tracer.summary
    assert code == 0 and summary is not None, tracer.stderr
    print("{}: burst of {} datagrams: {} events, {} lines read, lost {}".format(
        backend, BURST, summary["events"], summary["lines_read"], summary["lost"]))
    assert summary["lost_total"] == 0, summary
    assert summary["events"] >= 2 * BURST, summary
    assert settled(foreign) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stop_right_after_a_flood_accounts_for_every_event(backend, foreign, tmp_path):
    port = labkit.free_port(socket.SOCK_DGRAM)
    tracer = start(backend, ["-r", TWO_FUNCTIONS, "udp and dst port {}".format(port)], tmp_path)
    try:
        traced_while(tracer, port, FLOOD)
    finally:
        tracer.proc.send_signal(signal.SIGINT)
        code = tracer.finish(STOP_TIMEOUT)
    summary = tracer.summary
    assert code == 0 and summary is not None, tracer.stderr
    print("{}: flood of {} datagrams stopped at once: {} events, lost {}".format(
        backend, FLOOD, summary["events"], summary["lost"]))
    assert summary["filtered"] == 0, summary
    assert summary["events"] + summary["lost_total"] == 2 * FLOOD, summary
    assert settled(foreign) == []
