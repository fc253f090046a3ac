"""The trace loop: rate limiting, the signal-to-Stop bridge, and a stop that drains."""
import collections
import os
import signal

import pytest

from legacytrace import model, summary, trace
from legacytrace.flowfilter import FlowFilter


def test_rate_limit_counts_per_second_window():
    now = [100.2]
    limit = trace.RateLimit(2, clock=lambda: now[0])
    assert [limit.allow() for _ in range(3)] == [True, True, False]
    now[0] = 101.0
    assert limit.allow()


def test_sigterm_becomes_stop_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(trace.Stop, match="SIGTERM"):
        with trace.stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_signal_during_cleanup_is_ignored():
    with pytest.raises(trace.Stop):
        with trace.stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                signal.pause()
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # arrives while "detaching": no raise


def test_duration_alarm_stops_once_started():
    with pytest.raises(trace.Stop, match="duration of 0.05 s reached"):
        with trace.stop_on_signals(duration=0.05) as start:
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
            start()
            signal.pause()


# --- the loop: a stop lets a session that can finish deliver what it already produced ---

class _Session(object):
    """Yields its lines; a Ctrl-C comes while it waits for the third. With `can_finish`, finish()
    is honoured and the rest still comes; otherwise lines() is never asked again."""

    def __init__(self, lines, can_finish):
        self.lines_left = list(lines)
        self.can_finish = can_finish
        self.finished = self.detached = False
        self.lost = collections.Counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detached = True
        self.lost["unread at stop"] += len(self.lines_left)

    def lines(self):
        while self.lines_left:
            if self.lines_left[0] == "3" and not self.finished:   # waiting for it
                os.kill(os.getpid(), signal.SIGINT)
                signal.pause()
            yield self.lines_left.pop(0)

    def finish(self):
        self.finished = self.can_finish
        return self.can_finish


class _Backend(object):
    def __init__(self, session):
        self.session = session

    def run(self, program):
        return self.session

    def parse(self, line, program):
        event = model.FlowEvent(backend="test", func="f{}".format(line))
        return event


class _Sink(object):
    def __init__(self):
        self.funcs = []

    def event(self, event):
        self.funcs.append(event.func)


@pytest.mark.parametrize("can_finish, delivered, unread", [
    (True, ["f1", "f2", "f3", "f4", "f5"], 0),
    (False, ["f1", "f2"], 3),
])
def test_a_stop_delivers_what_a_finishing_session_still_has(can_finish, delivered, unread):
    session, sink, stats = _Session("12345", can_finish), _Sink(), summary.Summary()
    ended = trace.run(_Backend(session), None, FlowFilter.parse(), model.Limits(), sink, stats)
    assert ended == "interrupted (SIGINT)"
    assert sink.funcs == delivered and stats.events == len(delivered)
    assert session.detached and stats.lost.get("unread at stop", 0) == unread


class _SlowAttach(_Session):
    """Notes whether the duration alarm runs while it attaches and once it yields lines."""

    def __init__(self):
        super(_SlowAttach, self).__init__("1", can_finish=False)
        self.alarm = {}

    def __enter__(self):
        self.alarm["attach"] = signal.getitimer(signal.ITIMER_REAL)[0]
        return self

    def lines(self):
        self.alarm["lines"] = signal.getitimer(signal.ITIMER_REAL)[0]
        return iter(["1"])


def test_the_duration_starts_when_tracing_starts():
    """bpftrace takes a second or more to attach: `-T` must not count it."""
    session, events = _SlowAttach(), []
    trace.run(_Backend(session), None, FlowFilter.parse(), model.Limits(duration=30), _Sink(),
              summary.Summary(), attached=lambda: events.append(session.alarm.get("lines")))
    assert session.alarm["attach"] == 0.0 and 0 < session.alarm["lines"] <= 30
    assert events == [None]          # `attached()` comes before the first line
