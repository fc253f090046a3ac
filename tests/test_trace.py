"""The trace loop: rate limiting, the signal-to-Stop bridge, and a stop that drains."""
import collections
import os
import signal

import pytest

from legacytrace import model, summary, trace
from legacytrace.flowfilter import FlowFilter
from legacytrace.trace import RateLimit


def test_rate_limit_lets_through_rate_events_per_second_window():
    now = [100.2]
    limit = trace.RateLimit(2, clock=lambda: now[0])
    assert [limit.take(1), limit.take(3), limit.take(1)] == [1, 1, 0]
    now[0] = 101.0
    assert limit.take(5) == 2


def test_sigterm_while_attaching_raises_stop_once_and_handlers_are_restored():
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


def test_once_watched_a_signal_is_kept_not_raised():
    """While lines flow a stop is looked at between batches: raising it in the middle of
    one would drop what was read."""
    with trace.stop_on_signals() as stops:
        stops.watch()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.reason == "terminated (SIGTERM)"


def test_duration_alarm_stops_once_watched():
    with trace.stop_on_signals(duration=0.05) as stops:
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        stops.watch()
        signal.pause()
        assert stops.reason == "duration of 0.05 s reached"


# --- the loop: a stop lets a session that can finish deliver what it already produced ---

class _Session(object):
    """Yields its lines in batches of two; a Ctrl-C comes while it reads the batch of "3"
    (its batch still comes whole). With `can_finish`, finish() is honoured and the rest
    still comes; otherwise batches() is never asked again."""

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

    def batches(self):
        while self.lines_left:
            batch, self.lines_left = self.lines_left[:2], self.lines_left[2:]
            if "3" in batch and not self.finished:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    def finish(self):
        self.finished = self.can_finish
        return self.can_finish


class _Backend(object):
    def __init__(self, session):
        self.session = session

    def run(self, program):
        return self.session

    def parse_lines(self, lines, program):
        return [model.FlowEvent(backend="test", func="f{}".format(line), pid=int(line))
                for line in lines]


class _Sink(object):
    def __init__(self):
        self.funcs = []

    def events(self, events):
        self.funcs.extend(event.func for event in events)


@pytest.mark.parametrize("can_finish, delivered, unread", [
    (True, ["f1", "f2", "f3", "f4", "f5"], 0),
    (False, ["f1", "f2", "f3", "f4"], 1),
])
def test_a_stop_delivers_what_a_finishing_session_still_has(can_finish, delivered, unread):
    session, sink, stats = _Session("12345", can_finish), _Sink(), summary.Summary()
    ended = trace.run(_Backend(session), None, FlowFilter.parse(), model.Limits(), sink, stats)
    assert ended == "interrupted (SIGINT)"
    assert sink.funcs == delivered and stats.events == stats.lines_read == len(delivered)
    assert session.detached and stats.lost.get("unread at stop", 0) == unread


@pytest.mark.parametrize("limits, shown, ended, rate_limited", [
    (model.Limits(count=3), ["f1", "f2", "f3"], "count of 3 events reached", 0),
    (model.Limits(rate=2), ["f1", "f2"], "the tracer ended", 4),
    (model.Limits(count=2, rate=2), ["f1", "f2"], "count of 2 events reached", 0),
    (model.Limits(count=3, rate=2), ["f1", "f2"], "the tracer ended", 4),
])
def test_count_and_rate_limit_cut_batches_where_one_event_at_a_time_would(
        limits, shown, ended, rate_limited, monkeypatch):
    """--count ends at its event, events after it are not wanted (no loss); the rate limit
    counts every event it holds back."""
    monkeypatch.setattr(trace, "RateLimit", lambda rate: RateLimit(rate, clock=lambda: 7.0))
    session = _Session("123456", can_finish=False)
    session.finished = True                             # no Ctrl-C
    sink, stats = _Sink(), summary.Summary()
    assert trace.run(_Backend(session), None, FlowFilter.parse(), limits, sink, stats) == ended
    assert sink.funcs == shown and stats.events == len(shown)
    assert stats.lost.get("rate limit", 0) == rate_limited


def test_the_flow_filter_counts_what_it_drops_and_lines_read_count_all():
    session = _Session("1234", can_finish=False)
    session.finished = True
    sink, stats = _Sink(), summary.Summary()

    class Odd(object):
        def is_empty(self):
            return False

        def matches(self, event):
            return event.pid % 2 == 1

    trace.run(_Backend(session), None, Odd(), model.Limits(), sink, stats)
    assert sink.funcs == ["f1", "f3"] and stats.filtered == 2 and stats.lines_read == 4


class _SlowAttach(_Session):
    """Notes whether the duration alarm runs while it attaches and once it yields lines."""

    def __init__(self):
        super(_SlowAttach, self).__init__("1", can_finish=False)
        self.alarm = {}

    def __enter__(self):
        self.alarm["attach"] = signal.getitimer(signal.ITIMER_REAL)[0]
        return self

    def batches(self):
        self.alarm["lines"] = signal.getitimer(signal.ITIMER_REAL)[0]
        return iter([["1"]])


def test_the_duration_starts_when_tracing_starts():
    """bpftrace takes a second or more to attach: `-T` must not count it."""
    session, events = _SlowAttach(), []
    trace.run(_Backend(session), None, FlowFilter.parse(), model.Limits(duration=30), _Sink(),
              summary.Summary(), attached=lambda: events.append(session.alarm.get("lines")))
    assert session.alarm["attach"] == 0.0 and 0 < session.alarm["lines"] <= 30
    assert events == [None]          # `attached()` comes before the first line


def test_the_owners_step_sees_every_event_before_the_count_and_its_drops_are_filtered():
    """The owners learn from every event (a process filter's verdict needs them), so their
    step comes before --count; what the process filter drops is counted as filtered."""
    session = _Session("123456", can_finish=False)
    session.finished = True
    seen = []

    def own(events):
        seen.extend(event.pid for event in events)
        return [event for event in events if event.pid % 2 == 0]
    sink, stats = _Sink(), summary.Summary()
    ended = trace.run(_Backend(session), None, FlowFilter.parse(), model.Limits(count=2), sink,
                      stats, own=own)
    assert ended == "count of 2 events reached"
    assert sink.funcs == ["f2", "f4"] and seen == [1, 2, 3, 4]
    assert stats.filtered == 2 and stats.lines_read == 4
