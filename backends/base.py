"""The interface every backend implements, and the pieces they share.

A backend turns a `TraceRequest` into a `Program` for its mechanism (pure),
runs it in a `Session` that attaches, streams raw lines and always detaches,
and parses each raw line into a `FlowEvent` (pure, so captures replay).

    request --build()--> Program --run()--> Session (raw lines) --parse()--> FlowEvent
"""
import collections
import ctypes
import itertools
import pkgutil
import signal

import jinja2

from legacytrace import validate
from legacytrace.model import BUFFER_KB
from legacytrace.errors import UsageError


#: prctl(2) option: the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """In a child before it runs its program (a Popen preexec_fn): get SIGTERM when
    legacytrace dies, so that no tracer (bpftrace, staprun) outlives a killed run."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def template(package, name):
    """The Jinja2 template `name` of installed `package` (package data): undefined values
    are errors, blocks leave no blank lines, nothing is escaped (the backend checked every
    value: legacytrace.validate)."""
    source = pkgutil.get_data(package, name).decode("utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    return env.from_string(source)


class Availability(collections.namedtuple("Availability", "available reason")):
    """Whether a backend can run on a host, and why (in words a user understands)."""

    __slots__ = ()

    @classmethod
    def yes(cls, reason):
        return cls(True, reason)

    @classmethod
    def no(cls, reason):
        return cls(False, reason)


class Program(object):
    """A built program: the text its mechanism runs, printable by `legacytrace generate`.

    `text` is the program as a user would review it (a .stp script, kprobe_events
    lines with filters, a bpftrace script); `run_id` names what it attaches; `mode` is
    how it attaches ("kprobe", "tracepoint", or None where a backend has one way);
    `warnings` are "FUNCTION: why" texts about what it had to leave out; `part` is the
    backend's own typed value with what `run()` and `export()` need beyond the text;
    `buffer_kb` the request's buffer size per CPU, which the session gives its mechanism.
    """

    __slots__ = ("backend", "text", "run_id", "mode", "warnings", "part", "buffer_kb")

    def __init__(self, backend, text, run_id=None, mode=None, warnings=(), part=None,
                 buffer_kb=BUFFER_KB):
        self.backend = backend
        self.text = text
        self.run_id = run_id
        self.mode = mode
        self.warnings = list(warnings)
        self.part = part
        self.buffer_kb = buffer_kb


class Session(object):
    """A live run: attach on enter, detach on exit, whatever ended it.

    Subclasses implement `attach()`, `batches()` and `detach()`. `detach()` must
    undo what `attach()` did in reverse order, warn about each step that fails
    and go on, so that a half-done attach is cleaned up too.
    `lost` counts events the mechanism dropped, by cause; the summary shows it.
    """

    #: Seconds `batches()` waits for output before it yields an empty batch.
    IDLE = 0.2

    def __init__(self, program):
        self.program = program
        self.lost = collections.Counter()

    def attach(self):
        raise NotImplementedError

    def batches(self):
        """Yield lists of raw output lines (str, without the newline) as each read of the
        mechanism returns them, until the mechanism ends; an empty list after `IDLE`
        seconds without output, so that the caller can look at a stop request."""
        raise NotImplementedError

    def lines(self):
        """The raw output lines one by one (for tests and tools that want no batches)."""
        for batch in self.batches():
            for line in batch:
                yield line

    def detach(self):
        raise NotImplementedError

    def finish(self):
        """Ask the mechanism to stop producing while `batches()` still yields what it has
        produced, to its end; False when this session cannot (detach drops the rest)."""
        return False

    def __enter__(self):
        try:
            self.attach()
        except BaseException:
            self.detach()
            raise
        return self

    def __exit__(self, *exc):
        self.detach()
        return False


class Backend(object):
    """One tracing mechanism: the whole contract, with defaults where a backend may have
    nothing to add. A backend sets `name` and implements check, build, run and parse."""

    #: the name used by `--backend` and in every event's `backend` field
    name = None
    #: one line for `doctor` and `--help`
    summary = ""
    #: optional manifest features the backend implements ("peek": payload bytes)
    features = ()
    #: what `generate --format` can write (export)
    formats = ("text",)

    def check(self, host):
        """Return an `Availability` for `host` (a `legacytrace.kernel.host.HostFacts`)."""
        raise NotImplementedError

    def mode(self, host):
        """How it attaches on `host` ("kprobe", "tracepoint"), or None: it has one way."""
        return None

    def build(self, request):
        """Return the `Program` for a `TraceRequest`. Pure: no I/O, same input, same text.
        Every value of the request is checked first (legacytrace.validate), so `program`
        checks only what its mechanism cannot take."""
        return self.program(validate.request(request))

    def program(self, request):
        """The `Program` of a checked request (see build)."""
        raise NotImplementedError

    def ready(self, program, host):
        """None when `host` can run this `program`, else why not. `check()` judges the host
        before there is a program; a backend whose ability depends on the program (stap:
        a cached module, or a compiler) says so here."""
        return None

    def run(self, program):
        """Return a `Session` that runs `program` on this host."""
        raise NotImplementedError

    def parse(self, line, program=None):
        """Return the `FlowEvent` for one raw line, or None for a line that is not an event.

        Never raises on any input: a captured file may hold anything.
        `program` gives the line protocol's details where the backend needs them.
        """
        raise NotImplementedError

    def parse_lines(self, lines, program=None):
        """The `FlowEvent`s of a list of raw lines, as `parse` gives them, non-events left out.

        The parse command reads a capture in batches; a backend whose parser can take
        a batch in fewer steps than a line at a time (ftrace: one findall) overrides this.
        """
        events = map(self.parse, lines, itertools.repeat(program, len(lines)))
        return [event for event in events if event is not None]

    def export(self, program, fmt):
        """The program in format `fmt` (one of `formats`); "text" is the program's text."""
        if fmt != "text":
            raise UsageError("backend {} has no format {!r}: choose one of {}".format(
                self.name, fmt, ", ".join(self.formats)))
        return program.text

    def leftovers(self, host):
        """Descriptions of what killed runs of this backend left attached."""
        return []

    def cleanup(self, host):
        """Remove what killed runs left (only runs whose process is gone); return what went."""
        return []
