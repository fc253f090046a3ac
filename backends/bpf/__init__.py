"""The eBPF backend: a generated bpftrace script, run as a child process.

build.py renders `templates/bpftrace.bt.j2` into one bpftrace probe per manifest
function. Each probe casts its `struct sk_buff *` with BTF, finds the IP header at
`head + network_header` and L4 after it, applies the flow filter, and prints one
tab-separated line per event in the versioned line protocol (parse.TAG, see the
template's header). parse.py turns such a line into a FlowEvent.

Two modes, chosen from the target's HostFacts:
- kprobe: `kprobe:FUNC` with `argN` (kernels with kprobes, e.g. the 6.1 lab);
- tracepoint: kernels with BPF and BTF but no kprobes (CONFIG_KPROBES unset,
  as on this project's development machine) get the static tracepoint that
  fires inside a manifest function (net:net_dev_queue in __dev_queue_xmit, ...;
  legacytrace.kernel.tracepoints), with its `skbaddr` cast to `struct sk_buff *`; its
  events are named after the tracepoint. A function without one is skipped.

session.py runs bpftrace in its own session (a Ctrl-C on the terminal reaches only
legacytrace, which stops bpftrace itself) so that it dies with a killed legacytrace;
its script folder is named after the run, which is how leftovers are found.
"""
from legacytrace.backends import checks
from legacytrace.backends.base import Backend
from legacytrace.backends.bpf import build, check, parse, session


class BpfBackend(Backend):
    """bpftrace with BTF: kprobes where the kernel has them, else static tracepoints."""

    name = "bpf"
    summary = "generated bpftrace script (BTF-typed sk_buff access, in-kernel flow filter)"
    features = ("peek",)

    def __init__(self, bpftrace="bpftrace", start_timeout=session.START_TIMEOUT,
                 grace=session.STOP_GRACE, types_for=build.load_types):
        """`types_for(host)` returns the Types of a host's kernel (custom fields, peeks)."""
        self.bpftrace = bpftrace
        self.start_timeout = start_timeout
        self.grace = grace
        self.types_for = types_for
        self.parser = parse.LineParser(self.name)

    def check(self, host):
        return check.check(host)

    def mode(self, host):
        return checks.dynamic_mode(host)

    def program(self, request):
        return build.program(request, self.types_for)

    def run(self, program):
        return session.BpftraceSession(program, self.bpftrace, self.start_timeout, self.grace)

    def parse(self, line, program=None):
        return self.parser.parse(line)

    def parse_lines(self, lines, program=None):
        return self.parser.parse_lines(lines)

    def leftovers(self, host):
        return session.leftovers()

    def cleanup(self, host):
        return session.cleanup(self.grace)
