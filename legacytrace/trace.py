"""Running a trace: the one loop between a backend's live session and the output.

    session.batches() -> backend.parse_lines() -> flow filter -> owners and process filter
        -> limits -> enrich -> sink

The session hands over what each read of the mechanism returned, and every step takes
the whole batch, as `legacytrace parse` does with a capture: a busy host delivers tens of
thousands of lines a second, and a step per batch costs one Python call where a step per
line costs one per line (BENCHMARKS.md).

Signals end a trace the same way as its normal end: SIGINT (Ctrl-C), SIGTERM, SIGHUP and
the --duration alarm request a stop once, and are ignored after that so that nothing
interrupts the session's detach. While the session attaches, the request raises `Stop`
(an attach can take minutes); once lines flow it is only noted, and the loop looks at it
between batches, so that no batch read from the mechanism is dropped half-way. The
duration counts from when the probes are attached: bpftrace takes a second or more to
attach, stap longer.
"""
import contextlib
import signal
import time


class Stop(Exception):
    """A request to end the trace (a signal or the duration); the message names it."""


_STOP_SIGNALS = (("SIGINT", "interrupted (SIGINT)"), ("SIGTERM", "terminated (SIGTERM)"),
                 ("SIGHUP", "hung up (SIGHUP)"))


class Stops(object):
    """The first stop request of a trace (`reason`), from a signal or the duration alarm.

    Until `watch()` a request raises `Stop` where the program is; after it, it is only
    kept, for the trace loop to see between batches. Requests after the first are ignored.
    """

    def __init__(self, duration=None):
        self.duration = duration
        self.reason = None
        self._raising = True

    def request(self, reason):
        if self.reason is not None:
            return
        self.reason = reason
        if self._raising:
            raise Stop(reason)

    def watch(self):
        """From now on a request is kept, not raised; the duration starts now."""
        self._raising = False
        if self.duration and self.reason is None:
            signal.setitimer(signal.ITIMER_REAL, self.duration)


@contextlib.contextmanager
def stop_on_signals(duration=None):
    """Turn stop signals and the duration alarm into requests of one `Stops`, which it yields."""
    stops = Stops(duration)
    previous = {}

    def handler_for(reason):
        return lambda signum, frame: stops.request(reason)

    for name, reason in _STOP_SIGNALS:
        signum = getattr(signal, name)
        previous[signum] = signal.signal(signum, handler_for(reason))
    if duration:
        previous[signal.SIGALRM] = signal.signal(
            signal.SIGALRM, handler_for("duration of {:g} s reached".format(duration)))
    try:
        yield stops
    finally:
        stops.reason = stops.reason or "done"
        if duration:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class RateLimit(object):
    """At most `rate` events per second reach the output; the rest are counted, not lost silently."""

    def __init__(self, rate, clock=time.monotonic):
        self.rate = rate
        self.clock = clock
        self.window = None
        self.used = 0

    def take(self, wanted):
        """How many of `wanted` events (the next ones, in order) may be shown now."""
        now = int(self.clock())
        if now != self.window:
            self.window, self.used = now, 0
        allowed = max(0, min(wanted, self.rate - self.used))
        self.used += allowed
        return allowed


def run(backend, program, flow, limits, sink, stats, enrich=None, attached=None, own=None):
    """Run `program` with `backend` until it ends, a limit is reached or a signal stops it.

    `sink.events(evs)` receives the kept events of each batch; `stats` (a summary.Summary)
    counts the lines read, events, user-space filtering, rate-limited events and the
    session's lost events. `enrich(evs)`, when given, returns the events as they are
    shown (events are tuples: what user space adds makes new ones). `own(evs)`, when given,
    returns the events with their owners that the process filter keeps (before the limits:
    the owners are learnt from every event); the others count as filtered. `attached()` is called
    once the probes are in place, and the duration starts then. On a stop (a signal, the
    duration) a session that can `finish()` stops producing and what it already produced
    still comes out. Returns the reason the trace ended, in words.
    """
    ingest = _Ingest(backend, program, flow, limits, sink, stats, enrich)
    ingest.own = own
    ended = "the tracer ended"
    with stop_on_signals(limits.duration) as stops:
        session = backend.run(program)
        try:
            with session:
                stops.watch()
                if attached is not None:
                    attached()
                ended = ingest.drain(session.batches(), stops) or stops.reason or ended
                if stops.reason and ingest.reached is None and session.finish():
                    ended = ingest.drain(session.batches()) or ended
        except Stop as stop:
            ended = str(stop)
        finally:
            stats.lost.update(session.lost)
    return ended


class _Ingest(object):
    """The steps from a batch of raw lines to the sink, each over the whole batch."""

    def __init__(self, backend, program, flow, limits, sink, stats, enrich):
        self.parse_lines = backend.parse_lines
        self.program = program
        self.matches = None if flow.is_empty() else flow.matches
        self.count = limits.count
        self.rate = RateLimit(limits.rate) if limits.rate else None
        self.sink, self.stats, self.enrich = sink, stats, enrich
        #: owners.Attribution (or None): the owners, and the process filter's verdict
        self.own = None
        #: why the trace must end (--count reached), None until then
        self.reached = None

    def drain(self, batches, stops=None):
        """Ingest `batches` until they end, --count is reached (its reason is returned) or,
        between two batches, `stops` holds a stop request (None is returned)."""
        for lines in batches:
            if lines:
                self.batch(lines)
                if self.reached is not None:
                    return self.reached
            if stops is not None and stops.reason is not None:
                return None
        return None

    def batch(self, lines):
        stats = self.stats
        events = self.parse_lines(lines, self.program)
        stats.lines_read += len(events)
        if self.matches is not None:
            kept = list(filter(self.matches, events))
            stats.filtered += len(events) - len(kept)
            events = kept
        if self.own is not None and events:
            kept = self.own(events)
            stats.filtered += len(events) - len(kept)
            events = kept
        events = self._limited(events)
        if not events:
            return
        if self.enrich is not None:
            events = self.enrich(events)
        stats.add_all(events)
        self.sink.events(events)

    def _limited(self, events):
        """The events the rate limit and --count let through; sets `reached` at the count.
        Rate-limited events are counted; events after the count are not wanted."""
        total = len(events)
        room = total if self.count is None else self.count - self.stats.events
        wanted = min(total, room)
        allowed = wanted if self.rate is None else self.rate.take(wanted)
        if self.count is not None and allowed == room:
            self.reached = "count of {} events reached".format(self.count)
        elif allowed < total:
            self.stats.lost["rate limit"] += total - allowed
        return events[:allowed] if allowed < total else events

