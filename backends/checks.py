"""What each mechanism needs from a host, in one place, worded for the user.

`stap(host)`, `ftrace(host)` and `bpf(host)` take a `legacytrace.kernel.host.HostFacts`
and return an `Availability` whose reason says what works, or everything that is
missing and how to get it. They are pure, so selection can be tested with recorded
hosts, and they import no backend module: the backends' `check()` delegates here.

`dynamic_mode(host)` says how the ftrace and bpf backends attach on a host:
"kprobe" (kernel functions), "tracepoint" (static net/skb tracepoints only, on a
kernel without kprobes), or None.
"""
import collections

from legacytrace.kernel import features
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


def _mode_words(host):
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


def _answer(missing, works):
    if missing:
        return Availability.no("; ".join(missing))
    return Availability.yes(works)


def stap(host, cached=0):
    """SystemTap: stap, kprobes, modules, root; and to compile, the kernel's headers and a C compiler.

    `cached` counts the modules already compiled for this release (the stap backend's
    module cache): without headers or compiler here, stap still runs those, and modules
    built elsewhere with `legacytrace build` (`trace --stap-module`) need staprun alone.
    """
    missing = []
    if not host.stap:
        missing.append("stap not installed ({})".format(install_hint(host, "systemtap")))
    kernel = []             # what no package or module built elsewhere can change
    if host.kprobes is False:
        kernel.append("kernel built without CONFIG_KPROBES")
    if host.modules is False:
        kernel.append("kernel cannot load modules (built without CONFIG_MODULES)")
    if host.lockdown in ("integrity", "confidentiality"):
        kernel.append("kernel lockdown ({}) refuses unsigned modules".format(host.lockdown))
    if kernel:
        return Availability.no("; ".join(missing + kernel))
    if not host.root:
        missing.append("loading a module needs root (run with sudo)")
    compiler = []
    if not host.kernel_build:
        compiler.append("no kernel headers for {} ({})".format(
            host.release, install_hint(host, "headers")))
    if not host.cc:
        compiler.append("no C compiler ({})".format(install_hint(host, "gcc")))
    if compiler and cached and not missing:
        return Availability.yes("stap {} runs the {} module(s) compiled before for {}, and modules "
                                "built elsewhere (--stap-module); it cannot compile new ones: {}"
                                .format(host.stap, cached, host.release, "; ".join(compiler)))
    if compiler and not missing:
        compiler.append("or build the module on a host that has them (`legacytrace build -r {} "
                        "-o lt_NAME.ko`) and run it here with `trace --stap-module lt_NAME.ko`"
                        .format(host.release))
    return _answer(missing + compiler, "stap {} builds against {} with {}".format(
        host.stap, host.kernel_build, host.cc))


def ftrace(host):
    """ftrace: a tracefs (mounted, or mountable as root), root to write it, kprobe_events or tracepoints."""
    missing = []
    if not host.tracefs and not host.tracefs_mountable:
        missing.append("no tracefs mounted, and mounting one needs root" if not host.root
                       else "kernel has neither tracefs nor debugfs (built without CONFIG_FTRACE)")
    elif not host.root:
        missing.append("writing to tracefs needs root (run with sudo)")
    if host.lockdown == "confidentiality":
        missing.append("kernel lockdown (confidentiality) closes tracefs")
    mode = _mode_words(host)
    if mode is None:
        missing.append("no kprobe_events ({}) and no net/skb tracepoints".format(
            kprobe_events_why(host)))
    where = host.tracefs or "tracefs mounted when the trace starts"
    return _answer(missing, "{}, {}".format(where, mode))


def bpf(host):
    """bpf: a bpftrace that loads programs, root, 4.9+, BTF or headers, kprobes or tracepoints."""
    missing = []
    if not host.bpftrace:
        missing.append("bpftrace not installed ({})".format(install_hint(host, "bpftrace")))
    if host.kernel.version < features.BPFTRACE_KERNEL_MIN:
        missing.append("kernel {} is older than bpftrace's minimum {}.{}{}".format(
            host.release, features.BPFTRACE_KERNEL_MIN[0], features.BPFTRACE_KERNEL_MIN[1],
            " (EL7's backported eBPF runs bpftrace's kprobes, but the bpf backend is not proven "
            "there: use stap or ftrace)" if host.kernel.el == 7 else ""))
    if not host.root:
        missing.append("loading BPF programs needs root (run with sudo)")
    if not host.btf and not host.kernel_build:
        missing.append("no BTF and no kernel headers ({}): bpftrace cannot read struct "
                       "sk_buff".format(install_hint(host, "headers")))
    if host.bpftrace_loads is False:
        missing.append("bpftrace cannot load a program here: {}".format(host.bpftrace_error))
    if host.lockdown == "confidentiality":
        missing.append("kernel lockdown (confidentiality) refuses BPF reads of kernel memory")
    mode = _mode_words(host)
    if mode is None:
        missing.append("no kprobes ({}) and no net/skb tracepoints".format(
            kprobe_events_why(host)))
    types = "BTF at {}".format(host.btf) if host.btf else "headers at {}".format(host.kernel_build)
    loads = {True: "loads programs", None: "not tried (not root)"}.get(host.bpftrace_loads)
    return _answer(missing, "bpftrace {} ({}), {}; {}".format(host.bpftrace, loads, types, mode))


#: name -> check, in the registry's order.
CHECKS = collections.OrderedDict([("stap", stap), ("ftrace", ftrace), ("bpf", bpf)])
