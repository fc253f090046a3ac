"""Reading tracefs (backends/ftrace/tracefs.py): trace_pipe's lines and the per-CPU
statistics, on files that stand in for tracefs. The real kernel's side is proved in
tests/lab/test_ftrace.py.
"""
import os

from legacytrace.backends.ftrace import tracefs


def test_read_lines_splits_chunks_and_reports_idle(tmp_path):
    read, write = os.pipe()
    os.set_blocking(read, False)                      # as open_pipe() opens trace_pipe
    os.write(write, b"one\ntw")
    lines = tracefs.read_lines(read, idle=0.01)
    assert next(lines) == "one"
    assert next(lines) == ""                          # idle: nothing complete yet
    os.write(write, b"o\n")
    assert next(lines) == "two"
    os.close(write)
    assert list(lines) == []
    os.close(read)


def test_cpu_stats(tmp_path):
    cpu = tmp_path / "per_cpu" / "cpu0"
    cpu.mkdir(parents=True)
    cpu.joinpath("stats").write_text("entries: 0\noverrun: 7\ncommit overrun: 0\nbytes: 0\n"
                                     "oldest event ts:     0.000000\ndropped events: 2\n")
    stats = tracefs.Tracefs(str(tmp_path)).cpu_stats(None)
    assert stats == {"cpu0": {"entries": 0, "overrun": 7, "commit overrun": 0, "bytes": 0,
                              "dropped events": 2}}
