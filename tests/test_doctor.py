"""`legacytrace doctor` (legacytrace.doctor) on recorded hosts: its text, its JSON.

The doctor texts are golden files under tests/golden/doctor/ (tests/conftest.py says how
to regenerate them).
"""
import json

import pytest

from conftest import golden, pure_checks, recorded as facts
from legacytrace import doctor


RECORDED = ("el7-3.10", "deb10-4.19", "lab-6.1", "fc-6.18")


SHARED = pure_checks()



def test_doctor_text_on_fc_6_18():
    text = doctor.format_doctor(facts("fc-6.18"), SHARED)
    lines = text.splitlines()
    assert any(line.split() == ["tracefs", "/sys/kernel/tracing", "(instances:", "yes)"] for line in lines)
    kprobe_line = [line for line in lines if line.strip().startswith("kprobe_events")][0]
    assert "no: kernel built without CONFIG_KPROBES, so without CONFIG_KPROBE_EVENTS" in kprobe_line
    rows = dict((line.split()[0], line.split()[1]) for line in lines
                if line.startswith("  ") and line.split()[0] in ("stap", "ftrace", "bpf")
                and line.split()[1] in ("yes", "no"))
    assert rows == {"bpf": "yes", "ftrace": "yes", "stap": "no"}
    assert lines[-1].startswith("trace would use: bpf (") and "tracepoint mode" in lines[-1]


def test_doctor_text_when_nothing_runs():
    text = doctor.format_doctor(facts("el7-3.10", root=False, tracefs_mountable=False), SHARED)
    assert "trace would use: nothing; no backend can run here" in text


def test_doctor_json():
    report = doctor.doctor_json(facts("el7-3.10"), SHARED)
    again = json.loads(json.dumps(report))
    assert again["pick"]["name"] == "stap"
    assert [b["name"] for b in again["backends"]] == ["stap", "ftrace", "bpf"]
    assert [b["available"] for b in again["backends"]] == [True, True, False]
    assert again["host"]["release"] == "3.10.0-1160.el7.x86_64"
    assert again["preference"]["order"] == ["stap", "ftrace", "bpf"]
    none = doctor.doctor_json(facts("el7-3.10", root=False, tracefs_mountable=False), SHARED)
    assert none["pick"]["name"] is None and "no backend can run here" in none["pick"]["reason"]


@pytest.mark.parametrize("name", RECORDED)
def test_doctor_golden(name):
    golden("doctor/{}.txt".format(name), doctor.format_doctor(facts(name), SHARED) + "\n")


def rows(host):
    """The host part of the doctor text as {label: text}."""
    lines = doctor.format_doctor(host, SHARED).splitlines()
    host_part = lines[1:lines.index(next(l for l in lines if l.startswith("backends")))]
    return dict((line[2:17].strip(), line[18:]) for line in host_part)


def test_the_host_part_says_what_could_not_be_read():
    host = facts("fc-6.18", kernel_config=None, tracefs=None, tracefs_mountable=True,
                 bpftrace_loads=False, bpftrace_error="ERROR: no BPF", lockdown=None)
    found = rows(host)
    assert found["kernel config"] == ("not readable (/proc/config.gz, "
                                      "/boot/config-6.18.44-fc-v669)")
    assert found["tracefs"] == "not mounted (mountable)"
    assert found["bpftrace"] == "0.17.0 (cannot load: ERROR: no BPF)"
    assert found["lockdown"] == "not reported"


def test_the_host_part_of_el7():
    found = rows(facts("el7-3.10"))
    assert found["tracefs"] == "/sys/kernel/debug/tracing (instances: yes)"
    assert found["kprobe_events"] == "yes, syntax: baseline only"
    assert found["stap"] == "4.0, staprun /usr/bin/staprun"


def test_the_json_report_has_the_order_and_a_verdict_for_each_backend():
    report = doctor.doctor_json(facts("fc-6.18"), SHARED)
    assert report["preference"]["order"] == ["bpf", "ftrace", "stap"]
    assert [b["name"] for b in report["backends"]] == ["bpf", "ftrace", "stap"]
    assert [b["available"] for b in report["backends"]] == [True, True, False]
    assert report["pick"]["name"] == "bpf"


def test_doctor_says_what_the_default_buffer_costs():
    lines = doctor.format_doctor(facts("el7-3.10"), SHARED, cpus=4).splitlines()
    assert "buffer: 4096 KiB per CPU (--buffer-size), 16 MiB on this host's 4 CPUs, while a " \
           "trace runs" in lines
