"""The one module that writes tracefs: add and remove kprobe events,
make and remove buffer instances, enable events, set filters, read trace_pipe and the
per-CPU statistics.

Rules (docs/kernel-facts.md, "kprobe_events") that hold for every write here:
- `kprobe_events` is only ever opened for append: opening it with truncation deletes
  every probe on the system (EL7). A probe is removed with one `-:GROUP/EVENT` line,
  after it has been disabled (removing an enabled probe fails with EBUSY).
- Control files (enable, filter, trace_clock, buffer_size_kb, options/*) are written
  without O_TRUNC; nothing here ever writes `trace` (that would clear a buffer).

Where tracefs is, and mounting it, is legacytrace.kernel.tracefs.
"""
import errno
import os
import re
import select
import time

from legacytrace.errors import LegacytraceError

_STAT = re.compile(r"^([a-z ]+):\s+(\d+)\s*$", re.M)
#: Bytes a read of trace_pipe asks for (the kernel returns at most a page of formatted
#: events per read: its trace_seq), and how much a batch gathers from repeated reads.
READ_SIZE = 1 << 16
BATCH_BYTES = 1 << 18


class TracefsError(LegacytraceError):
    """A tracefs write the kernel refused, with what it said and where to look."""


class Tracefs(object):
    """A tracing directory. `instance` arguments name a buffer instance, None for the top level."""

    def __init__(self, root):
        self.root = root

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def _dir(self, instance):
        return self.path("instances", instance) if instance else self.root

    def exists(self, *parts):
        return os.path.exists(self.path(*parts))

    def read(self, *parts):
        with open(self.path(*parts)) as handle:
            return handle.read()

    def _write(self, path, text, flags):
        fd = os.open(path, os.O_WRONLY | flags)
        try:
            os.write(fd, (text + "\n").encode("ascii"))
        finally:
            os.close(fd)

    def write(self, path, text):
        """Write a control file (no truncation); TracefsError says what the kernel refused."""
        try:
            self._write(path, text, 0)
        except OSError as exc:
            raise TracefsError("writing {!r} to {} failed: {}{}".format(
                text, path, exc.strerror, self._explain(path)))

    def _explain(self, path):
        """What the kernel said about a refused write: error_log (5.1+), the filter file, or dmesg."""
        said = []
        for where in (path if path.endswith("/filter") else None, self.path("error_log")):
            try:
                with open(where) as handle:
                    text = handle.read().strip()
            except (OSError, TypeError):
                continue
            if text and not text.startswith("none"):
                said.append(" ".join(text.splitlines()[-3:]))
        return ("; kernel says: " + " | ".join(said)) if said else "; see dmesg"

    # -- kprobe_events: append only -------------------------------------------------------

    def kprobe_events(self):
        """The lines of kprobe_events (every tool's probes), [] when the kernel has none."""
        try:
            return self.read("kprobe_events").splitlines()
        except OSError:
            return []

    def add_kprobe(self, line):
        """Append one definition line to kprobe_events."""
        path = self.path("kprobe_events")
        try:
            self._write(path, line, os.O_APPEND)
        except OSError as exc:
            raise TracefsError("the kernel refused the kprobe {!r}: {}{}".format(
                line, exc.strerror, self._explain(path)))

    def remove_kprobe(self, group, event):
        """Remove one probe of ours: append `-:GROUP/EVENT` (disable it first)."""
        path = self.path("kprobe_events")
        try:
            self._write(path, "-:{}/{}".format(group, event), os.O_APPEND)
        except OSError as exc:
            raise TracefsError("removing kprobe {}/{} failed: {}{}".format(
                group, event, exc.strerror, self._explain(path)))

    # -- instances and events --------------------------------------------------------------

    def has_instances(self):
        return self.exists("instances")

    def instances(self):
        try:
            return sorted(os.listdir(self.path("instances")))
        except OSError:
            return []

    def make_instance(self, name):
        try:
            os.mkdir(self.path("instances", name))
        except OSError as exc:
            raise TracefsError("cannot create tracefs instance {}: {}".format(name, exc.strerror))

    def remove_instance(self, name):
        try:
            os.rmdir(self.path("instances", name))
        except OSError as exc:
            raise TracefsError("cannot remove tracefs instance {}: {}".format(name, exc.strerror))

    def event_dir(self, instance, system, event=None):
        parts = [self._dir(instance), "events", system] + ([event] if event else [])
        return os.path.join(*parts)

    def set_enabled(self, instance, system, event, enabled):
        """Enable or disable one event (event None: every event of `system`) in an instance."""
        self.write(os.path.join(self.event_dir(instance, system, event), "enable"),
                   "1" if enabled else "0")

    def disable_all(self, instance):
        """Disable every event of an instance of ours (its events/enable)."""
        self.write(os.path.join(self._dir(instance), "events", "enable"), "0")

    def is_enabled(self, instance, system, event):
        with open(os.path.join(self.event_dir(instance, system, event), "enable")) as handle:
            return handle.read().strip() not in ("0", "")

    def set_filter(self, instance, system, event, text):
        self.write(os.path.join(self.event_dir(instance, system, event), "filter"), text)

    def set_option(self, instance, name, value):
        """Set an instance's file (trace_clock, buffer_size_kb, options/NAME) when it exists.

        Returns False when the kernel has no such file (older kernels lack options/hash-ptr)."""
        path = os.path.join(self._dir(instance), name)
        if not os.path.exists(path):
            return False
        self.write(path, value)
        return True

    def trace_clocks(self, instance):
        """The clocks trace_clock offers (the current one is in brackets)."""
        try:
            with open(os.path.join(self._dir(instance), "trace_clock")) as handle:
                return handle.read().replace("[", "").replace("]", "").split()
        except OSError:
            return []

    # -- reading ---------------------------------------------------------------------------

    def open_pipe(self, instance):
        """A non-blocking file descriptor on the instance's trace_pipe (consuming reads)."""
        return os.open(os.path.join(self._dir(instance), "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)

    def cpu_stats(self, instance):
        """{cpu: {"overrun": n, "dropped events": n, ...}} from per_cpu/cpuN/stats."""
        result = {}
        base = os.path.join(self._dir(instance), "per_cpu")
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else ():
            try:
                with open(os.path.join(base, name, "stats")) as handle:
                    text = handle.read()
            except OSError:
                continue
            result[name] = dict((key, int(value)) for key, value in _STAT.findall(text))
        return result


def read_batches(fd, idle=0.2):
    """Yield the lines each read of a non-blocking trace_pipe descriptor returns, as a
    list; an empty list after `idle` s without data.

    The empty lists let a caller check its stop requests and duration while nothing is
    traced. A read is tried after every wait, ready or not: poll on trace_pipe may wait for
    the buffer_percent watermark on some kernels (6.1), while a non-blocking read returns
    what is there. Ends at end of file or a closed descriptor.
    """
    pending = b""
    while True:
        try:
            ready, _, _ = select.select([fd], [], [], idle)
            chunk = _read_some(fd)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                return
            if ready:
                time.sleep(idle)          # ready but nothing to read: do not spin
            yield []
            continue
        except ValueError:
            return
        if not chunk:
            return
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield [line.decode("utf-8", "replace") for line in lines]


def _read_some(fd):
    """What trace_pipe holds now, up to BATCH_BYTES, from reads repeated until it has no
    more (EAGAIN) or the batch is full; OSError (EAGAIN) when it had nothing."""
    chunks = [os.read(fd, READ_SIZE)]
    size = len(chunks[0])
    while chunks[-1] and size < BATCH_BYTES:
        try:
            chunk = os.read(fd, READ_SIZE)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
