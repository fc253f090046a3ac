"""Reading tracefs (backends/ftrace/tracefs.py): trace_pipe's lines and the per-CPU
statistics, on files that stand in for tracefs. The real kernel's side is proved in
tests/lab/test_ftrace.py.
"""
import os

from legacytrace.backends.ftrace import tracefs


def test_read_batches_splits_chunks_and_reports_idle(tmp_path):
    read, write = os.pipe()
    os.set_blocking(read, False)                      # as open_pipe() opens trace_pipe
    os.write(write, b"one\ntw")
    batches = tracefs.read_batches(read, idle=0.01)
    assert next(batches) == ["one"]
    assert next(batches) == []                        # idle: nothing complete yet
    os.write(write, b"o\nthree\nfour\n")
    assert next(batches) == ["two", "three", "four"]  # what the reads returned, at once
    os.close(write)
    assert list(batches) == []
    os.close(read)


def test_a_batch_gathers_reads_until_the_pipe_is_empty(tmp_path, monkeypatch):
    """trace_pipe returns at most a page a read: a batch takes reads until there is no more."""
    monkeypatch.setattr(tracefs, "READ_SIZE", 4)
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.write(write, b"one\ntwo\nthree\n")
    assert next(tracefs.read_batches(read, idle=0.01)) == ["one", "two", "three"]
    os.close(write)
    os.close(read)


def test_cpu_stats(tmp_path):
    cpu = tmp_path / "per_cpu" / "cpu0"
    cpu.mkdir(parents=True)
    cpu.joinpath("stats").write_text("entries: 0\noverrun: 7\ncommit overrun: 0\nbytes: 0\n"
                                     "oldest event ts:     0.000000\ndropped events: 2\n")
    stats = tracefs.Tracefs(str(tmp_path)).cpu_stats(None)
    assert stats == {"cpu0": {"entries": 0, "overrun": 7, "commit overrun": 0, "bytes": 0,
                              "dropped events": 2}}
