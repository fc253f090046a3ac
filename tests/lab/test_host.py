"""Host probing, `doctor` and selection on each lab kernel (kprobes; BTF or not; tracefs or debugfs).

Proves what unit tests cannot: that probe_host() reads each real kernel right (where tracing
lives, the kprobe_events file and the syntax its README lists, perf's kprobe PMU, BTF), that
`doctor` tells the truth there (on EL7's 3.10: debugfs, no BTF, baseline kprobe syntax, stap
needs the kernel's headers, bpftrace needs 4.9) and that selection then picks what can run;
and that tests/data/hosts/lab-KERNEL.json, which the unit tests feed to selection, still says
what the lab kernel says. The facts are written to LEGACYTRACE_LAB_SHARED/hosts-lab-KERNEL.json,
as tests/data/hosts/record.py writes them, to record them anew.
"""
import collections
import json
import os
import shutil
import subprocess

import pytest

import labkit

from legacytrace import doctor, select

from legacytrace.kernel import features, host
from legacytrace.backends import checks
from legacytrace.backends.ftrace import check as ftrace_check
from legacytrace.kernel.release import KernelRelease

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "hosts")

#: What each lab kernel is: where tracing lives, BTF, perf's kprobe PMU (4.17), the backend
#: `trace` picks in the guest (stap cannot compile there: no headers; bpftrace needs 4.9).
KERNELS = {
    "6.1": {"tracefs": "/sys/kernel/tracing", "btf": labkit.BTF, "kprobe_pmu": True, "pick": "bpf"},
    "5.10": {"tracefs": "/sys/kernel/tracing", "btf": labkit.BTF, "kprobe_pmu": True, "pick": "bpf"},
    # RHEL 7 backported perf's kprobe PMU and eBPF (a tech preview): both are there.
    "el7": {"tracefs": "/sys/kernel/debug/tracing", "btf": None, "kprobe_pmu": True,
            "pick": "ftrace"},
}
#: Facts of the kernel, not of the userland or of the moment (compared with the recording; a
#: Debian kernel's release moves with Debian's updates, its version does not).
KERNEL_FACTS = ("tracefs", "kprobe_events", "kprobe_syntax", "kprobes", "kprobe_pmu", "btf",
                "modules", "instances")


@pytest.fixture(scope="module")
def facts(lab_shared, tmp_path_factory):
    """probe_host() in the guest, with an empty stap module cache (the host's shows through)."""
    os.environ["LEGACYTRACE_STAP_CACHE"] = str(tmp_path_factory.mktemp("stap-cache"))
    found = host.probe_host()
    record = collections.OrderedDict([("_note", "Kernel lab guest ({}): {}".format(
        labkit.lab_kernel(), "recorded by tests/lab/test_host.py"))])
    record.update(sorted(found.to_dict().items()))
    (lab_shared / "hosts-lab-{}.json".format(labkit.lab_kernel())).write_text(
        json.dumps(record, indent=1) + "\n")
    return found


@pytest.fixture(scope="module")
def expected():
    return KERNELS[labkit.lab_kernel()]


def test_probe_reads_the_kprobe_kernel(facts, expected, lab_release):
    assert facts.release == lab_release
    assert facts.root
    assert facts.tracefs == expected["tracefs"]
    assert facts.kprobe_events is True and facts.kprobes is True
    assert facts.kprobe_pmu is expected["kprobe_pmu"]
    with open(os.path.join(facts.tracefs, "README")) as handle:
        syntax = features.readme_kprobe_syntax(handle.read())
    assert facts.kprobe_syntax == syntax
    # what the kernel's README lists is what the version table says this kernel has
    assert set(syntax) >= set(features.kprobe_syntax_for(facts.kernel.version)) - {"btf-args"}
    assert facts.btf == expected["btf"]
    assert facts.modules is True
    assert "net:netif_receive_skb" in facts.tracepoints and "skb:kfree_skb" in facts.tracepoints


def test_recorded_lab_facts_still_hold(facts):
    with open(os.path.join(DATA, "lab-{}.json".format(labkit.lab_kernel()))) as handle:
        recorded = json.load(handle)
    for name in KERNEL_FACTS:
        assert getattr(facts, name) == recorded[name], name
    assert facts.kernel.version[:2] == KernelRelease.parse(recorded["release"]).version[:2]


def test_selection_and_doctor_tell_the_truth(facts, expected):
    assert checks.dynamic_mode(facts) == checks.KPROBE
    assert ftrace_check.check(facts).available
    name, reason, assessed = select.choose(facts)
    verdicts = dict(assessed)
    if expected["pick"] == "bpf":
        assert shutil.which("bpftrace") and facts.bpftrace_loads is True, facts.bpftrace_error
    else:
        assert not verdicts["bpf"].available
        assert "older than bpftrace's minimum 4.9 (EL7's backported eBPF" in verdicts["bpf"].reason
    assert name == expected["pick"], reason
    assert "kprobe" in reason
    # no headers in the guest (as on a host without kernel-devel): stap says what it needs
    assert not verdicts["stap"].available
    assert "no kernel headers for {}".format(facts.release) in verdicts["stap"].reason
    report = json.loads(json.dumps(doctor.doctor_json(facts)))
    assert report["pick"]["name"] == name
    text = doctor.format_doctor(facts)
    assert "tracefs         {} (instances: yes)".format(expected["tracefs"]) in text, text
    assert "BTF             {}".format(expected["btf"] or "no") in text, text
    if facts.kernel.version < features.TRACEFS_SINCE:
        assert "kernel before 4.1: SystemTap first" in text, text
        assert "kprobe_events   yes, syntax: baseline only" in text, text


def test_doctor_command_runs(facts):
    """`legacytrace doctor` itself, as a user runs it first on a new host."""
    done = subprocess.run([labkit.LEGACYTRACE, "doctor"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "trace would use: {}".format(KERNELS[labkit.lab_kernel()]["pick"]) in done.stdout
