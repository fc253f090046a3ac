"""Flood rates: the highest UDP rate each backend traces on this machine without losing an event.

    sudo .venv/bin/python bench/flood.py                       # bpf and ftrace, 10k..100k/s
    sudo .venv/bin/python bench/flood.py -b ftrace --rates 30000 50000 --seconds 5

For each backend and rate: `legacytrace trace -b BACKEND --json` (the generic manifest, as it
resolves here; stdout to /dev/null, as a pipe to a file would be read) attaches, then a sender
process sends UDP datagrams over loopback to one port at the rate, paced in 1 ms slices, for
--seconds; one second later the trace gets SIGINT. Figures from the CLI's summary: events, lines
read from the mechanism, events lost by cause; the CLI's CPU seconds with its children (bpftrace)
from wait4, and per event. A rate "holds" when nothing was lost.
Needs root; on a kernel without kprobes both backends trace tracepoints (ftrace's tracepoint mode
takes no flow filter, so none is given to either). Nothing here asserts a speed.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import benchkit

LEGACYTRACE = os.path.join(os.path.dirname(sys.executable), "legacytrace")
PORT = 47300
ATTACH_TIMEOUT = 120
STOP_TIMEOUT = 120


def send(rate, seconds, port=PORT):
    """`rate` datagrams a second for `seconds`, in 1 ms slices; returns how many went."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", port))
        start, sent = time.monotonic(), 0
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                return sent
            due = int(rate * elapsed)
            while sent < due:
                sender.sendto(b"legacytrace-flood", ("127.0.0.1", port))
                sent += 1
            time.sleep(0.001)


def trace(backend, rate, seconds, workdir):
    """One run: the CLI's summary, its CPU seconds with children, and the datagrams sent."""
    out_path = os.path.join(workdir, "{}-{}.jsonl".format(backend, rate))
    err_path = out_path[:-len("jsonl")] + "stderr"
    with open(out_path, "wb") as out, open(err_path, "w+") as err:
        proc = subprocess.Popen([LEGACYTRACE, "trace", "--json", "-b", backend], stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while "legacytrace: tracing with" not in _read(err_path):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("bench: {} did not attach: {}".format(backend, _read(err_path)))
            time.sleep(0.1)
        sent = send(rate, seconds)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(proc.pid, 0)
    summary = json.loads(_last_line(out_path))
    return summary, usage.ru_utime + usage.ru_stime, sent


def _read(path):
    with open(path) as handle:
        return handle.read()


def _last_line(path):
    with open(path, "rb") as handle:
        return handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("utf-8")


def describe_lost(summary):
    return str(summary["lost_total"]) + "".join(
        " ({}: {})".format(cause, n) for cause, n in sorted(summary["lost"].items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-b", "--backend", action="append", choices=("bpf", "ftrace"))
    parser.add_argument("--rates", type=int, nargs="+", default=[10000, 20000, 30000, 50000,
                                                                   100000])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    backends = args.backend or ["bpf", "ftrace"]
    benchkit.header("flood: the highest UDP rate traced without loss", [
        "legacytrace trace --json -b BACKEND (generic manifest, default --buffer-size), stdout "
        "to a file; a sender process: datagrams over loopback to one port, paced per 1 ms, "
        "for {} s; SIGINT 1 s after".format(args.seconds),
        "figures from the CLI's summary; CPU: the CLI with its children (wait4)"])
    rows = [("backend", "rate/s", "sent", "events", "lines read", "events/s", "lost",
             "CPU s", "us CPU/event")]
    with tempfile.TemporaryDirectory(prefix="ltflood-") as workdir:
        for backend in backends:
            for rate in args.rates:
                summary, cpu, sent = trace(backend, rate, args.seconds, workdir)
                events = summary["events"]
                rows.append((backend, str(rate), str(sent), str(events),
                             str(summary["lines_read"]),
                             "{:.0f}".format(events / args.seconds),
                             describe_lost(summary),
                             "{:.2f}".format(cpu),
                             "{:.1f}".format(cpu / max(events, 1) * 1e6)))
                print("-- " + "  ".join(rows[-1]))
                sys.stdout.flush()
    benchkit.table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
