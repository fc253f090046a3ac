"""The ftrace backend: raw tracefs, no compiler, no code of ours in the kernel.

Two modes, chosen by what the kernel has:
- kprobe mode (`kprobe_events` exists): one kprobe (or kretprobe) per manifest function
  in the group `legacytrace_<run_id>`, fetch args at struct offsets from
  legacytrace.kernel.offsets (BTF, a table of known builds, pahole), event filters where the
  IP header's place is fixed (legacytrace.ftrace_kprobe);
- tracepoint mode (no kprobes, e.g. this development machine's 6.18): the static
  tracepoint that fires in each manifest function (legacytrace.kernel.tracepoints), events with
  packet identity, length, device and drop reason but no tuple (source "tracepoint"),
  so no flow filter can match them: `ready()` refuses a trace that has one.
Either way the events go to an own buffer instance named like the group, read from its
trace_pipe; parse() needs no Program (legacytrace.ftrace_parse), so the capture of the
standalone sh script (`export(program, "sh")`) parses the same way.
"""
import functools
import logging
import os
import re
import time

from legacytrace import flowfilter, ftrace_kprobe, ftrace_parse, tracefs

from legacytrace.kernel import btf, offsets, tracepoints
from legacytrace.kernel import tracefs as kernel_tracefs
from legacytrace.backends.base import Availability, Backend, Program, Session
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.manifest import check_symbol

log = logging.getLogger(__name__)

#: Per-CPU buffer of the own instance, in KiB.
BUFFER_KB = 4096
#: How long lines may still come after finish() stopped the instance recording.
FINISH_TIMEOUT = 30.0
#: Trace clocks in order of preference: mono (about 4.0), then global (3.10: across CPUs).
CLOCKS = ("mono", "global")
#: A group or instance of ours: `legacytrace_lt<pid of the owning process>`.
OWNED = re.compile(r"^legacytrace_lt(\d+)$")
# A kprobe_events line: `p:GROUP/EVENT ...`, `r:...`, `r16:...` (maxactive, 4.12+).
_KPROBE_LINE = re.compile(r"^[pr]\d*:([^/\s]+)/(\S+)")


def kernel_types(layout):
    """The kernel's types behind `layout`: its BTF (every struct and enum) when the layout
    came from BTF, else what the layout itself holds (ftrace_kprobe.LayoutTypes)."""
    if layout.source == "btf":
        return btf.load(layout.origin)
    return ftrace_kprobe.LayoutTypes(layout)


def hex_types(host):
    """Whether the kernel has the x8..x64 fetch types (4.9+), as its tracing/README says
    (legacytrace.kernel.features: "x-types"). Without them `u*` types are used, which print hex
    on those kernels; the parser reads either (legacytrace.ftrace_parse)."""
    return "x-types" in (host.kprobe_syntax or [])


class FtraceBackend(Backend):
    name = "ftrace"
    summary = "raw tracefs: kprobe_events at struct offsets, or net/skb tracepoints without kprobes"
    formats = ("text", "sh")
    #: peek reads user memory with the +u fetch (5.3+); build() warns where it cannot
    features = ("peek",)

    def __init__(self, layout_for=offsets.layout_for, types_for=None):
        """`layout_for(host)` returns the struct layout (legacytrace.kernel.offsets.Layout) of a host;
        `types_for(layout)` the kernel's types for field paths and peek (default: its BTF
        when the layout came from BTF, else only what the layout holds)."""
        self._layout_for = layout_for
        self._types_for = types_for or kernel_types
        self._parser = ftrace_parse.LineParser()

    # -- check -------------------------------------------------------------------------------

    def check(self, host):
        if not host.root:
            return Availability.no("needs root to write tracefs")
        if not (host.tracefs or host.tracefs_mountable):
            return Availability.no("no tracefs or debugfs (kernel without CONFIG_FTRACE?)")
        if not host.tracefs:
            return Availability.no("tracefs is not mounted and could not be mounted: mount -t "
                                   "tracefs nodev /sys/kernel/tracing (3.10: debugfs on "
                                   "/sys/kernel/debug)")
        if host.kprobe_events:
            if host.arch != "x86_64":
                return Availability.no("kprobe fetch args are written for x86_64, not " + host.arch)
            try:
                layout = self._layout_for(host)
            except LegacytraceError as err:
                return Availability.no(str(err))
            return Availability.yes("kprobe_events, struct offsets from " + layout.describe())
        if not set(tracepoints.TABLE).intersection(host.tracepoints or ()):
            return Availability.no("no kprobe_events and none of the tracepoints "
                                   + ", ".join(tracepoints.TABLE))
        return Availability.yes("no kprobe_events (kernel built without CONFIG_KPROBE_EVENTS): "
                                "tracepoint mode, events without a tuple")

    # -- build (pure) ------------------------------------------------------------------------

    def build(self, request):
        host = request.host
        flowfilter.check_values(request.flow)
        group = ftrace_kprobe.group_name(request.run_id)
        data = {"group": group, "release": host.release, "definitions": [], "events": []}
        if host.kprobe_events:
            layout = self._layout_for(host)
            fetch = ftrace_kprobe.Fetch(layout, hex_types(host),
                                        functools.partial(self._types_for, layout),
                                        host.kprobe_syntax or ())
            warnings = []
            definitions = ftrace_kprobe.definitions(request.probes, fetch, request.flow, warnings)
            data.update(mode="kprobe", layout=layout.describe(), definitions=definitions,
                        events=[(group, d.event, d.filter) for d in definitions],
                        warnings=warnings)
        else:
            for probe in request.probes:
                check_symbol(probe.name, "probe")
            chosen, warnings = tracepoints.select(request.probes, host)
            if not chosen:
                raise tracepoints.untraceable(self.name, request)
            data.update(mode="tracepoint", layout=None, warnings=warnings,
                        events=[(tp.system, tp.event, None) for _, tp in chosen],
                        functions=[(probe.name, tp.name) for probe, tp in chosen],
                        flow=None if request.flow is None or request.flow.is_empty()
                        else request.flow.describe())
        return Program(self.name, _text(data, request), data)

    def ready(self, program, host):
        """Tracepoint mode cannot answer a flow filter: its events carry no tuple."""
        if program.data.get("mode") == "tracepoint" and program.data.get("flow"):
            return ("this kernel has no kprobes, and the tracepoints of ftrace's tracepoint mode "
                    "carry no addresses or ports, so no event could match the flow filter ({}): "
                    "use another backend (bpf reads them at the same tracepoints) or no flow "
                    "filter".format(program.data["flow"]))
        return None

    # -- run ---------------------------------------------------------------------------------

    def run(self, program):
        return FtraceSession(program)

    def parse(self, line, program=None):
        return self._parser.parse(line)

    def parse_lines(self, lines, program=None):
        return self._parser.parse_lines(lines)

    def export(self, program, fmt):
        if fmt == "text":
            return program.text
        if fmt == "sh":
            return _shell(program.data)
        raise UsageError("the ftrace backend writes --format text or sh, not {!r}".format(fmt))

    # -- leftovers of killed runs -------------------------------------------------------------

    def leftovers(self, host):
        """Descriptions of what dead runs left in tracefs (nothing to do without tracefs)."""
        fs = _readable_tracefs(host)
        if fs is None:
            return []
        return [describe(item) for item in stale(fs.kprobe_events(), fs.instances(), pid_alive)]

    def cleanup(self, host):
        """Remove what dead runs left (their instances, then their kprobes); return what went."""
        fs = _readable_tracefs(host)
        if fs is None:
            return []
        removed = []
        for item in stale(fs.kprobe_events(), fs.instances(), pid_alive):
            try:
                if item[0] == "instance":
                    fs.disable_all(item[1])
                    fs.remove_instance(item[1])
                else:
                    _, group, event = item
                    if fs.is_enabled(None, group, event):
                        fs.set_enabled(None, group, event, False)
                    fs.remove_kprobe(group, event)
            except (LegacytraceError, OSError) as err:
                log.warning("cleanup: %s: %s", describe(item), err)
                continue
            removed.append(describe(item))
        return removed


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
        data = self.program.data
        fs = tracefs.Tracefs(self._root or kernel_tracefs.ensure())
        group = data["group"]
        if data["mode"] == "kprobe" and not fs.exists("kprobe_events"):
            raise tracefs.TracefsError("this kernel has no kprobe_events: the program was built "
                                       "for another one; build it on this host")
        attached = set()
        for definition in data["definitions"]:
            # A function the kernel refuses (notrace, inlined away, blacklisted) is a warning,
            # not the end of the trace: the other functions still tell the packet's path.
            try:
                self._step("remove kprobe {}/{}".format(group, definition.event),
                           functools.partial(fs.add_kprobe, definition.line(group)),
                           functools.partial(fs.remove_kprobe, group, definition.event))
            except tracefs.TracefsError as err:
                log.warning("ftrace: %s is not traced: %s", definition.symbol, err)
                self.skipped.append(definition.symbol)
                continue
            attached.add(definition.event)
        if data["definitions"] and not attached:
            raise tracefs.TracefsError("the kernel refused every probe ({}): see the warnings "
                                       "above".format(", ".join(self.skipped)))
        instance = group if fs.has_instances() else None
        self._fs, self._instance = fs, instance
        if instance:
            self._step("remove instance " + instance, functools.partial(fs.make_instance, instance),
                       functools.partial(fs.remove_instance, instance))
            self._options(fs, instance)
        for system, event, text in data["events"]:
            if data["mode"] == "kprobe" and event not in attached:
                continue
            if text:
                fs.set_filter(instance, system, event, text)
            self._step("disable {}/{}".format(system, event),
                       functools.partial(fs.set_enabled, instance, system, event, True),
                       functools.partial(fs.set_enabled, instance, system, event, False))
        self._step("close trace_pipe", functools.partial(self._open, fs, instance),
                   functools.partial(self._close, fs, instance))

    @staticmethod
    def _options(fs, instance):
        """Own-instance settings only (never the top level's): clock, buffer, raw pointers."""
        clocks = fs.trace_clocks(instance)
        clock = next((name for name in CLOCKS if name in clocks), None)
        if clock:
            fs.set_option(instance, "trace_clock", clock)
        fs.set_option(instance, "buffer_size_kb", str(BUFFER_KB))
        # tracepoints print %p hashed from 4.15; options/hash-ptr (5.12+) lets us see the
        # sk_buff address itself, as the kprobes print it
        fs.set_option(instance, "options/hash-ptr", "0")

    def _open(self, fs, instance):
        self._fd = fs.open_pipe(instance)

    def _close(self, fs, instance):
        """Count what the ring buffer lost, then close the pipe."""
        try:
            for stats in fs.cpu_stats(instance).values():
                for key, cause in (("overrun", "ring buffer overrun"),
                                   ("dropped events", "ring buffer full")):
                    if stats.get(key):
                        self.lost[cause] += stats[key]
        finally:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def lines(self):
        if self._fd is None:
            return
        for line in tracefs.read_lines(self._fd):
            if self._finish_by is not None and (not line or time.monotonic() > self._finish_by):
                return               # finish(): the ring buffer is read (an idle '') or time is up
            yield line

    def finish(self):
        """Our instance stops recording (its tracing_on); lines() reads what its ring buffer
        holds. Not without an instance: the top level's tracing_on is everyone's."""
        if self._fd is None or self._instance is None or self._finish_by is not None:
            return False
        try:
            if not self._fs.set_option(self._instance, "tracing_on", "0"):
                return False
        except (tracefs.TracefsError, OSError) as err:
            log.warning("ftrace: cannot stop recording before the last read: %s", err)
            return False
        self._finish_by = time.monotonic() + FINISH_TIMEOUT
        return True

    def detach(self):
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as err:       # keep going: every later step still has to run
                log.warning("ftrace cleanup: %s failed: %s", what, err)


# -- program text ---------------------------------------------------------------------------

def _text(data, request):
    """The program as `legacytrace generate` prints it."""
    group = data["group"]
    lines = ["# legacytrace ftrace program for kernel {}, run {}".format(data["release"], group)]
    if data["mode"] == "kprobe":
        lines += ["# kprobe mode; struct offsets from {}".format(data["layout"]),
                  "# 1. append each line to TRACEFS/kprobe_events:"]
        lines += [d.line(group) for d in data["definitions"]]
        lines += ["# 2. mkdir TRACEFS/instances/{g}; write each filter to "
                  "TRACEFS/instances/{g}/events/{g}/EVENT/filter:".format(g=group)]
        lines += ["# {}: {}".format(event, text) for _, event, text in data["events"] if text]
        lines += ["# 3. echo 1 > TRACEFS/instances/{g}/events/{g}/EVENT/enable; read "
                  "TRACEFS/instances/{g}/trace_pipe".format(g=group)]
    else:
        lines += ["# tracepoint mode: this kernel has no kprobe_events, so the tracepoint that "
                  "fires in each function is traced;",
                  "# it gives packet identity, length, device and drop reason, no addresses "
                  "or ports:"]
        lines += ["{}  # {}".format(name, function) for function, name in data["functions"]]
        if data["flow"]:
            lines.append("# a flow filter needs a tuple: no tracepoint event can match it")
    return "\n".join(lines) + "\n"


def _quote(text):
    """A POSIX sh single-quoted word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _shell(data):
    """A standalone POSIX sh script: set up, capture trace_pipe to a file, clean up on exit.

    The group is `legacytrace_lt$$` (the script's pid), so `legacytrace cleanup` finds
    what a killed script left. The capture is plain trace_pipe output: `legacytrace parse
    --backend ftrace FILE` reads it without the program.
    """
    kprobe = data["mode"] == "kprobe"
    out = [
        "#!/bin/sh",
        "# legacytrace ftrace program ({} mode) for kernel {}{}.".format(
            data["mode"], data["release"],
            ", struct offsets from " + data["layout"] if kprobe else ""),
        "# Usage: sh THIS_SCRIPT [CAPTURE_FILE]; stop with Ctrl-C; then",
        "#        legacytrace parse --backend ftrace CAPTURE_FILE",
        "set -u",
        "OUT=${1:-legacytrace-ftrace.trace}",
        "RELEASE=" + _quote(data["release"]),
        'if [ "$(uname -r)" != "$RELEASE" ]; then',
        '    echo "this program was built for kernel $RELEASE, not $(uname -r)" >&2; exit 1',
        "fi",
        "T=",
        "for d in /sys/kernel/tracing /sys/kernel/debug/tracing; do",
        '    if [ -e "$d/trace" ]; then T=$d; break; fi',
        "done",
        'if [ -z "$T" ]; then',
        "    if mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then T=/sys/kernel/tracing",
        "    elif mount -t debugfs nodev /sys/kernel/debug; then T=/sys/kernel/debug/tracing",
        '    else echo "no tracefs (run as root)" >&2; exit 1; fi',
        "fi",
        "G=legacytrace_lt$$",
        'I="$T/instances/$G"',
        "ADDED= ENABLED= MADE= READER=",
        "cleanup() {",
        "    trap - EXIT INT TERM HUP",
        '    if [ -n "$READER" ]; then kill "$READER" 2>/dev/null; wait "$READER" 2>/dev/null; fi',
        "    for e in $ENABLED; do",
        '        echo 0 > "$I/events/$e/enable" || echo "warning: could not disable $e" >&2',
        "    done",
        '    if [ -n "$MADE" ]; then rmdir "$I" || echo "warning: could not remove $I" >&2; fi',
        "    for e in $ADDED; do",
        '        echo "-:$G/$e" >> "$T/kprobe_events" || echo "warning: could not remove $G/$e" >&2',
        "    done",
        "}",
        "trap cleanup EXIT",
        "trap 'exit 130' INT",
        "trap 'exit 143' TERM HUP",
    ]
    for definition in data["definitions"]:
        out += ["echo {}:\"$G\"{} >> \"$T/kprobe_events\" || exit 1".format(
                    definition.kind, _quote(definition.tail())),
                "ADDED=\"$ADDED {}\"".format(definition.event)]
    out += ['mkdir "$I" || exit 1', 'MADE=1']
    out += ['for c in {}; do echo $c > "$I/trace_clock" 2>/dev/null && break; done'.format(
                " ".join(CLOCKS)),
            'echo {} > "$I/buffer_size_kb"'.format(BUFFER_KB),
            '[ -e "$I/options/hash-ptr" ] && echo 0 > "$I/options/hash-ptr"']
    for system, event, text in data["events"]:
        where = ("$G/" if kprobe else system + "/") + event     # inside double quotes
        if text:
            out.append('echo {} > "$I/events/{}/filter" || exit 1'.format(_quote(text), where))
        out += ['echo 1 > "$I/events/{}/enable" || exit 1'.format(where),
                'ENABLED="$ENABLED {}"'.format(where)]
    out += [
        'echo "# legacytrace ftrace capture: kernel $RELEASE, group $G" > "$OUT"',
        'cat "$I/trace_pipe" >> "$OUT" &',
        "READER=$!",
        'echo "capturing to $OUT; stop with Ctrl-C" >&2',
        'wait "$READER"',
    ]
    return "\n".join(out) + "\n"
