"""Running a SystemTap module: staprun loads it and prints its lines; the session stops it
on every exit path and counts what was lost; leftovers are modules of killed runs.
"""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from legacytrace import trust
from legacytrace.backends.base import Session, die_with_parent
from legacytrace.backends.stap import cache
from legacytrace.backends.stap.parse import (BEGIN_LINE, CAUGHT_TAG, EVENT_TAG, EXIT_REPORT_RE,
                                             SENT_TAG, count_exit_report, count_lost, events_in,
                                             real_skipped, salvage)
from legacytrace.errors import LegacytraceError, UsageError, warn
from legacytrace.kernel.release import KernelRelease

#: A module staprun -R loaded: NAME cut to leave room for _<pid of staprun>, within the
#: length of NAME (seen on the 6.1 lab: lt_016d8cec070e491c -> lt_016d8cec070e_120).
RENAMED_RE = re.compile(r"^lt_[A-Za-z0-9_]*_([0-9]+)$")
#: How long the module may take to load and register its probes (QEMU TCG is slow).
ATTACH_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
#: How long lines may still come after finish() asked staprun to stop.
FINISH_TIMEOUT = 30.0
#: Lines read from staprun that may wait for the parser; beyond them lines are dropped and
#: counted (about 200 bytes of memory a line).
BACKLOG_ENV = "LEGACYTRACE_STAP_BACKLOG"
BACKLOG = 200000


class StapSession(Session):
    """staprun on the module: attach waits for the LT1 B line, detach stops staprun.

    A thread reads staprun's stdout as it comes into a queue of chunks, so that a parser
    that falls behind never leaves staprun blocked on a full pipe while the module's
    transport fills: in the 6.1 lab a CLI that read staprun itself, at about 300 us a line
    under TCG, got 1,700 of 16,000 lines (54 of them damaged) and then nothing more.
    staprun gets SIGTERM when this process dies (PR_SET_PDEATHSIG), so a killed
    legacytrace does not leave the module loaded; only a killed staprun does.
    """

    def __init__(self, program, release=None, runtime=None):
        super(StapSession, self).__init__(program)
        self.release = release
        self.runtime = runtime
        self.proc = None
        self.stderr = []
        self._stderr_thread = None
        self._stdout_thread = None
        self._chunks = queue.Queue()
        self._backlog = 0                 # lines in _chunks, under _backlog_lock
        self._backlog_lock = threading.Lock()
        self._backlog_max = _backlog_max()
        self._eof = threading.Event()
        self._stopped = False
        self._finish_by = None
        #: faults the probes caught (the C line), see real_skipped()
        self.caught = 0
        #: E lines the module printed (the S line at its end) and E lines staprun gave us
        self.sent = None
        self.received = 0

    def attach(self):
        module = self.program.part.module or cache.compile(
            self.program, self.release, self.runtime)
        # -R: load under NAME_<pid> so that runs of one cached module do not collide
        rename = [] if self.program.part.module else ["-R"]
        self.proc = subprocess.Popen([trust.program("staprun")] + rename + buffer_args(self.program)
                                     + [module],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=die_with_parent)
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        self._stdout_thread = threading.Thread(target=self._read_stdout, args=(self.proc,),
                                               daemon=True)
        self._stdout_thread.start()
        for batch in self._take(time.monotonic() + ATTACH_TIMEOUT):
            if BEGIN_LINE in batch:
                return
        if self._eof.is_set():
            _wait(self.proc)
            self._stderr_thread.join(5)
        raise LegacytraceError("staprun could not start {}: {}".format(
            module, cache.errors(self.stderr) or "exit status {}".format(self.proc.poll())))

    def batches(self):
        proc = self.proc
        if proc is None:
            return
        for batch in self._take():
            yield batch
        if not self._eof.is_set():
            return                   # finish() ran out of time: detach counts the rest
        if not _wait(proc):
            return                   # staprun is still unloading: detach says what is left
        if proc.returncode and not self._stopped:
            self._stderr_thread.join(5)
            raise LegacytraceError("staprun ended with status {}: {}".format(
                proc.returncode, cache.errors(self.stderr) or "no message"))

    def finish(self):
        """SIGTERM to staprun: the module unloads, and its last lines still come from batches()."""
        if self.proc is None or self._stopped:
            return False
        self._stopped = True
        self._finish_by = time.monotonic() + FINISH_TIMEOUT
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return True

    def detach(self):
        """Stop staprun (it unloads the module), collect lost counts; idempotent, never raises."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self._stopped = True
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if not _wait(proc):
                _kill(proc)
                left = [name for name in _loaded_modules() if name.endswith("_{}".format(proc.pid))]
                warn("stap: staprun did not end within {:g} s of SIGTERM and was killed{}".format(
                    STOP_TIMEOUT, "; its module {} is still loaded: `legacytrace cleanup` removes "
                    "it".format(", ".join(left)) if left else ""))
        except Exception as exc:  # a stop must go on whatever failed
            warn("stap: stopping staprun: {}".format(exc))
            _kill(proc)
        try:
            self._stdout_thread.join(5)
            unread = 0
            while not self._chunks.empty():
                unread += events_in(self._chunks.get_nowait())
            if self._finish_by is not None:   # after --count the rest is not wanted
                if unread:
                    self.lost["stap lines unread at stop"] += unread
                self._count_undelivered()
            self._stderr_thread.join(5)
            for line in self.stderr:
                count_exit_report(line, self.lost)
            skipped = real_skipped(self.lost.pop("stap skipped probes", 0), self.caught,
                                   KernelRelease.parse(os.uname().release).version)
            if skipped:
                self.lost["stap skipped probes"] = skipped
        except Exception as exc:
            warn("stap: reading staprun's report: {}".format(exc))

    def _count_undelivered(self):
        """E lines the module printed that staprun never passed on (its transport can drop
        them without a report); a damaged line is one of them, already counted as such."""
        if self.sent is None:
            warn("stap: the module's count of the lines it printed did not arrive; lines "
                 "SystemTap's transport lost, if any, are not counted")
            return
        undelivered = self.sent - self.received - self.lost["stap damaged lines"]
        if undelivered > 0:
            self.lost["stap lines its transport lost"] += undelivered

    def _take(self, until=None):
        """Batches from the queue until staprun's output ends, or `until` (monotonic) passes;
        [] after IDLE s without one."""
        while True:
            deadline = self._finish_by if until is None else until
            if deadline is not None and time.monotonic() > deadline:
                return
            try:
                chunk = self._chunks.get(timeout=self.IDLE)
            except queue.Empty:
                if self._eof.is_set() and self._chunks.empty():
                    return
                yield []
                continue
            with self._backlog_lock:
                self._backlog -= len(chunk)
            yield chunk

    def _read_stdout(self, proc):
        """staprun's stdout into the queue, a read at a time; counts what the backlog cannot take."""
        rest = b""
        try:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                complete = (rest + chunk).split(b"\n")
                rest = complete.pop()
                self._put([raw.decode("utf-8", "replace") for raw in complete])
            if rest:
                self._put([rest.decode("utf-8", "replace")])
        except Exception as exc:  # the reader must end (and say so) whatever happened
            warn("stap: reading staprun's output: {}".format(exc))
        finally:
            self._eof.set()

    def _put(self, lines):
        for line in lines:
            line, damaged = salvage(line)
            if damaged:
                self.lost["stap damaged lines"] += 1
            if line.startswith(EVENT_TAG):
                self.received += 1
            elif line.startswith(CAUGHT_TAG) and line[len(CAUGHT_TAG):].isdigit():
                self.caught += int(line[len(CAUGHT_TAG):])
            elif line.startswith(SENT_TAG) and line[len(SENT_TAG):].isdigit():
                self.sent = int(line[len(SENT_TAG):])
            else:
                count_lost(line, self.lost)
        with self._backlog_lock:
            kept = self._backlog + len(lines) <= self._backlog_max
            if kept:
                self._backlog += len(lines)
        if kept:
            self._chunks.put(lines)
        else:
            self.lost["stap lines the parser fell behind on"] += events_in(lines)

    def _read_stderr(self):
        for line in _decoded(self.proc.stderr):
            self.stderr.append(line)
            if not EXIT_REPORT_RE.search(line):
                sys.stderr.write("legacytrace: stap: {}\n".format(line))


def buffer_args(program):
    """staprun's -b for the program's buffer: whole MiB per CPU (staprun takes 1 to 4095),
    rounded up; it replaces the size the module was built with."""
    return ["-b", str(min(4095, -(-program.buffer_kb // 1024)))]


def _backlog_max():
    """$LEGACYTRACE_STAP_BACKLOG, a positive line count, or BACKLOG."""
    text = os.environ.get(BACKLOG_ENV, "").strip()
    if not text:
        return BACKLOG
    if not text.isdigit() or int(text) < 1:
        raise UsageError("{}={!r}: give a number of lines, at least 1 (default {})".format(
            BACKLOG_ENV, text, BACKLOG))
    return int(text)


def _decoded(stream):
    for raw in iter(stream.readline, b""):
        yield raw.decode("utf-8", "replace").rstrip("\n")


def _wait(proc):
    """Wait for staprun to end, at most STOP_TIMEOUT seconds (it unloads the module first,
    which has taken more than a minute in the lab); False when it has not ended."""
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill(proc):
    try:
        proc.kill()
        proc.wait(5)
    except Exception as exc:
        warn("stap: killing staprun: {}".format(exc))


def _loaded_modules():
    try:
        with open("/proc/modules") as handle:
            return [line.split(" ", 1)[0] for line in handle]
    except OSError:
        return []


def _stapruns():
    """pid -> command line of every staprun (it execs stapio in the same process)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/comm".format(entry)) as handle:
                if handle.read().strip() not in ("staprun", "stapio"):
                    continue
            with open("/proc/{}/cmdline".format(entry), "rb") as handle:
                found[int(entry)] = handle.read().decode("utf-8", "replace").replace("\0", " ")
        except OSError:
            continue
    return found


def leftovers():
    """Our loaded modules (lt_*) that no live staprun runs: a killed run left them.

    A module staprun -R renamed ends in the staprun's pid; a prebuilt one keeps its
    name, and then any live staprun naming its file owns it.
    """
    running = _stapruns()
    found = []
    for name in _loaded_modules():
        if not name.startswith("lt_"):
            continue
        match = RENAMED_RE.match(name)
        if match and int(match.group(1)) in running:
            continue
        if any("/{}.ko".format(name) in cmdline for cmdline in running.values()):
            continue
        found.append(name)
    return found


def cleanup():
    """Unload the modules of dead runs with `staprun -d`; return the names removed."""
    removed = []
    for name in leftovers():
        result = cache.call(["staprun", "-d", name])
        if result.returncode == 0 and name not in _loaded_modules():
            removed.append(name)
        else:
            warn("stap: could not unload {}: {}".format(name, result.output.strip()))
    return removed
