"""Building the ftrace program (pure): kprobe definitions and filters, or the tracepoints
of a kernel without kprobes; its text, and the standalone sh script that runs it.
"""
import collections
import functools

from legacytrace.backends.base import Program
from legacytrace.backends.ftrace import eventfilter, kprobe
from legacytrace.errors import UsageError
from legacytrace.kernel import btf, offsets, tracepoints

#: Trace clocks in order of preference: mono (about 4.0), then global (3.10: across CPUs).
CLOCKS = ("mono", "global")


class FtracePart(collections.namedtuple(
        "FtracePart", "group release layout definitions events functions flow processes")):
    """What the session and the sh script need beyond the text.

    group       -- the kprobe group and instance name (`legacytrace_<run id>`)
    layout      -- where struct offsets came from (kprobe mode), else None
    definitions -- the kprobe.Definitions (kprobe mode), else ()
    events      -- (system, event, filter or None) to enable, in order
    functions   -- (function, tracepoint name) of tracepoint mode, else ()
    flow        -- the flow filter in words where tracepoint mode cannot apply it, else None
    processes   -- the process filter in words where tracepoint mode cannot apply it, else None
    """

    __slots__ = ()


def kernel_types(layout):
    """The kernel's types behind `layout`: its BTF (every struct and enum) when the layout
    came from BTF, else what the layout itself holds (offsets.LayoutTypes)."""
    if layout.source == "btf":
        return btf.load(layout.origin)
    return offsets.LayoutTypes(layout)


def hex_types(host):
    """Whether the kernel has the x8..x64 fetch types (4.9+), as its tracing/README says
    (legacytrace.kernel.features: "x-types"). Without them `u*` types are used, which print hex
    on those kernels; the parser reads either (parse.py)."""
    return "x-types" in (host.kprobe_syntax or [])



def program(request, layout_for, types_for):
    """The Program for a checked `request`: kprobe mode where the target has kprobe_events."""
    group = kprobe.group_name(request.run_id)
    if request.host.kprobe_events:
        part, warnings = _kprobe_part(request, group, layout_for, types_for)
        mode = "kprobe"
    else:
        part, warnings = _tracepoint_part(request, group)
        mode = "tracepoint"
    return Program("ftrace", _text(mode, part), run_id=request.run_id,
                   mode=mode, warnings=warnings, part=part, buffer_kb=request.buffer_kb)


def _kprobe_part(request, group, layout_for, types_for):
    host = request.host
    layout = layout_for(host)
    fetch = kprobe.Fetch(layout, hex_types(host), functools.partial(types_for, layout),
                         host.kprobe_syntax or ())
    warnings = []
    definitions = kprobe.definitions(request.probes, fetch, request.flow, warnings,
                                     _process_filter(request.processes, warnings))
    events = [(group, d.event, d.filter) for d in definitions]
    return FtracePart(group, host.release, layout.describe(), definitions, events, (),
                      None, None), warnings


def _process_filter(processes, warnings):
    """The process filter's event filter text (eventfilter.process_filter), and a warning
    where the kernel cannot take it (the processes' threads, written out, are too long)."""
    text = eventfilter.process_filter(processes)
    if text is None and processes is not None and processes.pids and not processes.comms:
        warnings.append("process filter: its {} threads take more filter text than the kernel "
                        "has room for; user space filters them".format(len(processes.threads)))
    return text


def _tracepoint_part(request, group):
    chosen, warnings = tracepoints.select(request.probes, request.host)
    if not chosen:
        raise tracepoints.untraceable("ftrace", request)
    flow = None if request.flow is None or request.flow.is_empty() else request.flow.describe()
    processes = request.processes.describe() if request.processes else None
    return FtracePart(group, request.host.release, None, (),
                      [(tp.system, tp.event, None) for _, tp in chosen],
                      [(probe.name, tp.name) for probe, tp in chosen], flow,
                      processes), warnings


def ready(program):
    """Tracepoint mode cannot answer a flow or process filter: its events carry no tuple
    and no socket, so neither a flow nor the owner of a received packet is known."""
    if program.mode != "tracepoint":
        return None
    if program.part.flow:
        return ("this kernel has no kprobes, and the tracepoints of ftrace's tracepoint mode "
                "carry no addresses or ports, so no event could match the flow filter ({}): "
                "use another backend (bpf reads them at the same tracepoints) or no flow "
                "filter".format(program.part.flow))
    if program.part.processes:
        return ("this kernel has no kprobes, and the tracepoints of ftrace's tracepoint mode "
                "carry no socket and no addresses, so the packets a process receives cannot "
                "be told ({}): use another backend (bpf reads the socket at the same "
                "tracepoints)".format(program.part.processes))
    return None


def export(program, fmt):
    """The program as `--format` asks: its text, or the standalone sh script."""
    if fmt == "text":
        return program.text
    if fmt == "sh":
        return _shell(program.mode, program.part, program.buffer_kb)
    raise UsageError("the ftrace backend writes --format text or sh, not {!r}".format(fmt))


# -- program text ---------------------------------------------------------------------------

def _text(mode, part):
    """The program as `legacytrace generate` prints it."""
    group = part.group
    lines = ["# legacytrace ftrace program for kernel {}, run {}".format(part.release, group)]
    if mode == "kprobe":
        lines += ["# kprobe mode; struct offsets from {}".format(part.layout),
                  "# 1. append each line to TRACEFS/kprobe_events:"]
        lines += [d.line(group) for d in part.definitions]
        lines += ["# 2. mkdir TRACEFS/instances/{g}; write each filter to "
                  "TRACEFS/instances/{g}/events/{g}/EVENT/filter:".format(g=group)]
        lines += ["# {}: {}".format(event, text) for _, event, text in part.events if text]
        lines += ["# 3. echo 1 > TRACEFS/instances/{g}/events/{g}/EVENT/enable; read "
                  "TRACEFS/instances/{g}/trace_pipe".format(g=group)]
    else:
        lines += ["# tracepoint mode: this kernel has no kprobe_events, so the tracepoint that "
                  "fires in each function is traced;",
                  "# it gives packet identity, length, device and drop reason, no addresses "
                  "or ports:"]
        lines += ["{}  # {}".format(name, function) for function, name in part.functions]
        if part.flow:
            lines.append("# a flow filter needs a tuple: no tracepoint event can match it")
    return "\n".join(lines) + "\n"


def _quote(text):
    """A POSIX sh single-quoted word."""
    return "'" + text.replace("'", "'\\''") + "'"


#: The sh script after its header: check the kernel, find or mount tracefs, and clean up
#: on every exit (what it enabled, its instance, its kprobes; see _shell).
_SH_SETUP = (
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
)
#: The sh script's end: capture trace_pipe until the reader is stopped.
_SH_CAPTURE = (
    'echo "# legacytrace ftrace capture: kernel $RELEASE, group $G" > "$OUT"',
    'cat "$I/trace_pipe" >> "$OUT" &',
    "READER=$!",
    'echo "capturing to $OUT; stop with Ctrl-C" >&2',
    'wait "$READER"',
)


def _shell(mode, part, buffer_kb):
    """A standalone POSIX sh script: set up, capture trace_pipe to a file, clean up on exit.

    The group is `legacytrace_lt$$` (the script's pid), so `legacytrace cleanup` finds
    what a killed script left. The capture is plain trace_pipe output: `legacytrace parse
    --backend ftrace FILE` reads it without the program.
    """
    out = [
        "#!/bin/sh",
        "# legacytrace ftrace program ({} mode) for kernel {}{}.".format(
            mode, part.release,
            ", struct offsets from " + part.layout if mode == "kprobe" else ""),
        "# Usage: sh THIS_SCRIPT [CAPTURE_FILE]; stop with Ctrl-C; then",
        "#        legacytrace parse --backend ftrace CAPTURE_FILE",
        "set -u",
        "OUT=${1:-legacytrace-ftrace.trace}",
        "RELEASE=" + _quote(part.release),
    ]
    out.extend(_SH_SETUP)
    for definition in part.definitions:
        out += ["echo {}:\"$G\"{} >> \"$T/kprobe_events\" || exit 1".format(
                    definition.kind, _quote(definition.tail())),
                "ADDED=\"$ADDED {}\"".format(definition.event)]
    out += ['mkdir "$I" || exit 1', 'MADE=1',
            'for c in {}; do echo $c > "$I/trace_clock" 2>/dev/null && break; done'.format(
                " ".join(CLOCKS)),
            'echo {} > "$I/buffer_size_kb"'.format(int(buffer_kb)),
            '[ -e "$I/options/hash-ptr" ] && echo 0 > "$I/options/hash-ptr"']
    out.extend(_sh_events(mode, part))
    out.extend(_SH_CAPTURE)
    return "\n".join(out) + "\n"


def _sh_events(mode, part):
    """The script's lines that set each event's filter and enable it."""
    out = []
    for system, event, text in part.events:
        where = ("$G/" if mode == "kprobe" else system + "/") + event     # inside double quotes
        if text:
            out.append('echo {} > "$I/events/{}/filter" || exit 1'.format(_quote(text), where))
        out += ['echo 1 > "$I/events/{}/enable" || exit 1'.format(where),
                'ENABLED="$ENABLED {}"'.format(where)]
    return out
