"""Whether a host can run the bpf backend: a bpftrace of 0.17 or newer that loads
programs, root, 4.9+, BTF, kprobes or the tracepoints of the table. Pure given the
host's facts."""
import re

from legacytrace.backends.base import Availability
from legacytrace.backends.checks import (TRACEPOINT, answer, dynamic_mode, install_hint,
                                         kprobe_events_why, mode_words)
from legacytrace.kernel import features, tracepoints

#: The oldest bpftrace this backend was tested with (Debian 12's 0.17).
MIN_VERSION = (0, 17)
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text):
    """`bpftrace v0.17.0` -> (0, 17, 0); None when the text holds no version."""
    match = _VERSION_RE.search(text or "")
    if not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


def check(host):
    """Availability of the bpf backend on `host`: what bpftrace needs, then what this
    program needs on top (a bpftrace it was tested with, BTF, the table's tracepoints)."""
    verdict = _requirements(host)
    if not verdict.available:
        return verdict
    version = parse_version(host.bpftrace)
    if version is None or version < MIN_VERSION:
        return Availability.no("bpftrace {} is too old: {} or newer is needed".format(
            host.bpftrace, ".".join(map(str, MIN_VERSION))))
    if not host.btf:
        return Availability.no("the kernel has no BTF (/sys/kernel/btf/vmlinux): the bpf "
                               "program reads struct sk_buff through BTF")
    if dynamic_mode(host) == TRACEPOINT and not (
            set(tracepoints.TABLE) & set(host.tracepoints)):
        return Availability.no("no kprobes, and none of the net/skb tracepoints the "
                               "tracepoint mode uses")
    return verdict


def _requirements(host):
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
    mode = mode_words(host)
    if mode is None:
        missing.append("no kprobes ({}) and no net/skb tracepoints".format(
            kprobe_events_why(host)))
    types = "BTF at {}".format(host.btf) if host.btf else "headers at {}".format(host.kernel_build)
    loads = {True: "loads programs", None: "not tried (not root)"}.get(host.bpftrace_loads)
    return answer(missing, "bpftrace {} ({}), {}; {}".format(host.bpftrace, loads, types, mode))
