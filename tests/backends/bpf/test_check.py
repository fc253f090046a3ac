"""Whether a host can run the bpf backend (backends/bpf/check.py), on recorded facts."""
import pytest

from . import DEV_618, LAB_61
from legacytrace import backends
from legacytrace.kernel.host import HostFacts


def check(**changes):
    return backends.get("bpf").check(HostFacts(**dict(DEV_618, **changes)))


def test_check_says_yes_here_in_tracepoint_mode_and_in_the_lab_with_kprobes():
    assert check().available and "tracepoint mode" in check().reason
    lab = backends.get("bpf").check(HostFacts(**LAB_61))
    assert lab.available and "kprobe mode" in lab.reason


@pytest.mark.parametrize("changes, words", [
    ({"bpftrace": None}, "bpftrace not installed"),
    ({"bpftrace": "0.14.0"}, "bpftrace 0.14.0 is too old: 0.17 or newer"),
    ({"root": False}, "needs root"),
    ({"btf": None, "kernel_build": "/usr/src/linux-headers-6.18"}, "has no BTF"),
    ({"tracepoints": ["net:napi_gro_frags_exit"]}, "none of the net/skb tracepoints"),
    ({"bpftrace_loads": False, "bpftrace_error": "ERROR: x"}, "cannot load a program here"),
])


def test_check_says_no_with_the_reason(changes, words):
    verdict = check(**changes)
    assert not verdict.available and words in verdict.reason
