"""Which process an event belongs to: command lines from /proc, through psutil.

A probe sees the pid and comm of the task it ran in. That task owns the packet
only when the probe ran in task context: in softirq, hardirq or NMI context the
kernel borrowed whatever task happened to be on the CPU (docs/kernel-facts.md,
"kprobe_events"), so such events never get a command line.

Looking a pid up costs about 40 us (psutil reads /proc/PID/stat to learn the
start time) and events arrive by the hundred thousand, so a pid's identity is
re-checked at most once per `recheck` seconds. The identity is (pid, start
time): when the pid now belongs to a process started later than the one we
cached, the cached command line is dropped instead of being given to the
newcomer. When the pid is free again (the process exited), the last process
seen with it is still the best answer: pids are handed out cyclically, so it
has not been reused since. A process first looked up on its way out has no argv
left: nobody can tell its command line then.
"""
import collections
import time

import psutil

from legacytrace.errors import LegacytraceError
from legacytrace.model import EVENT_FIELDS, FlowEvent

_CMDLINE = EVENT_FIELDS.index("cmdline")
_COMM = EVENT_FIELDS.index("comm")
_OWNER_CMDLINE = EVENT_FIELDS.index("owner_cmdline")
_OWNER_COMM = EVENT_FIELDS.index("owner_comm")
_new_event = tuple.__new__
#: The kernel keeps a task's comm in 16 bytes with its NUL (TASK_COMM_LEN).
COMM_MAX = 15
_UNKNOWN = (None, None)


class CmdlineCache(object):
    """Command lines and names by (pid, start time), bounded to the `maxsize` most recently
    used pids.

    `process` is the psutil.Process constructor and `clock` a monotonic clock
    in seconds; tests replace them.
    """

    def __init__(self, maxsize=4096, recheck=1.0, clock=time.monotonic, process=psutil.Process):
        self._maxsize = maxsize
        self._recheck = recheck
        self._clock = clock
        self._process = process
        # pid -> [checked at (clock), start time or None when unknown, (command line, name)]
        self._entries = collections.OrderedDict()

    def get(self, pid):
        """The command line of process `pid` as one string, or None when nobody can tell.

        Kernel threads have no command line; they get ps's notation, "[kthreadd]".
        """
        return self.identity(pid)[0]

    def identity(self, pid):
        """(command line, name as the kernel's comm) of process `pid`; None for what nobody
        can tell."""
        now = self._clock()
        entry = self._entries.get(pid)
        if entry is not None:
            self._entries.move_to_end(pid)
            if now - entry[0] < self._recheck:
                return entry[2]
            entry[0] = now
        try:
            proc = self._process(pid)
            started = proc.create_time()
            if entry is not None and entry[1] == started:
                return entry[2]
            found = (_cmdline(proc), proc.name()[:COMM_MAX])
        except psutil.NoSuchProcess:
            # Exited (or a zombie, whose /proc/PID/cmdline is empty): keep what we knew.
            if entry is None:
                self._store(pid, [now, None, _UNKNOWN])
                return _UNKNOWN
            return entry[2]
        except psutil.AccessDenied:
            found, started = _UNKNOWN, None
        self._store(pid, [now, started, found])
        return found

    def enrich_all(self, events):
        """`events` with the command line, and the comm where the mechanism could not name it
        (ftrace's "<...>": a task its comm cache had not seen yet), of each task-context
        event's process, and the same of the process that owns its packet (owner_cmdline,
        owner_comm); each pid is looked up once per batch, not once per event.

        Interrupt-context events keep None: the interrupted task is not the owner.
        """
        known = {}
        out = []
        for ev in events:
            pid = ev.pid
            if (ev.cmdline is None or ev.comm is None) and ev.context == "task" and pid and pid > 0:
                found = known[pid] if pid in known else known.setdefault(pid, self.identity(pid))
                ev = _filled(ev, found, _CMDLINE, _COMM)
            owner = ev.owner_pid
            if owner is not None and (ev.owner_cmdline is None or ev.owner_comm is None):
                found = known[owner] if owner in known else known.setdefault(
                    owner, self.identity(owner))
                ev = _filled(ev, found, _OWNER_CMDLINE, _OWNER_COMM)
            out.append(ev)
        return out

    def _store(self, pid, entry):
        self._entries[pid] = entry
        self._entries.move_to_end(pid)
        while len(self._entries) > self._maxsize:
            self._entries.popitem(last=False)


def _filled(ev, found, cmdline_at, comm_at):
    """`ev` with the command line and comm of `found` at those positions where it has none."""
    cmdline, comm = found
    if (cmdline is None or ev[cmdline_at] is not None) and (comm is None or ev[comm_at] is not None):
        return ev
    values = list(ev)
    if values[cmdline_at] is None:
        values[cmdline_at] = cmdline
    if values[comm_at] is None:
        values[comm_at] = comm
    return _new_event(FlowEvent, values)


#: kthreadd's pid: it and its children, the kernel threads, have no argv.
KTHREADD = 2


def _cmdline(proc):
    """`proc`'s argv joined by spaces; "[name]" for a kernel thread; None for a process that
    is exiting (its argv went with its memory: it is no kernel thread for that)."""
    args = proc.cmdline()
    if args:
        return " ".join(args)
    if proc.pid == KTHREADD or proc.ppid() == KTHREADD:
        return "[{}]".format(proc.name())
    return None


def threads_of(pids, process=psutil.Process):
    """The thread ids of processes `pids` now; LegacytraceError naming a pid that is not a
    running process here (a process filter on it would show nothing)."""
    found = set()
    for pid in sorted(pids):
        try:
            found.update(thread.id for thread in process(pid).threads())
        except psutil.NoSuchProcess:
            raise LegacytraceError("no process {} is running here: give -p the pid of a "
                                   "running process (or --comm its name)".format(pid))
        except psutil.AccessDenied:
            found.add(pid)
    return found
