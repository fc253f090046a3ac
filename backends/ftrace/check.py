"""Whether a host can run the ftrace backend: a tracefs this user can write, and
kprobe_events with struct offsets for its kernel (x86_64), else static tracepoints of
the table. Pure given the host's facts and, for kprobe mode, a way to its layout."""
from legacytrace.backends.base import Availability
from legacytrace.backends.checks import (KPROBE, TRACEPOINT, dynamic_mode, kprobe_events_why,
                                         mode_words)
from legacytrace.errors import LegacytraceError
from legacytrace.kernel import tracepoints


def check(host, layout_for=None):
    """Availability of ftrace on `host`; `layout_for(host)` gives the struct layout that
    kprobe mode needs (None: not asked, as for recorded hosts)."""
    missing = _missing(host)
    if missing:
        return Availability.no("; ".join(missing))
    works = "{}, {}".format(host.tracefs or "tracefs mounted when the trace starts",
                            mode_words(host))
    if dynamic_mode(host) != KPROBE or layout_for is None:
        return Availability.yes(works)
    try:
        layout = layout_for(host)
    except LegacytraceError as err:
        return Availability.no(str(err))
    return Availability.yes("{}; struct offsets from {}".format(works, layout.describe()))


def _missing(host):
    """What keeps ftrace from running here, in words."""
    missing = []
    if not host.root:
        missing.append("needs root to write tracefs")
    elif not (host.tracefs or host.tracefs_mountable):
        missing.append("tracefs is not mounted and could not be mounted: mount -t tracefs "
                       "nodev /sys/kernel/tracing (3.10: debugfs on /sys/kernel/debug)")
    if host.lockdown == "confidentiality":
        missing.append("kernel lockdown (confidentiality) closes tracefs")
    mode = dynamic_mode(host)
    if mode_words(host) is None:
        missing.append("no kprobe_events ({}) and no net/skb tracepoints".format(
            kprobe_events_why(host)))
    elif mode == KPROBE and host.arch != "x86_64":
        missing.append("kprobe fetch args are written for x86_64, not " + host.arch)
    elif mode == TRACEPOINT and not set(tracepoints.TABLE).intersection(host.tracepoints):
        missing.append("no kprobe_events and none of the tracepoints "
                       + ", ".join(tracepoints.TABLE))
    return missing
