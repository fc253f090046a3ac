"""The ftrace backend: raw tracefs, no compiler, no code of ours in the kernel.

Two modes, chosen by what the kernel has:
- kprobe mode (`kprobe_events` exists): one kprobe (or kretprobe) per manifest function
  in the group `legacytrace_<run_id>`, fetch args at struct offsets from
  legacytrace.kernel.offsets (BTF, a table of known builds, pahole), event filters where
  the IP header's place is fixed (kprobe.py);
- tracepoint mode (no kprobes, e.g. this development machine's 6.18): the static
  tracepoint that fires in each manifest function (legacytrace.kernel.tracepoints), events
  with packet identity, length, device and drop reason but no tuple (source "tracepoint"),
  so no flow filter can match them: `ready()` refuses a trace that has one.
Either way the events go to an own buffer instance named like the group, read from its
trace_pipe (session.py, writing tracefs with tracefs.py); parse() needs no Program
(parse.py), so the capture of the standalone sh script (`export(program, "sh")`) parses
the same way.
"""
from legacytrace.backends import checks
from legacytrace.backends.base import Backend
from legacytrace.backends.ftrace import build, check, parse, session
from legacytrace.kernel import offsets


class FtraceBackend(Backend):
    name = "ftrace"
    summary = "raw tracefs: kprobe_events at struct offsets, or net/skb tracepoints without kprobes"
    formats = ("text", "sh")
    #: peek reads user memory with the +u fetch (5.3+); build() warns where it cannot
    features = ("peek",)

    def __init__(self, layout_for=offsets.layout_for, types_for=None):
        """`layout_for(host)` returns the struct layout (legacytrace.kernel.offsets.Layout) of a
        host; `types_for(layout)` the kernel's types for field paths and peek (default: its
        BTF when the layout came from BTF, else only what the layout holds)."""
        self._layout_for = layout_for
        self._types_for = types_for or build.kernel_types
        self._parser = parse.LineParser()

    def check(self, host):
        return check.check(host, self._layout_for)

    def mode(self, host):
        return checks.dynamic_mode(host)

    def program(self, request):
        return build.program(request, self._layout_for, self._types_for)

    def ready(self, program, host):
        return build.ready(program)

    def run(self, program):
        return session.FtraceSession(program)

    def parse(self, line, program=None):
        return self._parser.parse(line)

    def parse_lines(self, lines, program=None):
        return self._parser.parse_lines(lines)

    def export(self, program, fmt):
        return build.export(program, fmt)

    def leftovers(self, host):
        return session.leftovers(host)

    def cleanup(self, host):
        return session.cleanup(host)
