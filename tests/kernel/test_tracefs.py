"""Where tracefs is (legacytrace.kernel.tracefs): mounts and filesystems read from real
/proc files, and this machine's tracing directory.
"""
from conftest import host_text, require
from legacytrace.kernel import host, tracefs


def test_tracing_dir():
    mounts = tracefs.parse_mounts(host_text("proc-mounts-6.18.txt"))
    filesystems = tracefs.parse_filesystems(host_text("proc-filesystems-6.18.txt"))
    assert {"tracefs", "debugfs"} <= filesystems
    assert tracefs.tracing_dir(mounts, filesystems) == "/sys/kernel/tracing"
    # Without a tracefs mount, debugfs/tracing on a 4.1+ kernel is an automount: not mounted.
    debugfs_only = [(p, t) for p, t in mounts if t != "tracefs"] + [("/sys/kernel/debug", "debugfs")]
    assert tracefs.tracing_dir(debugfs_only, filesystems) is None
    # A kernel without tracefs (3.10): tracing lives inside debugfs.
    assert tracefs.tracing_dir(debugfs_only, filesystems - {"tracefs"}) == "/sys/kernel/debug/tracing"


def test_parse_mounts_decodes_spaces():
    line = host_text("proc-mounts-6.18.txt").splitlines()[-1].replace(
        "/sys/kernel/tracing", "/mnt/my\\040trace")
    assert tracefs.parse_mounts(line) == [("/mnt/my trace", "tracefs")]


def _mounts():
    with open("/proc/mounts") as handle:
        return handle.read()


def test_ensure_tracefs_returns_mounted_dir_without_mounting():
    facts = host.probe_host()
    require(facts.tracefs is not None and facts.root, "needs a mounted tracefs and root")
    before = _mounts()
    assert tracefs.ensure() == facts.tracefs
    assert _mounts() == before
