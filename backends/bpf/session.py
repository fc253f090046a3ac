"""Running the bpftrace program: bpftrace as a child in its own session, stopped on every
exit path (SIGINT, then SIGTERM, then SIGKILL) and dying with a killed legacytrace; and
the leftovers of killed runs (their bpftrace processes and script folders).
"""
import collections
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from legacytrace import trust
from legacytrace.backends.base import Session, die_with_parent
from legacytrace.backends.bpf.parse import TAG
from legacytrace.errors import BackendUnavailable, LegacytraceError, warn
from legacytrace.kernel import tracefs as kernel_tracefs

#: How long bpftrace may take to compile and attach. Under the lab's TCG emulation 7 kprobes
#: took 60-90 s and the default manifest's 22 more than 120 s; natively it is a second or two.
START_TIMEOUT = 300.0
#: How long each stop signal gets before the next, stronger one.
STOP_GRACE = 5.0
#: How long lines may still come after finish() asked bpftrace to stop.
FINISH_TIMEOUT = 30.0
#: After finish(), bpftrace gets SIGINT once its output pauses this long (it has printed
#: what its perf buffers held), or at the latest SETTLE seconds after finish(): bpftrace
#: drops what it reads from them after SIGINT until it has detached its probes.
QUIET = 0.05
SETTLE = 1.0
#: Names this backend gives what it leaves on disk; the run id follows (lt<pid>).
PREFIX = "legacytrace_"
OWNER_RE = re.compile(r"^" + PREFIX + r"lt(\d+)_")
_LOST_RE = re.compile(r"^Lost (\d+) events")
#: The program's count of the events it printed, which bpftrace prints at its exit.
_EMITTED_RE = re.compile(r"^@lt_emitted: (\d+)$")
_EVENT = TAG + "\t"
_BEGIN = TAG + "\tBEGIN\t"
#: bpftrace's own error text -> what the user can do about it.
_HINTS = (
    ("root user", "run legacytrace as root"),
    ("not permitted", "run legacytrace as root (bpftrace needs CAP_BPF and CAP_PERFMON)"),
    ("memlock", "raise the locked-memory limit (ulimit -l unlimited)"),
    ("btf", "the bpf backend needs the kernel's BTF (/sys/kernel/btf/vmlinux): use -b ftrace"),
    ("tracefs", "mount tracefs: mount -t tracefs nodev /sys/kernel/tracing"),
    ("debugfs", "mount tracefs: mount -t tracefs nodev /sys/kernel/tracing"),
)
# Printed by bpftrace 0.17 whenever setrlimit fails, even when loading then works.
_NOISE = ("couldn't set RLIMIT_MEMLOCK",)


def explain(stderr_lines, returncode):
    """One line for a bpftrace that failed: its own first error, and what to do."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    errors = [line for line in lines if "ERROR" in line and not any(n in line for n in _NOISE)]
    quoted = (errors or lines or ["exit status {}".format(returncode)])[0]
    quoted = re.sub(r"^.*?ERROR:\s*", "", quoted)
    hint = next((what for key, what in _HINTS if key in quoted.lower()), None)
    message = "bpftrace could not run the program: {}".format(quoted)
    return message + ("; " + hint if hint else "")


class BpftraceSession(Session):
    """bpftrace running the program: attach waits for its BEGIN line, detach stops it.

    The program counts the events it printed (`@lt_emitted`, which bpftrace prints at its
    exit); what it printed beyond the lines that came out and the losses bpftrace reported
    is counted too: bpftrace drops what it reads from its perf buffers after SIGINT until
    its probes are detached, and a perf buffer's loss is only reported with a later event.
    """

    def __init__(self, program, bpftrace="bpftrace", start_timeout=START_TIMEOUT,
                 grace=STOP_GRACE):
        super(BpftraceSession, self).__init__(program)
        self.bpftrace = bpftrace
        self.start_timeout = start_timeout
        self.grace = grace
        self.proc = None
        self.folder = None
        self.pending = []
        self.buffer = b""
        self.stderr = collections.deque(maxlen=50)
        self.stderr_thread = None
        self.stopping = False
        self.finish_by = self.settle_by = None
        #: event lines that came out of bpftrace, and what the program says it printed
        self.delivered = 0
        self.emitted = None
        self.ended = False

    def attach(self):
        # bpftrace reads tracepoint formats from tracefs, which may not be mounted yet.
        kernel_tracefs.ensure()
        self.folder = tempfile.mkdtemp(prefix="{}{}_".format(PREFIX, self.program.run_id))
        script = os.path.join(self.folder, "trace.bt")
        with open(script, "w") as out:
            out.write(self.program.text)
        try:
            self.proc = subprocess.Popen(
                [trust.program(self.bpftrace), "-B", "line", script], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=die_with_parent,
                env=dict(os.environ, **self.program.part.env))
        except OSError as exc:
            raise BackendUnavailable("cannot start {}: {}: install bpftrace".format(
                self.bpftrace, exc.strerror))
        self.stderr_thread = threading.Thread(target=self._read_stderr, name="bpftrace-stderr")
        self.stderr_thread.daemon = True
        self.stderr_thread.start()
        self._wait_for_begin()

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not self._count_lost(line):
                self.stderr.append(line)

    def _count_lost(self, line):
        match = _LOST_RE.match(line)
        if match:
            self.lost["bpftrace perf buffer full"] += int(match.group(1))
        return match is not None

    def _read(self, timeout):
        """What bpftrace printed within `timeout` s (None: wait): bytes, None when nothing
        came, b"" at the end of its output."""
        fd = self.proc.stdout.fileno()
        if timeout is not None and not select.select([fd], [], [], timeout)[0]:
            return None
        return os.read(fd, 1 << 16)

    def _split(self, data):
        """The complete lines of the buffer and `data`, without bpftrace's own notices (lost
        events, the emitted count), counting the event lines."""
        self.buffer += data
        if b"\n" not in self.buffer:
            return []
        *complete, self.buffer = self.buffer.split(b"\n")
        lines = [raw.decode("utf-8", "replace") for raw in complete]
        events = sum(1 for line in lines if line.startswith(_EVENT))
        self.delivered += events - sum(1 for line in lines if line.startswith(_BEGIN))
        if len(lines) == events:
            return lines
        return [line for line in lines if not self._notice(line)]

    def _notice(self, line):
        """True for a line bpftrace printed about the run, which is counted here."""
        if line.startswith("Lost"):
            return self._count_lost(line)
        emitted = _EMITTED_RE.match(line)
        if emitted:
            self.emitted = int(emitted.group(1))
        return emitted is not None

    def _wait_for_begin(self):
        deadline = time.monotonic() + self.start_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LegacytraceError("bpftrace did not attach its probes within {:g} s: "
                                       "try again on a less busy machine".format(
                                           self.start_timeout))
            data = self._read(min(left, 0.5))
            lines = self._split(data or b"")
            for index, line in enumerate(lines):
                if line.startswith(_BEGIN):
                    self.pending.extend(lines[index + 1:])
                    return
                if line.startswith(TAG):  # an event before BEGIN; not "Attaching N probes..."
                    self.pending.append(line)
            if data == b"" or self.proc.poll() is not None:
                self.proc.wait()
                self.stderr_thread.join(2)
                raise BackendUnavailable(explain(self.stderr, self.proc.returncode))

    def batches(self):
        pending, self.pending = self.pending, []
        if pending:
            yield pending
        while True:
            data = self._read(self._wait())
            if data == b"":
                break
            yield [] if data is None else self._split(data)
            if data is None and self.settle_by is not None:
                self._interrupt()                # its output paused: nothing left to drop
            if self.finish_by is not None and time.monotonic() > self.finish_by:
                return                   # detach counts what is still coming
        if self.buffer:
            yield self._split(b"\n")            # a last line without its newline
        self.ended = True
        returncode = self.proc.wait()
        if returncode and not self.stopping:
            self.stderr_thread.join(2)
            raise LegacytraceError(explain(self.stderr, returncode))

    def _wait(self):
        """How long the next read may wait: IDLE, QUIET while SIGINT waits for a pause."""
        if self.settle_by is None:
            return self.IDLE
        if time.monotonic() >= self.settle_by:
            self._interrupt()
            return self.IDLE
        return QUIET

    def _interrupt(self):
        """SIGINT to bpftrace (once): it detaches its probes, prints the rest and ends."""
        self.settle_by = None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)

    def finish(self):
        """Stop bpftrace (SIGINT once its output pauses, or after SETTLE s); batches() reads
        its output to the end."""
        if self.proc is None or self.stopping or self.proc.poll() is not None:
            return False
        self.stopping = True
        now = time.monotonic()
        self.finish_by, self.settle_by = now + FINISH_TIMEOUT, now + SETTLE
        return True

    def detach(self):
        """Stop bpftrace (SIGINT, SIGTERM, SIGKILL), count what it printed and nobody read,
        and remove the script; never raises."""
        self.stopping = True
        steps = ((self._stop, "stop bpftrace"), (self._close, "close bpftrace's pipes"),
                 (self._count_undelivered, "count bpftrace's undelivered events"),
                 (self._remove_folder, "remove the script folder"))
        for step, what in steps:
            try:
                step()
            except Exception as exc:  # teardown goes on whatever failed before
                warn("cannot {}: {}".format(what, exc))

    def _count_undelivered(self):
        """The events the program printed that neither came out nor were reported lost,
        once bpftrace said how many it printed. Not after --count: the rest is not wanted."""
        if self.emitted is None or not (self.ended or self.finish_by is not None):
            return
        missing = self.emitted - self.delivered - self.lost["bpftrace perf buffer full"]
        if missing > 0:
            self.lost["bpftrace events undelivered at its exit"] += missing

    def _stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is not None:            # ended: read what it printed before
            self._drain_until_exit(time.monotonic() + self.grace)
            return
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                return
            if self._drain_until_exit(time.monotonic() + self.grace):
                return
        warn("bpftrace (pid {}) did not end after SIGKILL".format(self.proc.pid))

    def _drain_until_exit(self, deadline):
        """Read output to its end so bpftrace never blocks on a full pipe while it ends;
        after finish() its events are counted as lost (their time to be shown is over)."""
        while time.monotonic() < deadline:
            data = self._read(0.1)
            if data == b"":
                try:
                    self.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                break
            unread = [line for line in self.pending + self._split(data or b"")
                      if line.startswith(_EVENT)]
            if unread and self.finish_by is not None:   # after --count they are not wanted
                self.lost["bpftrace lines unread at stop"] += len(unread)
            self.pending = []
        return self.proc.poll() is not None

    def _close(self):
        if self.proc is None:
            return
        if self.stderr_thread is not None:
            self.stderr_thread.join(2)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _remove_folder(self):
        if self.folder is not None and os.path.isdir(self.folder):
            shutil.rmtree(self.folder)
        self.folder = None


def _owner_dead(name):
    """True when `name` (legacytrace_lt<pid>_...) belongs to a legacytrace that has ended."""
    match = OWNER_RE.match(name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def find_leftovers(tmpdir=None, proc_root="/proc"):
    """[(kind, what, pid or path)] of dead runs: running bpftrace processes and script folders."""
    tmpdir = tmpdir or tempfile.gettempdir()
    found = []
    try:
        pids = [entry for entry in os.listdir(proc_root) if entry.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            with open(os.path.join(proc_root, pid, "cmdline"), "rb") as cmdline:
                argv = cmdline.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "bpftrace":
            continue
        for arg in argv[1:]:
            folder = os.path.basename(os.path.dirname(arg))
            if os.path.dirname(os.path.dirname(arg)) == tmpdir and _owner_dead(folder):
                found.append(("process", "bpftrace pid {} of {}".format(pid, folder), int(pid)))
    try:
        names = sorted(os.listdir(tmpdir))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(tmpdir, name)
        if _owner_dead(name) and os.path.isdir(path):
            found.append(("folder", path, path))
    return found


def _end_process(pid, grace):
    """SIGINT (bpftrace detaches), then SIGKILL; True when it is gone."""
    for signum in (signal.SIGINT, signal.SIGKILL):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
    return False


def leftovers():
    """What killed runs left: running bpftrace processes and script folders."""
    return [what for _, what, _ in find_leftovers()]


def cleanup(grace):
    """End bpftrace processes and remove folders of dead runs; returns what was removed."""
    removed = []
    for kind, what, target in find_leftovers():
        try:
            if kind == "process":
                if not _end_process(target, grace):
                    warn("{} did not end".format(what))
                    continue
            else:
                shutil.rmtree(target)
        except OSError as exc:
            warn("cannot remove {}: {}".format(what, exc))
            continue
        removed.append(what)
    return removed
