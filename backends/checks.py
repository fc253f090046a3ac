"""What the backends' checks share, worded for the user: how to install a package on
this distribution, why there are no kprobe_events, and how ftrace and bpf attach.

Each backend's own check is `backends/<name>/check.py`: pure given a
`legacytrace.kernel.host.HostFacts`, so selection can be tested with recorded hosts.
`dynamic_mode(host)` says how the ftrace and bpf backends attach on a host:
"kprobe" (kernel functions), "tracepoint" (static net/skb tracepoints only, on a
kernel without kprobes), or None.
"""
import collections

from legacytrace.backends.base import Availability

KPROBE = "kprobe"
TRACEPOINT = "tracepoint"

# Package names per distribution family: (yum family, apt family).
_PACKAGES = {
    "systemtap": ("systemtap systemtap-runtime", "systemtap"),
    "headers": ("kernel-devel-{release}", "linux-headers-{release}"),
    "gcc": ("gcc", "gcc"),
    "bpftrace": ("bpftrace", "bpftrace"),
}
_YUM_IDS = ("rhel", "centos", "fedora", "rocky", "almalinux", "ol", "amzn")
_APT_IDS = ("debian", "ubuntu")


def install_hint(host, what):
    """The command that installs `what` ("systemtap", "headers", "gcc", "bpftrace") on this distribution."""
    yum, apt = _PACKAGES[what]
    ids = host.distro_ids or []
    if any(i in _YUM_IDS for i in ids):
        return "yum install " + yum.format(release=host.release)
    if any(i in _APT_IDS for i in ids):
        return "apt-get install " + apt.format(release=host.release)
    return "install " + apt.format(release=host.release)


def kprobe_events_why(host):
    """Why there is no kprobe_events file, in words; the kernel config gives the precise cause."""
    if host.config("CONFIG_KPROBES") == "n":
        return "kernel built without CONFIG_KPROBES, so without CONFIG_KPROBE_EVENTS ({})".format(
            host.kernel_config_source)
    if host.config("CONFIG_KPROBE_EVENTS") == "n":
        return "kernel built without CONFIG_KPROBE_EVENTS ({})".format(host.kernel_config_source)
    if host.kprobe_events is None:
        return "unknown: the tracing directory could not be read"
    return "no kprobe_events file in {}".format(host.tracefs)


def dynamic_mode(host):
    """How ftrace and bpf attach here: KPROBE, TRACEPOINT (no kprobes, static tracepoints), or None."""
    if host.kprobe_events or host.kprobe_pmu:
        return KPROBE
    if host.tracepoints:
        return TRACEPOINT
    return None


def mode_words(host):
    """The attach mode of ftrace/bpf in words, or None when neither kprobes nor tracepoints exist."""
    mode = dynamic_mode(host)
    if mode == KPROBE:
        syntax = ", ".join(host.kprobe_syntax) or "baseline syntax only"
        return "kprobe mode (kprobe_events; {})".format(syntax)
    if mode == TRACEPOINT:
        systems = collections.OrderedDict((name.split(":")[0], None) for name in host.tracepoints)
        return "tracepoint mode (no kprobe_events: {} tracepoints in {})".format(
            len(host.tracepoints), ", ".join(systems))
    if not host.tracefs or host.kprobe_events is None:
        return "kprobes or tracepoints: known once tracefs is mounted and read as root"
    return None


def answer(missing, works):
    if missing:
        return Availability.no("; ".join(missing))
    return Availability.yes(works)
