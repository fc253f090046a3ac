"""Command lines by (pid, start time): reuse, exit, kernel threads, bounds, interrupt context."""
import subprocess
import sys
import time

import psutil
import pytest

from legacytrace.model import FlowEvent
from legacytrace.procinfo import CmdlineCache


class FakeProcesses(object):
    """Stands in for psutil.Process over a table pid -> (start time, argv, name)."""

    def __init__(self):
        self.table = {}
        self.lookups = 0
        self.denied = set()
        self.zombies = set()
        self.parents = {}

    def __call__(self, pid):
        self.lookups += 1
        if pid not in self.table:
            raise psutil.NoSuchProcess(pid)
        return FakeProcess(self, pid)


class FakeProcess(object):
    def __init__(self, processes, pid):
        self._processes = processes
        self.pid = pid

    def create_time(self):
        if self.pid in self._processes.denied:
            raise psutil.AccessDenied(self.pid)
        return self._processes.table[self.pid][0]

    def cmdline(self):
        if self.pid in self._processes.zombies:
            raise psutil.ZombieProcess(self.pid)
        return list(self._processes.table[self.pid][1])

    def name(self):
        return self._processes.table[self.pid][2]

    def ppid(self):
        return self._processes.parents.get(self.pid, 1)


class Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def fake():
    processes, clock = FakeProcesses(), Clock()
    cache = CmdlineCache(maxsize=3, recheck=1.0, clock=clock, process=processes)
    return cache, processes, clock


def test_command_line_is_argv_joined(fake):
    cache, processes, _ = fake
    processes.table[4242] = (1.5, ["ping", "-c", "1", "10.0.2.2"], "ping")
    assert cache.get(4242) == "ping -c 1 10.0.2.2"


def test_kernel_thread_gets_ps_notation(fake):
    cache, processes, _ = fake
    processes.table[2] = (0.1, [], "kthreadd")
    processes.table[9] = (0.1, [], "ksoftirqd/0")
    processes.parents[9] = 2
    assert (cache.get(2), cache.get(9)) == ("[kthreadd]", "[ksoftirqd/0]")


def test_an_exiting_process_without_argv_is_no_kernel_thread(fake):
    """A process on its way out has no argv left (seen in the lab: curl as "[curl]")."""
    cache, processes, _ = fake
    processes.table[700] = (1.0, [], "curl")
    assert cache.get(700) is None


def test_lookups_are_cached_until_recheck(fake):
    cache, processes, clock = fake
    processes.table[10] = (1.0, ["a"], "a")
    assert [cache.get(10) for _ in range(100)] == ["a"] * 100
    assert processes.lookups == 1
    clock.now += 1.5
    assert cache.get(10) == "a"
    assert processes.lookups == 2


def test_reused_pid_is_not_given_the_old_command_line(fake):
    cache, processes, clock = fake
    processes.table[10] = (1.0, ["old", "process"], "old")
    assert cache.get(10) == "old process"
    processes.table[10] = (7.0, ["new", "process"], "new")
    clock.now += 2
    assert cache.get(10) == "new process"


def test_same_process_keeps_its_command_line_without_rereading(fake):
    cache, processes, clock = fake
    processes.table[10] = (1.0, ["first"], "first")
    cache.get(10)
    processes.table[10] = (1.0, ["changed", "argv"], "first")
    clock.now += 2
    assert cache.get(10) == "first"


def test_exited_process_keeps_its_last_command_line(fake):
    cache, processes, clock = fake
    processes.table[10] = (1.0, ["ping", "-c1", "x"], "ping")
    cache.get(10)
    del processes.table[10]
    clock.now += 2
    assert cache.get(10) == "ping -c1 x"


def test_never_seen_exited_process_is_none_and_not_looked_up_again_at_once(fake):
    cache, processes, clock = fake
    assert cache.get(99) is None
    assert cache.get(99) is None
    assert processes.lookups == 1
    processes.table[99] = (5.0, ["later"], "later")
    clock.now += 2
    assert cache.get(99) == "later"


def test_zombie_and_denied_are_none(fake):
    cache, processes, _ = fake
    processes.table[11] = (1.0, ["z"], "z")
    processes.zombies.add(11)
    processes.table[12] = (1.0, ["d"], "d")
    processes.denied.add(12)
    assert cache.get(11) is None
    assert cache.get(12) is None


def test_size_is_bounded_least_recently_used_first(fake):
    cache, processes, _ = fake
    for pid in (1, 2, 3, 4):
        processes.table[pid] = (1.0, ["p{}".format(pid)], "p")
    cache.get(1), cache.get(2), cache.get(3)
    cache.get(1)            # 2 is now the least recently used
    cache.get(4)            # evicts 2
    before = processes.lookups
    cache.get(1), cache.get(3), cache.get(4)
    assert processes.lookups == before
    cache.get(2)
    assert processes.lookups == before + 1


def event(**values):
    base = dict(backend="ftrace", source="kprobe", time_ns=1, cpu=0, func="ip_output",
                pid=4242, tid=4242, comm="ping")
    base.update(values)
    return FlowEvent(**base)


def test_enrich_fills_task_context_only_and_looks_each_pid_up_once(fake):
    cache, processes, _ = fake
    processes.table[4242] = (1.0, ["ping", "x"], "ping")
    events = [event(), event(time_ns=2)]
    events += [event(context=context) for context in ("softirq", "hardirq", "nmi")]
    events += [event(pid=0, comm="swapper/0"), event(pid=None),
               event(cmdline="from the mechanism")]
    enriched = cache.enrich_all(events)
    assert [ev.cmdline for ev in enriched] == ["ping x", "ping x"] + [None] * 5 + [
        "from the mechanism"]
    assert [ev._replace(cmdline=None) for ev in enriched[:2]] == events[:2]
    assert enriched[2:] == events[2:]
    assert processes.lookups == 1


def test_enrich_names_a_task_the_mechanism_could_not_name(fake):
    """ftrace prints "<...>" for a task its comm cache has not seen (the parser's None)."""
    cache, processes, _ = fake
    processes.table[4242] = (1.0, ["ping", "x"], "ping")
    processes.table[7] = (1.0, ["python3", "-m", "a"], "a-name-longer-than-comm")
    enriched = cache.enrich_all([event(comm=None), event(pid=7, tid=7, comm=None),
                                 event(comm=None, context="softirq")])
    assert [(ev.comm, ev.cmdline) for ev in enriched] == [
        ("ping", "ping x"), ("a-name-longer-t", "python3 -m a"), (None, None)]


def test_enrich_gives_the_owner_its_command_line_in_any_context(fake):
    """A received packet (softirq) gets no command line of the interrupted task, but its
    owner's; an owner learnt from a "<...>" event gets its comm; one lookup per pid."""
    cache, processes, _ = fake
    processes.table[4242] = (1.0, ["ping", "x"], "ping")
    processes.table[812] = (1.0, ["nginx", "-g", "daemon off;"], "nginx")
    enriched = cache.enrich_all([
        event(context="softirq", owner_pid=812, owner_comm="nginx"),
        event(owner_pid=812, owner_comm=None), event(owner_pid=4242, owner_comm="ping")])
    assert [(ev.cmdline, ev.owner_comm, ev.owner_cmdline) for ev in enriched] == [
        (None, "nginx", "nginx -g daemon off;"), ("ping x", "nginx", "nginx -g daemon off;"),
        ("ping x", "ping", "ping x")]
    assert processes.lookups == 2


def test_real_process_and_its_exit():
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "legacytrace-procinfo-test"]
    child = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).cmdline() != argv and time.monotonic() < deadline:
            time.sleep(0.01)    # until the child has exec'd (before, it shows our argv)
        cache = CmdlineCache(recheck=0.0)
        assert cache.get(child.pid) == " ".join(argv)
    finally:
        child.kill()
        child.wait()
    assert cache.get(child.pid) == " ".join(argv)
    assert CmdlineCache().get(child.pid) is None


def test_real_own_process():
    cache = CmdlineCache()
    assert cache.get(psutil.Process().pid) == " ".join(psutil.Process().cmdline())
