"""Which backend `trace` picks (legacytrace.select), fed with recorded host facts."""
import os

import pytest

from conftest import DATA, pure_checks, recorded as facts
from legacytrace import doctor, select
from legacytrace.backends import checks
from legacytrace.errors import BackendUnavailable
from legacytrace.kernel.host import probe_host


SHARED = pure_checks()



def availability(host):
    return dict((name, a.available) for name, a in select.assess(host, SHARED))


def test_el7_prefers_stap_then_ftrace():
    host = facts("el7-3.10")
    assert select.preference(host)[0] == ("stap", "ftrace", "bpf")
    name, reason, assessed = select.choose(host, check=SHARED)
    assert name == "stap"
    assert "/usr/src/kernels/3.10.0-1160.el7.x86_64" in reason
    assert availability(host) == {"stap": True, "ftrace": True, "bpf": False}
    assert "older than bpftrace's minimum 4.9" in dict(assessed)["bpf"].reason


def test_el7_without_kernel_devel_falls_back_to_ftrace_kprobes():
    host = facts("el7-3.10", kernel_build=None)
    name, reason, assessed = select.choose(host, check=SHARED)
    assert name == "ftrace"
    assert "kprobe mode" in reason and "baseline syntax only" in reason
    assert "/sys/kernel/debug/tracing" in reason
    assert "yum install kernel-devel-3.10.0-1160.el7.x86_64" in dict(assessed)["stap"].reason


def test_el7_not_root_nothing_runs():
    host = facts("el7-3.10", root=False, tracefs_mountable=False)
    with pytest.raises(BackendUnavailable) as info:
        select.choose(host, check=SHARED)
    message = str(info.value)
    assert message.startswith("no backend can run here")
    assert "needs root" in message and "\n" not in message


def test_deb10_4_19_without_btf_prefers_stap():
    host = facts("deb10-4.19")
    assert select.preference(host)[0] == ("stap", "bpf", "ftrace")
    assert select.choose(host, check=SHARED)[0] == "stap"
    assert "bpftrace not installed (apt-get install bpftrace)" in dict(select.assess(host, SHARED))["bpf"].reason
    host = facts("deb10-4.19", cc=None)
    name, reason, _ = select.choose(host, check=SHARED)
    assert name == "ftrace"
    assert "comm, x-types, maxactive" in reason


def test_fc_6_18_picks_bpf_in_tracepoint_mode():
    host = facts("fc-6.18")
    assert select.preference(host)[0] == ("bpf", "ftrace", "stap")
    name, reason, assessed = select.choose(host, check=SHARED)
    assert name == "bpf"
    assert checks.dynamic_mode(host) == checks.TRACEPOINT
    assert "tracepoint mode" in reason
    assert availability(host) == {"bpf": True, "ftrace": True, "stap": False}
    stap = dict(assessed)["stap"].reason
    assert "CONFIG_KPROBES" in stap and "CONFIG_MODULES" in stap
    assert "headers" not in stap          # nothing to install helps a kernel without modules


def test_fc_6_18_without_bpftrace_uses_ftrace_tracepoints():
    name, reason, _ = select.choose(facts("fc-6.18", bpftrace=None, bpftrace_loads=None), check=SHARED)
    assert name == "ftrace"
    assert "tracepoint mode" in reason


def test_bpftrace_that_cannot_load_is_not_picked():
    host = facts("fc-6.18", bpftrace_loads=False, bpftrace_error="ERROR: failed to load")
    assert select.choose(host, check=SHARED)[0] == "ftrace"
    assert "cannot load a program here: ERROR: failed to load" in dict(select.assess(host, SHARED))["bpf"].reason


def test_lab_6_1_picks_bpf_with_kprobes():
    path = os.path.join(DATA, "hosts", "lab-6.1.json")
    if not os.path.exists(path):
        pytest.skip("6.1 lab facts not recorded")
    host = facts("lab-6.1")
    assert checks.dynamic_mode(host) == checks.KPROBE
    name, reason, _ = select.choose(host, check=SHARED)
    assert name == "bpf" and "kprobe mode" in reason


def test_requested_backend():
    host = facts("fc-6.18")
    name, reason, _ = select.choose(host, check=SHARED, requested="ftrace")
    assert name == "ftrace" and reason.startswith("requested with --backend")
    with pytest.raises(BackendUnavailable) as info:
        select.choose(host, check=SHARED, requested="stap")
    assert str(info.value).startswith("backend stap cannot run here: kernel built without CONFIG_KPROBES")
    with pytest.raises(BackendUnavailable) as info:
        select.choose(host, check=SHARED, requested="dtrace")
    assert "choose one of stap, ftrace, bpf" in str(info.value)


def test_default_checks_on_this_machine():
    """The CLI's path: live facts, each backend's own check."""
    host = probe_host()
    text = doctor.format_doctor(host)
    report = doctor.doctor_json(host)
    assert [b["name"] for b in report["backends"]] == list(select.preference(host)[0])
    assert ("trace would use: " + (report["pick"]["name"] or "nothing")) in text


def test_auto_chooses_again_without_a_backend_that_cannot_run_the_trace(capsys):
    """cli: stap was the pick but cannot run this trace (Backend.ready): the next one is."""
    from legacytrace import cli
    host = facts("el7-3.10")
    assert select.choose(host)[0] == "stap"
    chosen = cli._backend("auto", host, without={"stap": "its module is not in the cache"})
    assert chosen.name == "ftrace"
    assert "legacytrace: using ftrace" in capsys.readouterr().err
