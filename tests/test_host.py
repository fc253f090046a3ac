"""Host probing: the pure parsers on real captured files, and probe_host() on this machine."""
import glob
import json
import os
import shutil
import subprocess

import pytest

from conftest import DATA, require
from legacytrace.kernel import features, host, tracefs
from legacytrace.kernel.host import HostFacts

HOSTS = os.path.join(DATA, "hosts")


def _text(name):
    with open(os.path.join(HOSTS, name)) as handle:
        return handle.read()


# ---- tracing/README -> kprobe syntax ------------------------------------------------

def test_readme_without_kprobe_section_is_baseline():
    """6.18 without CONFIG_KPROBE_EVENTS: uprobe text lists $comm, $arg<N>... but no kprobe section."""
    readme = _text("README-6.18.44-fc.txt")
    assert "$arg<N>" in readme and "r[maxactive]" in readme and "uprobe_events" in readme
    assert features.readme_kprobe_syntax(readme) == []


def test_readme_6_1_kprobe_section():
    path = os.path.join(HOSTS, "README-6.1.0-56-amd64.txt")
    if not os.path.exists(path):
        pytest.skip("6.1 lab README not recorded")
    found = features.readme_kprobe_syntax(_text("README-6.1.0-56-amd64.txt"))
    # 6.1 has everything up to 5.10 (sym%return), not char (6.3) nor BTF args (6.5).
    assert found == features.kprobe_syntax_for((6, 1))
    assert "sym%return" in found and "char" not in found and "btf-args" not in found


def test_readme_features_need_the_kprobe_section():
    """The same text with the kprobe_events line of a kprobe kernel's README added counts."""
    readme = _text("README-6.18.44-fc.txt").replace(
        "  uprobe_events\t\t-", "  kprobe_events\t\t- kernel dynamic events\n  uprobe_events\t\t-")
    found = features.readme_kprobe_syntax(readme)
    assert {"comm", "x-types", "maxactive", "argN", "symbol", "array", "user-memory",
            "char"} <= set(found)
    # %return on this README is the uprobe place only, not `place (kretprobe)`.
    assert "sym%return" not in found


def test_feature_names_are_documented_and_ordered():
    assert tuple(features.KPROBE_SYNTAX_SINCE) == features.KPROBE_SYNTAX
    versions = list(features.KPROBE_SYNTAX_SINCE.values())
    assert versions == sorted(versions)
    assert features.kprobe_syntax_for((3, 10)) == []
    assert features.kprobe_syntax_for((4, 19, 0)) == ["comm", "x-types", "maxactive"]


# ---- the other parsers, on captured files --------------------------------------------

def test_parse_config_6_18():
    config = host.parse_config(_text("config-6.18-excerpt.txt"))
    assert set(config) == set(host.CONFIG_OPTIONS)
    assert config["CONFIG_KPROBES"] == "n"        # "# CONFIG_KPROBES is not set"
    assert config["CONFIG_KPROBE_EVENTS"] == "n"  # absent: depends on KPROBES
    assert config["CONFIG_MODULES"] == "n"
    assert config["CONFIG_DEBUG_INFO_BTF"] == "y"


def test_parse_config_6_1_and_old_name():
    text = _text("config-6.1.0-56-amd64-excerpt.txt")
    config = host.parse_config(text)
    assert all(value == "y" for value in config.values())
    # 3.10's configs spell it CONFIG_KPROBE_EVENT (renamed in 4.11).
    old = host.parse_config(text.replace("CONFIG_KPROBE_EVENTS=", "CONFIG_KPROBE_EVENT="))
    assert old["CONFIG_KPROBE_EVENTS"] == "y"


def test_parse_versions():
    assert host.parse_stap_version(_text("stap-V-4.8.txt")) == "4.8/0.188"
    assert host.parse_bpftrace_version(_text("bpftrace-version-0.17.txt")) == "0.17.0"
    assert host.parse_stap_version(_text("bpftrace-version-0.17.txt")) is None
    assert host.parse_bpftrace_version("") is None


def test_parse_os_release():
    assert host.parse_os_release(_text("os-release-debian12.txt")) == (
        "Debian GNU/Linux 12 (bookworm)", ["debian"])


def test_parse_cap_sys_admin():
    status = _text("proc-self-status-6.18.txt")
    assert host.parse_cap_sys_admin(status) is True
    cleared = "\n".join(line if not line.startswith("CapEff") else "CapEff:\t0000000000000000"
                        for line in status.splitlines())
    assert host.parse_cap_sys_admin(cleared) is False


def test_tracing_dir():
    mounts = tracefs.parse_mounts(_text("proc-mounts-6.18.txt"))
    filesystems = tracefs.parse_filesystems(_text("proc-filesystems-6.18.txt"))
    assert {"tracefs", "debugfs"} <= filesystems
    assert tracefs.tracing_dir(mounts, filesystems) == "/sys/kernel/tracing"
    # Without a tracefs mount, debugfs/tracing on a 4.1+ kernel is an automount: not mounted.
    debugfs_only = [(p, t) for p, t in mounts if t != "tracefs"] + [("/sys/kernel/debug", "debugfs")]
    assert tracefs.tracing_dir(debugfs_only, filesystems) is None
    # A kernel without tracefs (3.10): tracing lives inside debugfs.
    assert tracefs.tracing_dir(debugfs_only, filesystems - {"tracefs"}) == "/sys/kernel/debug/tracing"


def test_parse_mounts_decodes_spaces():
    line = _text("proc-mounts-6.18.txt").splitlines()[-1].replace(
        "/sys/kernel/tracing", "/mnt/my\\040trace")
    assert tracefs.parse_mounts(line) == [("/mnt/my trace", "tracefs")]


# ---- recorded facts ------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(HOSTS, "*.json"))))
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


# ---- probing this machine --------------------------------------------------------------

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


def test_ensure_tracefs_returns_mounted_dir_without_mounting():
    facts = host.probe_host()
    require(facts.tracefs is not None and facts.root, "needs a mounted tracefs and root")
    before = _mounts()
    assert tracefs.ensure() == facts.tracefs
    assert _mounts() == before
