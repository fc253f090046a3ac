"""Host facts (legacytrace.kernel.host): the pure parsers on real captured files, recorded
facts, and probe_host() on this machine.
"""
import glob
import json
import os
import shutil
import subprocess

import pytest

from conftest import DATA, host_text, require
from legacytrace.kernel import features, host
from legacytrace.kernel.host import HostFacts


def test_parse_config_6_18():
    config = host.parse_config(host_text("config-6.18-excerpt.txt"))
    assert set(config) == set(host.CONFIG_OPTIONS)
    assert config["CONFIG_KPROBES"] == "n"        # "# CONFIG_KPROBES is not set"
    assert config["CONFIG_KPROBE_EVENTS"] == "n"  # absent: depends on KPROBES
    assert config["CONFIG_MODULES"] == "n"
    assert config["CONFIG_DEBUG_INFO_BTF"] == "y"


def test_parse_config_6_1_and_old_name():
    text = host_text("config-6.1.0-56-amd64-excerpt.txt")
    config = host.parse_config(text)
    assert all(value == "y" for value in config.values())
    # 3.10's configs spell it CONFIG_KPROBE_EVENT (renamed in 4.11).
    old = host.parse_config(text.replace("CONFIG_KPROBE_EVENTS=", "CONFIG_KPROBE_EVENT="))
    assert old["CONFIG_KPROBE_EVENTS"] == "y"


def test_parse_versions():
    assert host.parse_stap_version(host_text("stap-V-4.8.txt")) == "4.8/0.188"
    assert host.parse_bpftrace_version(host_text("bpftrace-version-0.17.txt")) == "0.17.0"
    assert host.parse_stap_version(host_text("bpftrace-version-0.17.txt")) is None
    assert host.parse_bpftrace_version("") is None


def test_parse_os_release():
    assert host.parse_os_release(host_text("os-release-debian12.txt")) == (
        "Debian GNU/Linux 12 (bookworm)", ["debian"])


def test_parse_cap_sys_admin():
    status = host_text("proc-self-status-6.18.txt")
    assert host.parse_cap_sys_admin(status) is True
    cleared = "\n".join(line if not line.startswith("CapEff") else "CapEff:\t0000000000000000"
                        for line in status.splitlines())
    assert host.parse_cap_sys_admin(cleared) is False


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(DATA, "hosts", "*.json"))))
def test_recorded_facts_round_trip(path):
    with open(path) as handle:
        data = json.load(handle)
    assert data["_note"]
    facts = HostFacts.from_dict(data)
    assert set(facts.to_dict()) == set(HostFacts.FIELDS)
    again = HostFacts.from_dict(json.loads(json.dumps(facts.to_dict())))
    assert again.to_dict() == facts.to_dict()
    assert set(facts.kprobe_syntax) <= set(features.KPROBE_SYNTAX)


def test_old_constructor_still_works():
    facts = HostFacts(release="6.1.0-56-amd64", btf="/sys/kernel/btf/vmlinux")
    assert facts.kernel.version == (6, 1, 0)
    assert facts.kprobe_events is False and facts.tracepoints == []
    assert facts.config("CONFIG_KPROBES") is None
    with pytest.raises(TypeError):
        HostFacts(release="6.1.0", bogus=1)


def _mounts():
    with open("/proc/mounts") as handle:
        return handle.read()


def test_probe_host_matches_this_machine():
    before = _mounts()
    facts = host.probe_host()
    assert _mounts() == before, "probing must not mount anything"
    assert facts.release == os.uname().release
    assert facts.arch == os.uname().machine
    assert (facts.btf is not None) == os.path.exists("/sys/kernel/btf/vmlinux")
    if os.geteuid() == 0:
        assert facts.root
    assert facts.modules == os.path.exists("/proc/modules")
    assert facts.cc == (shutil.which("gcc") or shutil.which("cc"))
    if facts.tracefs and os.access(facts.tracefs, os.R_OK):
        assert facts.kprobe_events == os.path.exists(os.path.join(facts.tracefs, "kprobe_events"))
        with open(os.path.join(facts.tracefs, "README")) as handle:
            assert facts.kprobe_syntax == features.readme_kprobe_syntax(handle.read())
        if os.path.isdir(os.path.join(facts.tracefs, "events", "net", "netif_receive_skb")):
            assert "net:netif_receive_skb" in facts.tracepoints
    if shutil.which("bpftrace"):
        out = subprocess.check_output(["bpftrace", "--version"], universal_newlines=True)
        assert facts.bpftrace and facts.bpftrace in out
    if facts.kernel_config:
        assert facts.kprobes == (facts.kernel_config["CONFIG_KPROBES"] != "n")


def test_probe_host_bpftrace_load_as_root():
    require(os.geteuid() == 0 and shutil.which("bpftrace"), "needs root and bpftrace")
    facts = host.probe_host()
    assert facts.bpftrace_loads in (True, False)
    assert (facts.bpftrace_error is None) == facts.bpftrace_loads


def test_probe_host_can_skip_the_bpftrace_trial():
    require(os.geteuid() == 0 and shutil.which("bpftrace"), "needs root and bpftrace")
    facts = host.probe_host(try_bpftrace=False)
    assert facts.bpftrace is not None  # the version is still read
    assert facts.bpftrace_loads is None and facts.bpftrace_error is None
