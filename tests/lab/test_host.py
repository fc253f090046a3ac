"""Host probing and selection on the real 6.1 lab kernel (kprobes, BTF, tracefs).

Proves what unit tests cannot: that probe_host() reads a kprobe kernel right (the
kprobe_events file, the README's kprobe syntax, perf's kprobe PMU) and that selection
then picks a kprobe-capable backend; and that tests/data/hosts/lab-6.1.json, which the
unit tests feed to selection, still says what the lab kernel says.
"""
import json
import os
import shutil

import pytest

from legacytrace import doctor, features, host, select
from legacytrace.backends import checks

RECORDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "data", "hosts", "lab-6.1.json")


@pytest.fixture(scope="module")
def facts():
    return host.probe_host()


def test_probe_reads_the_kprobe_kernel(facts, lab_release):
    assert facts.release == lab_release
    assert facts.root
    assert facts.tracefs and os.path.exists(os.path.join(facts.tracefs, "kprobe_events"))
    assert facts.kprobe_events is True and facts.kprobes is True and facts.kprobe_pmu is True
    with open(os.path.join(facts.tracefs, "README")) as handle:
        assert facts.kprobe_syntax == features.readme_kprobe_syntax(handle.read())
    assert {"comm", "x-types", "maxactive", "argN", "sym%return"} <= set(facts.kprobe_syntax)
    assert facts.btf == "/sys/kernel/btf/vmlinux"
    assert facts.modules is True
    assert "net:netif_receive_skb" in facts.tracepoints and "skb:kfree_skb" in facts.tracepoints


def test_recorded_lab_facts_still_hold(facts):
    with open(RECORDED) as handle:
        recorded = json.load(handle)
    for name in ("kprobe_events", "kprobe_syntax", "kprobes", "kprobe_pmu", "btf", "modules",
                 "instances", "tracefs"):
        assert getattr(facts, name) == recorded[name], name


def test_selection_uses_kprobes(facts):
    assert checks.dynamic_mode(facts) == checks.KPROBE
    assert checks.ftrace(facts).available
    name, reason, _ = select.choose(facts)
    if shutil.which("bpftrace"):
        assert facts.bpftrace_loads is True, facts.bpftrace_error
        assert name == "bpf"
    assert "kprobe mode" in reason
    report = json.loads(json.dumps(doctor.doctor_json(facts)))
    assert report["pick"]["name"] == name
