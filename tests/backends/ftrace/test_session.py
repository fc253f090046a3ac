"""tracefs writes and the ftrace session's setup/teardown, on a directory that stands in for
tracefs (plain files: what matters here is which file is written how, and in what order).
The real kernel's side is proved in tests/lab/test_ftrace.py."""
import os
import shutil

import pytest

from legacytrace.backends.base import Program
from legacytrace.backends.ftrace import FtraceBackend, tracefs
from legacytrace.backends.ftrace.build import FtracePart
from legacytrace.backends.ftrace.kprobe import Definition
from legacytrace.backends.ftrace.session import FtraceSession, stale
from legacytrace.kernel.host import HostFacts


FOREIGN = "p:otherTool/ip_rcv ip_rcv\n"


class FakeTracefs(tracefs.Tracefs):
    """Records every write; mkdir of an instance creates its event directories, as the kernel does."""

    def __init__(self, root, events, fail_on=None):
        super(FakeTracefs, self).__init__(str(root))
        self.events = events
        self.fail_on = fail_on
        self.log = []

    def _write(self, path, text, flags):
        rel = os.path.relpath(path, self.root)
        self.log.append((rel, text, "append" if flags & os.O_APPEND else "write"))
        if self.fail_on and (self.fail_on in rel or self.fail_on in text):
            raise OSError(16, "Device or resource busy")
        super(FakeTracefs, self)._write(path, text, flags)

    def make_instance(self, name):
        super(FakeTracefs, self).make_instance(name)
        for system, event in self.events:
            make_event_dir(self.event_dir(name, system, event))
        with open(self.path("instances", name, "buffer_size_kb"), "w") as handle:
            handle.write("1408\n")                        # the kernel's default per CPU
        self.log.append(("mkdir " + name, "", ""))

    def remove_instance(self, name):
        shutil.rmtree(self.path("instances", name))    # the kernel removes the files itself
        self.log.append(("rmdir " + name, "", ""))

    def open_pipe(self, instance):
        path = os.path.join(self._dir(instance), "trace_pipe")
        with open(path, "w") as handle:
            handle.write("  ping-1 [000] ..s1. 1.000001: ip_rcv: (ip_rcv+0x0/0x10) skb=0x1 len=0x54\n")
        return os.open(path, os.O_RDONLY)


def make_event_dir(path):
    os.makedirs(path)
    for leaf in ("enable", "filter"):
        with open(os.path.join(path, leaf), "w") as handle:
            handle.write("0\n" if leaf == "enable" else "none\n")


def program(group="legacytrace_lt77", buffer_kb=4096):
    definitions = [Definition("p", "ip_rcv", "ip_rcv", ("skb=%di:x64",), "f_ver >= 64"),
                   Definition("p", "ip_output", "ip_output", ("skb=%dx:x64",), None)]
    part = FtracePart(group, "6.1.0-56-amd64", "btf /sys/kernel/btf/vmlinux", definitions,
                      [(group, d.event, d.filter) for d in definitions], (), None, None)
    return Program("ftrace", "", mode="kprobe", part=part, buffer_kb=buffer_kb)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    (tmp_path / "kprobe_events").write_text(FOREIGN)
    (tmp_path / "instances").mkdir()
    made = []

    def make(fail_on=None):
        fs = FakeTracefs(tmp_path, [("legacytrace_lt77", "ip_rcv"), ("legacytrace_lt77", "ip_output")],
                         fail_on)
        monkeypatch.setattr(tracefs, "Tracefs", lambda root: fs)
        made.append(fs)
        return fs
    return make


def test_session_sets_up_reads_and_tears_down_in_reverse(fake, tmp_path):
    fs = fake()
    session = FtraceSession(program(), root=str(tmp_path))
    with session:
        first = next(line for line in session.lines() if line)
        assert "ip_rcv" in first
    kinds = [entry[0] for entry in fs.log]
    # append-only kprobe_events: the foreign probe is still the first line
    assert (tmp_path / "kprobe_events").read_text().startswith(FOREIGN)
    appended = [text for rel, text, how in fs.log if rel == "kprobe_events"]
    assert all(how == "append" for rel, _, how in fs.log if rel == "kprobe_events")
    assert appended == [d.line("legacytrace_lt77") for d in program().part.definitions] + \
        ["-:legacytrace_lt77/ip_output", "-:legacytrace_lt77/ip_rcv"]
    assert kinds.index("mkdir legacytrace_lt77") < kinds.index("rmdir legacytrace_lt77")
    disables = [i for i, (rel, text, _) in enumerate(fs.log) if rel.endswith("/enable") and text == "0"]
    assert disables and max(disables) < kinds.index("rmdir legacytrace_lt77") < len(kinds) - 2
    assert ("instances/legacytrace_lt77/events/legacytrace_lt77/ip_rcv/filter", "f_ver >= 64",
            "write") in fs.log
    assert ("instances/legacytrace_lt77/trace_clock", "mono", "write") not in fs.log  # no such file here
    session.detach()                                   # idempotent: nothing more happens
    assert fs.log[-1][1] == "-:legacytrace_lt77/ip_rcv"


def test_the_instance_gets_the_programs_buffer_size(fake, tmp_path):
    fs = fake()
    with FtraceSession(program(buffer_kb=256), root=str(tmp_path)):
        pass
    assert ("instances/legacytrace_lt77/buffer_size_kb", "256", "write") in fs.log


def test_failed_attach_undoes_what_was_done(fake, tmp_path):
    fs = fake(fail_on="ip_output/enable")
    session = FtraceSession(program(), root=str(tmp_path))
    with pytest.raises(tracefs.TracefsError) as err:
        with session:
            pass
    assert "ip_output/enable" in str(err.value)
    removed = [text for rel, text, _ in fs.log if text.startswith("-:")]
    assert removed == ["-:legacytrace_lt77/ip_output", "-:legacytrace_lt77/ip_rcv"]
    assert ("rmdir legacytrace_lt77", "", "") in fs.log
    assert not (tmp_path / "instances" / "legacytrace_lt77").exists()


def test_a_refused_probe_is_skipped_with_a_warning(fake, tmp_path, capsys):
    fs = fake(fail_on="ip_output ip_output")          # the kernel refuses this definition
    session = FtraceSession(program(), root=str(tmp_path))
    with session:
        assert session.skipped == ["ip_output"]
    assert "legacytrace: warning: ftrace: ip_output is not traced" in capsys.readouterr().err
    assert not any("ip_output/enable" in rel for rel, _, _ in fs.log)
    assert [text for _, text, _ in fs.log if text.startswith("-:")] == ["-:legacytrace_lt77/ip_rcv"]


def test_every_probe_refused_is_an_error(fake, tmp_path):
    fake(fail_on="kprobe_events")
    with pytest.raises(tracefs.TracefsError) as err:
        with FtraceSession(program(), root=str(tmp_path)):
            pass
    assert "refused every probe (ip_rcv, ip_output)" in str(err.value)


def test_teardown_step_that_fails_warns_and_goes_on(fake, tmp_path, capsys):
    fs = fake()
    session = FtraceSession(program(), root=str(tmp_path))
    session.attach()
    fs.fail_on = "ip_output/enable"
    session.detach()
    assert "disable legacytrace_lt77/ip_output failed" in capsys.readouterr().err
    assert [text for _, text, _ in fs.log if text.startswith("-:")] == \
        ["-:legacytrace_lt77/ip_output", "-:legacytrace_lt77/ip_rcv"]


@pytest.mark.parametrize("finished, lost", [
    (True, {"ring buffer overrun": 2, "ftrace lines unread at stop": 5}),
    (False, {"ring buffer overrun": 2}),          # --count: the rest is not wanted
])
def test_what_the_ring_buffer_still_holds_after_a_stop_is_counted(fake, tmp_path, finished, lost):
    fake()
    session = FtraceSession(program(), root=str(tmp_path))
    with session:
        instance = tmp_path / "instances" / "legacytrace_lt77"
        (instance / "tracing_on").write_text("1\n")
        for cpu, (entries, overrun) in enumerate(((5, 0), (0, 2))):
            (instance / "per_cpu" / "cpu{}".format(cpu)).mkdir(parents=True)
            (instance / "per_cpu" / "cpu{}".format(cpu) / "stats").write_text(
                "entries: {}\noverrun: {}\n".format(entries, overrun))
        if finished:
            assert session.finish()
    assert session.lost == lost


def test_stale_finds_only_dead_owners():
    lines = ["p:legacytrace_lt100/ip_rcv ip_rcv skb=%di", "r16:legacytrace_lt100/x_ret x $retval",
             "p:legacytrace_lt200/ip_rcv ip_rcv", "p:otherTool/ip_rcv ip_rcv",
             "p:legacytrace_ltx/ip_rcv ip_rcv", "p:kprobes/legacytrace_lt100 ip_rcv"]
    found = stale(lines, ["legacytrace_lt100", "legacytrace_lt200", "mine"], lambda pid: pid == 200)
    assert found == [("instance", "legacytrace_lt100"), ("kprobe", "legacytrace_lt100", "ip_rcv"),
                     ("kprobe", "legacytrace_lt100", "x_ret")]


def test_cleanup_removes_dead_runs_only(tmp_path, monkeypatch):
    (tmp_path / "trace").write_text("")
    dead, alive = "legacytrace_lt999999", "legacytrace_lt{}".format(os.getpid())
    (tmp_path / "kprobe_events").write_text(
        "p:{0}/ip_rcv ip_rcv\np:{1}/ip_rcv ip_rcv\n{2}".format(dead, alive, FOREIGN))
    for group in (dead, alive):
        make_event_dir(str(tmp_path / "events" / group / "ip_rcv"))
        (tmp_path / "events" / group / "ip_rcv" / "enable").write_text("1\n")
    make_event_dir(str(tmp_path / "instances" / dead / "events"))
    monkeypatch.setattr("legacytrace.backends.ftrace.session.pid_alive", lambda pid: pid != 999999)
    monkeypatch.setattr(tracefs.Tracefs, "remove_instance",
                        lambda self, name: shutil.rmtree(self.path("instances", name)))
    host = HostFacts(release="6.1.0", root=True, tracefs=str(tmp_path))
    backend = FtraceBackend(layout_for=None)
    assert backend.leftovers(host) == ["tracefs instance " + dead, "kprobe event {}/ip_rcv".format(dead)]
    assert backend.cleanup(host) == ["tracefs instance " + dead, "kprobe event {}/ip_rcv".format(dead)]
    text = (tmp_path / "kprobe_events").read_text()
    assert text.endswith("-:{}/ip_rcv\n".format(dead)) and FOREIGN in text
    assert (tmp_path / "events" / dead / "ip_rcv" / "enable").read_text().startswith("0")
    assert (tmp_path / "events" / alive / "ip_rcv" / "enable").read_text() == "1\n"
    assert not (tmp_path / "instances" / dead).exists()
