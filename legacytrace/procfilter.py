"""The process filter: which processes' packets a trace keeps (bcc's `-p/--pid PID`, `--comm`).

An event is a process's when it ran in that process's task (its pid, thread group id, or
comm), or when that process owns the packet's socket (owner_pid, owner_comm: a received
packet, handled in softirq context on behalf of whatever task was interrupted). The
backends filter in the kernel only what they can decide there, task-context events by
pid and comm, and pass every interrupt-context event up; user space decides the rest
once the owner is known (`matches`).
"""
from legacytrace import validate


class ProcessFilter(object):
    """`pids` (thread group ids) and `comms` (at most 15 characters each), both checked by
    legacytrace.validate. `threads`: the thread ids the pids had when the trace was built,
    for a mechanism that can only filter by thread (ftrace's common_pid); the pids
    themselves when not known (a program built for another host)."""

    __slots__ = ("pids", "comms", "threads")

    def __init__(self, pids=(), comms=(), threads=None):
        self.pids = frozenset(pids)
        self.comms = frozenset(comms)
        self.threads = frozenset(self.pids if threads is None else threads)

    @classmethod
    def parse(cls, pids=(), comms=()):
        """From command-line text; UsageError naming a value that is no pid or comm."""
        return cls([validate.pid_text(text) for text in pids],
                   [validate.comm(text) for text in comms])

    def is_empty(self):
        return not (self.pids or self.comms)

    def matches(self, event):
        """True when `event` is one of these processes' (see the module docstring)."""
        if event.context == "task" and (event.pid in self.pids or event.comm in self.comms):
            return True
        return event.owner_pid in self.pids or event.owner_comm in self.comms

    def describe(self):
        """The filter in words: "pid 812 or comm nginx"."""
        return " or ".join(["pid {}".format(pid) for pid in sorted(self.pids)]
                           + ["comm {}".format(comm) for comm in sorted(self.comms)])
