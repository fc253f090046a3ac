"""The trace loop's pure helpers: rate limiting and the signal-to-Stop bridge."""
import os
import signal

import pytest

from legacytrace import trace


def test_rate_limit_counts_per_second_window():
    now = [100.2]
    limit = trace.RateLimit(2, clock=lambda: now[0])
    assert [limit.allow() for _ in range(3)] == [True, True, False]
    now[0] = 101.0
    assert limit.allow()


def test_sigterm_becomes_stop_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(trace.Stop, match="SIGTERM"):
        with trace.stop_on_signals() as stopping:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
    assert stopping  # a second signal during cleanup would have been ignored
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_signal_during_cleanup_is_ignored():
    with pytest.raises(trace.Stop):
        with trace.stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                signal.pause()
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # arrives while "detaching": no raise


def test_duration_alarm_stops():
    with pytest.raises(trace.Stop, match="duration of 0.05 s reached"):
        with trace.stop_on_signals(duration=0.05):
            signal.pause()
