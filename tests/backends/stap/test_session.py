"""Running a SystemTap module (backends/stap/session.py) with stand-ins for staprun: the
backlog between staprun and the parser, a stop that kills a staprun that does not end,
the leftovers of killed runs and their cleanup.
"""
import os
import subprocess
import threading

import pytest

from legacytrace.backends import stap
from legacytrace.backends.base import Program
from legacytrace.backends.stap import cache as stap_cache, session as stap_session
from legacytrace.errors import UsageError
from legacytrace.kernel.host import HostFacts


CAPTURE = "explore-6.1.0-56-amd64.txt"


@pytest.fixture
def lines(datadir):
    return (datadir / "stap" / CAPTURE).read_text().splitlines()


@pytest.mark.parametrize("buffer_kb, megabytes", [(4, "1"), (4096, "4"), (4097, "5"),
                                                   (1048576, "1024")])
def test_the_buffer_size_is_stapruns_b_in_whole_megabytes(buffer_kb, megabytes):
    program = Program("stap", "", buffer_kb=buffer_kb)
    assert stap_session.buffer_args(program) == ["-b", megabytes]


def test_the_backlog_between_staprun_and_the_parser_counts_what_it_drops(monkeypatch):
    """The reader thread's bookkeeping, without staprun: lines beyond the backlog are
    counted, damaged ones too, and a stop after finish() leaves the rest to detach."""
    monkeypatch.setenv(stap_session.BACKLOG_ENV, "3")
    session = stap_session.StapSession(None)
    event = "LT1\tE\t{}"
    session._put([event.format(1), event.format(2)])
    session._put([event.format(3), "LT1\tL\tfault\t2"])          # 4 lines > 3: dropped
    session._put(["t\0\0\0" + event.format(4)])
    assert session.lost == {"stap lines the parser fell behind on": 1, "stap fault": 2,
                            "stap damaged lines": 1}
    taken = session._take(until=0)     # a deadline in the past: nothing
    assert list(taken) == []
    session._eof.set()
    assert list(session._take()) == [[event.format(1), event.format(2)],
                                     ["t\0\0\0" + event.format(4)]]


def test_lines_the_module_printed_and_staprun_never_passed_on_are_counted():
    """The module's S line counts the E lines it printed; each one that did not come through,
    and was not a damaged line (counted as that), was lost in SystemTap's transport."""
    session = stap_session.StapSession(None)
    event = "LT1\tE\t{}"
    session._put([event.format(1), "t\0\0\0" + event.format(2), "LT1\tC\t3", "LT1\tS\t6"])
    session._count_undelivered()
    assert (session.received, session.sent, session.caught) == (2, 6, 3)
    assert session.lost == {"stap damaged lines": 1, "stap lines its transport lost": 3}


@pytest.mark.parametrize("capture, lost", [
    ("lab-manifest-generic-6.1.0-57-amd64.txt", {}),
    ("lab-transport-lost-5.10.0-46-amd64.txt", {"stap lines its transport lost": 3}),
])
def test_a_real_trace_counts_what_its_transport_lost(datadir, capture, lost):
    """Captures of the lab (tests/data/stap/README.md): a whole one, and one that lost 3 lines
    after a CPU's first 4 KiB sub-buffer (staprun's own report said 1 transport failure)."""
    session = stap_session.StapSession(None)
    session._put((datadir / "stap" / capture).read_text().splitlines())
    session._count_undelivered()
    assert session.lost == lost


def test_without_the_modules_count_a_stop_says_that_transport_losses_are_unknown(capsys):
    session = stap_session.StapSession(None)
    session._put(["LT1\tE\t1"])
    session._count_undelivered()
    assert session.lost == {}
    assert "lines SystemTap's transport lost, if any, are not counted" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e3"])
def test_a_bad_backlog_setting_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(stap_session.BACKLOG_ENV, value)
    with pytest.raises(UsageError, match="LEGACYTRACE_STAP_BACKLOG"):
        stap_session.StapSession(None)


def test_a_staprun_that_does_not_end_is_killed_and_the_stop_goes_on(monkeypatch, capsys):
    """A stop waits STOP_TIMEOUT for staprun (unloading can hang), then kills it and says so:
    the trace ends instead of waiting for ever."""
    monkeypatch.setattr(stap_session, "STOP_TIMEOUT", 0.5)
    session = stap_session.StapSession(None)
    session.proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 600"])
    proc = session.proc
    for name in ("_stdout_thread", "_stderr_thread"):
        setattr(session, name, threading.Thread(target=lambda: None))
        getattr(session, name).start()
    session._eof.set()
    assert list(session.lines()) == []          # EOF, staprun still running: no hang
    session.detach()
    assert proc.returncode == -9
    assert "staprun did not end within 0.5 s of SIGTERM and was killed" in capsys.readouterr().err


LIVE = {200: "staprun -R /root/.cache/legacytrace/stap/0123/lt_0123456789abcdef.ko",
        300: "stapio /tmp/lt_icmp.ko"}


def test_leftovers_are_our_modules_that_no_staprun_runs(monkeypatch):
    loaded = ["lt_0123456789ab_100", "lt_0123456789ab_200", "lt_icmp", "lt_udp",
              "nf_tables", "stap_0123456789abcdef_400"]
    monkeypatch.setattr(stap_session, "_loaded_modules", lambda: list(loaded))
    monkeypatch.setattr(stap_session, "_stapruns", lambda: dict(LIVE))
    assert stap.StapBackend().leftovers(HostFacts(release="6.1.0-56-amd64")) == [
        "lt_0123456789ab_100", "lt_udp"]


def test_cleanup_unloads_only_leftovers(monkeypatch):
    loaded = ["lt_0123456789ab_100", "lt_0123456789ab_200"]
    commands = []

    def fake_call(argv, cwd=None):
        commands.append(argv)
        loaded.remove(argv[-1])
        return stap_cache._Result(0, "")

    monkeypatch.setattr(stap_session, "_loaded_modules", lambda: list(loaded))
    monkeypatch.setattr(stap_session, "_stapruns", lambda: dict(LIVE))
    monkeypatch.setattr(stap_cache, "call", fake_call)
    removed = stap.StapBackend().cleanup(HostFacts(release="6.1.0-56-amd64"))
    assert removed == ["lt_0123456789ab_100"]
    assert commands == [["staprun", "-d", "lt_0123456789ab_100"]]


def test_stapruns_reads_proc():
    assert os.getpid() not in stap_session._stapruns()   # this is python, not staprun
