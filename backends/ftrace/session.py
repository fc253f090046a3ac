"""Running the ftrace program: the session that sets tracefs up, reads trace_pipe and
undoes every step, and the leftovers of runs that were killed.
"""
import functools
import os
import re
import time

from legacytrace.backends.base import Session
from legacytrace.backends.ftrace import tracefs
from legacytrace.backends.ftrace.build import CLOCKS
from legacytrace.errors import LegacytraceError, warn
from legacytrace.kernel import tracefs as kernel_tracefs

#: How long lines may still come after finish() stopped the instance recording.
FINISH_TIMEOUT = 30.0
#: A group or instance of ours: `legacytrace_lt<pid of the owning process>`.
OWNED = re.compile(r"^legacytrace_lt(\d+)$")
# A kprobe_events line: `p:GROUP/EVENT ...`, `r:...`, `r16:...` (maxactive, 4.12+).
_KPROBE_LINE = re.compile(r"^[pr]\d*:([^/\s]+)/(\S+)")


def leftovers(host):
    """Descriptions of what dead runs left in tracefs (nothing to do without tracefs)."""
    fs = _readable_tracefs(host)
    if fs is None:
        return []
    return [describe(item) for item in stale(fs.kprobe_events(), fs.instances(), pid_alive)]


def cleanup(host):
    """Remove what dead runs left (their instances, then their kprobes); return what went."""
    fs = _readable_tracefs(host)
    if fs is None:
        return []
    removed = []
    for item in stale(fs.kprobe_events(), fs.instances(), pid_alive):
        try:
            _remove(fs, item)
        except (LegacytraceError, OSError) as err:
            warn("ftrace cleanup: {}: {}".format(describe(item), err))
            continue
        removed.append(describe(item))
    return removed


def _remove(fs, item):
    if item[0] == "instance":
        fs.disable_all(item[1])
        fs.remove_instance(item[1])
        return
    _, group, event = item
    if fs.is_enabled(None, group, event):
        fs.set_enabled(None, group, event, False)
    fs.remove_kprobe(group, event)


def _readable_tracefs(host):
    """The Tracefs to look for leftovers in, None without one; LegacytraceError when this user
    cannot read it (tracefs is root's): finding nothing there would be a false all-clear."""
    root = host.tracefs or kernel_tracefs.find()
    if root is None:
        return None
    instances = os.path.join(root, "instances")
    if not os.access(root, os.R_OK | os.X_OK) or (
            os.path.isdir(instances) and not os.access(instances, os.R_OK | os.X_OK)):
        raise LegacytraceError("cannot read {} to look for leftovers".format(root))
    return tracefs.Tracefs(root)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True          # exists, owned by someone else
    return True


def stale(kprobe_lines, instances, alive):
    """Leftovers of runs whose owner pid is dead, instances first (removal order):
    ("instance", NAME) and ("kprobe", GROUP, EVENT). Pure: `alive(pid)` decides."""
    found = []
    for name in instances:
        owner = OWNED.match(name)
        if owner and not alive(int(owner.group(1))):
            found.append(("instance", name))
    for line in kprobe_lines:
        probe = _KPROBE_LINE.match(line)
        owner = probe and OWNED.match(probe.group(1))
        if owner and not alive(int(owner.group(1))):
            found.append(("kprobe", probe.group(1), probe.group(2)))
    return found


def describe(item):
    if item[0] == "instance":
        return "tracefs instance {}".format(item[1])
    return "kprobe event {}/{}".format(item[1], item[2])


class FtraceSession(Session):
    """Adds the kprobes, makes the instance, sets filters, enables, reads trace_pipe.

    Every step that changed something pushes its undo first; detach() pops and runs
    them (reverse order of setup), warning about a failed one and going on, so it is
    idempotent and also cleans up a half-done attach.
    """

    def __init__(self, program, root=None):
        super(FtraceSession, self).__init__(program)
        self._root = root
        self._undo = []
        self._fd = None
        self._fs = self._instance = self._finish_by = None
        #: functions whose probe the kernel refused (a warning names each)
        self.skipped = []

    def _step(self, what, do, undo):
        self._undo.append((what, undo))
        try:
            do()
        except BaseException:
            self._undo.pop()
            raise

    def attach(self):
        part, kprobes = self.program.part, self.program.mode == "kprobe"
        fs = tracefs.Tracefs(self._root or kernel_tracefs.ensure())
        if kprobes and not fs.exists("kprobe_events"):
            raise tracefs.TracefsError("this kernel has no kprobe_events: the program was built "
                                       "for another one; build it on this host")
        attached = self._add_kprobes(fs, part.group, part.definitions)
        instance = part.group if fs.has_instances() else None
        self._fs, self._instance = fs, instance
        if instance:
            self._step("remove instance " + instance, functools.partial(fs.make_instance, instance),
                       functools.partial(fs.remove_instance, instance))
            self._options(fs, instance, self.program.buffer_kb)
        for system, event, text in part.events:
            if not kprobes or event in attached:
                self._enable(fs, instance, system, event, text)
        self._step("close trace_pipe", functools.partial(self._open, fs, instance),
                   functools.partial(self._close, fs, instance))

    def _add_kprobes(self, fs, group, definitions):
        """The events of the definitions the kernel took. A function it refuses (notrace,
        inlined away, blacklisted) is a warning, not the end of the trace: the other
        functions still tell the packet's path."""
        attached = set()
        for definition in definitions:
            try:
                self._step("remove kprobe {}/{}".format(group, definition.event),
                           functools.partial(fs.add_kprobe, definition.line(group)),
                           functools.partial(fs.remove_kprobe, group, definition.event))
            except tracefs.TracefsError as err:
                warn("ftrace: {} is not traced: {}".format(definition.symbol, err))
                self.skipped.append(definition.symbol)
                continue
            attached.add(definition.event)
        if definitions and not attached:
            raise tracefs.TracefsError("the kernel refused every probe ({}): see the warnings "
                                       "above".format(", ".join(self.skipped)))
        return attached

    def _enable(self, fs, instance, system, event, text):
        if text:
            fs.set_filter(instance, system, event, text)
        self._step("disable {}/{}".format(system, event),
                   functools.partial(fs.set_enabled, instance, system, event, True),
                   functools.partial(fs.set_enabled, instance, system, event, False))

    @staticmethod
    def _options(fs, instance, buffer_kb):
        """Own-instance settings only (never the top level's): clock, buffer, raw pointers."""
        clocks = fs.trace_clocks(instance)
        clock = next((name for name in CLOCKS if name in clocks), None)
        if clock:
            fs.set_option(instance, "trace_clock", clock)
        fs.set_option(instance, "buffer_size_kb", str(int(buffer_kb)))
        # tracepoints print %p hashed from 4.15; options/hash-ptr (5.12+) lets us see the
        # sk_buff address itself, as the kprobes print it
        fs.set_option(instance, "options/hash-ptr", "0")

    def _open(self, fs, instance):
        self._fd = fs.open_pipe(instance)

    def _close(self, fs, instance):
        """Count what the ring buffer lost (and, after finish(), what it still holds), then
        close the pipe."""
        causes = [("overrun", "ring buffer overrun"), ("dropped events", "ring buffer full")]
        if self._finish_by is not None:     # after --count the rest is not wanted
            causes.append(("entries", "ftrace lines unread at stop"))
        try:
            for stats in fs.cpu_stats(instance).values():
                for key, cause in causes:
                    if stats.get(key):
                        self.lost[cause] += stats[key]
        finally:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def batches(self):
        if self._fd is None:
            return
        for batch in tracefs.read_batches(self._fd, self.IDLE):
            if self._finish_by is not None and not batch:
                return               # finish(): the ring buffer is read (an idle [])
            yield batch
            if self._finish_by is not None and time.monotonic() > self._finish_by:
                return               # finish() ran out of time: _close counts what is left

    def finish(self):
        """Our instance stops recording (its tracing_on); batches() reads what its ring buffer
        holds. Not without an instance: the top level's tracing_on is everyone's."""
        if self._fd is None or self._instance is None or self._finish_by is not None:
            return False
        try:
            if not self._fs.set_option(self._instance, "tracing_on", "0"):
                return False
        except (tracefs.TracefsError, OSError) as err:
            warn("ftrace: cannot stop recording before the last read: {}".format(err))
            return False
        self._finish_by = time.monotonic() + FINISH_TIMEOUT
        return True

    def detach(self):
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as err:       # keep going: every later step still has to run
                warn("ftrace cleanup: {} failed: {}".format(what, err))


