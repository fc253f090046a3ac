"""What the backends' checks share (backends/checks.py): install hints, why there are
no kprobe_events, how ftrace and bpf attach.
"""
from conftest import pure_checks, recorded as facts
from legacytrace import select
from legacytrace.backends import checks


SHARED = pure_checks()



def availability(host):
    return dict((name, a.available) for name, a in select.assess(host, SHARED))


def test_tracefs_not_mounted_but_mountable():
    host = facts("deb10-4.19", tracefs=None, kprobe_events=None, kprobe_syntax=[], tracepoints=[],
                 kernel_build=None)
    name, reason, _ = select.choose(host, check=SHARED)
    assert name == "ftrace"
    assert "tracefs mounted when the trace starts" in reason
    host = facts("deb10-4.19", tracefs=None, tracefs_mountable=False, root=False)
    assert availability(host)["ftrace"] is False


def test_kprobe_events_why():
    assert checks.kprobe_events_why(facts("fc-6.18")) == (
        "kernel built without CONFIG_KPROBES, so without CONFIG_KPROBE_EVENTS (/proc/config.gz)")
    host = facts("fc-6.18", kernel_config=None, kernel_config_source=None)
    assert checks.kprobe_events_why(host) == "no kprobe_events file in /sys/kernel/tracing"


def test_install_hints_follow_the_distribution():
    assert checks.install_hint(facts("el7-3.10"), "systemtap") == "yum install systemtap systemtap-runtime"
    assert checks.install_hint(facts("fc-6.18"), "headers") == (
        "apt-get install linux-headers-6.18.44-fc-v669")


def test_how_ftrace_and_bpf_attach():
    assert checks.dynamic_mode(facts("lab-6.1")) == checks.KPROBE
    assert checks.dynamic_mode(facts("fc-6.18")) == checks.TRACEPOINT
    assert checks.dynamic_mode(facts("fc-6.18", tracepoints=[])) is None
    assert checks.mode_words(facts("el7-3.10")) == (
        "kprobe mode (kprobe_events; baseline syntax only)")
    assert checks.mode_words(facts("fc-6.18")).startswith(
        "tracepoint mode (no kprobe_events: 52 tracepoints in net, skb, ")


def test_without_a_readable_tracefs_the_mode_is_not_known_yet():
    host = facts("fc-6.18", tracefs=None, kprobe_events=None, tracepoints=[])
    assert checks.mode_words(host) == ("kprobes or tracepoints: known once tracefs is mounted "
                                       "and read as root")


def test_an_unknown_distribution_gets_the_package_name():
    host = facts("fc-6.18", distro_ids=["nixos"])
    assert checks.install_hint(host, "bpftrace") == "install bpftrace"


def test_an_answer_lists_everything_missing_or_says_what_works():
    assert checks.answer(["a", "b"], "works") == (False, "a; b")
    assert checks.answer([], "works") == (True, "works")
