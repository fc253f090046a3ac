"""Running a trace: the one loop between a backend's live session and the output.

    session.lines() -> backend.parse() -> flow filter -> enrich -> limits -> sink

Signals end a trace the same way as its normal end: SIGINT (Ctrl-C), SIGTERM,
SIGHUP and the --duration alarm raise `Stop` once, and are ignored after that so
that nothing interrupts the session's detach. The duration counts from when the
probes are attached: bpftrace takes a second or more to attach, stap longer.
"""
import contextlib
import signal
import time


class Stop(Exception):
    """A request to end the trace (a signal or the duration); the message names it."""


_STOP_SIGNALS = (("SIGINT", "interrupted (SIGINT)"), ("SIGTERM", "terminated (SIGTERM)"),
                 ("SIGHUP", "hung up (SIGHUP)"))


@contextlib.contextmanager
def stop_on_signals(duration=None):
    """Turn stop signals and the duration alarm into one `Stop`, raised once.

    Yields `start()`, which sets the alarm off: the duration counts from that call.
    """
    previous = {}
    stopping = []

    def handler_for(reason):
        def handler(signum, frame):
            if stopping:
                return
            stopping.append(reason)
            raise Stop(reason)
        return handler

    for name, reason in _STOP_SIGNALS:
        signum = getattr(signal, name)
        previous[signum] = signal.signal(signum, handler_for(reason))
    if duration:
        previous[signal.SIGALRM] = signal.signal(
            signal.SIGALRM, handler_for("duration of {:g} s reached".format(duration)))

    def start():
        if duration and not stopping:
            signal.setitimer(signal.ITIMER_REAL, duration)

    try:
        yield start
    finally:
        stopping.append("done")
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

    def allow(self):
        now = int(self.clock())
        if now != self.window:
            self.window, self.used = now, 0
        if self.used < self.rate:
            self.used += 1
            return True
        return False


def run(backend, program, flow, limits, sink, stats, enrich=None, attached=None):
    """Run `program` with `backend` until it ends, a limit is reached or a signal stops it.

    `sink.event(ev)` receives every kept event; `stats` (a summary.Summary) counts
    events, user-space filtering, rate-limited events and the session's lost
    events. `enrich(ev)`, when given, returns the event as it is shown (events are
    tuples: what user space adds makes a new one), or None to drop it (the process
    filter, which needs the owner enrich finds), counted as filtered. `attached()` is
    called once the probes are in place, and the duration starts then. On a stop (a signal, the
    duration) a session that can `finish()` stops producing and what it already
    produced still comes out. Returns the reason the trace ended, in words.
    """
    consume = _consumer(backend.parse, program, flow, limits, sink, stats, enrich)
    ended = "the tracer ended"
    with stop_on_signals(limits.duration) as start:
        session = backend.run(program)
        try:
            with session:
                start()
                if attached is not None:
                    attached()
                try:
                    ended = consume(session.lines()) or ended
                except Stop as stop:
                    ended = str(stop)
                    if session.finish():
                        ended = consume(session.lines()) or ended
        except Stop as stop:
            ended = str(stop)
        finally:
            stats.lost.update(session.lost)
    return ended


def _consumer(parse, program, flow, limits, sink, stats, enrich):
    """consume(lines): their events to the sink, through the flow filter, `enrich` and the
    rate limit; the reason when --count is reached, else None."""
    rate = RateLimit(limits.rate) if limits.rate else None

    def consume(lines):
        for line in lines:
            event = parse(line, program)
            if event is None:
                continue
            if not flow.matches(event):
                stats.filtered += 1
                continue
            if enrich is not None:
                event = enrich(event)
                if event is None:
                    stats.filtered += 1
                    continue
            if rate is not None and not rate.allow():
                stats.lost["rate limit"] += 1
                continue
            stats.add(event)
            sink.event(event)
            if limits.count and stats.events >= limits.count:
                return "count of {} events reached".format(limits.count)
        return None
    return consume
