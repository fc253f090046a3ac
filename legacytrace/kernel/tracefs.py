"""Where tracefs is: the mounted tracing directory of this system, and mounting one.

3.10 has no tracefs: the tracing directory is part of debugfs (debugfs/tracing,
/sys/kernel/debug/tracing once debugfs is mounted). From 4.1 (commit 4282d60689d4,
"tracefs: Add new tracefs file system") tracefs is its own filesystem, mounted
explicitly at /sys/kernel/tracing, and debugfs/tracing is an automount of it
(docs/kernel-facts.md, "Where tracing lives"). Writing to it is the ftrace backend's
(legacytrace.backends.ftrace.tracefs).
"""
import os
import re

from legacytrace import trust
from legacytrace.errors import LegacytraceError

#: Where tracefs goes when we mount it (4.1+), and where debugfs goes (3.10: tracing is in it).
TRACEFS_MOUNT = "/sys/kernel/tracing"
DEBUGFS_MOUNT = "/sys/kernel/debug"
#: How long a mount may take.
MOUNT_TIMEOUT = 120


def parse_mounts(text):
    """/proc/mounts text -> [(mount point, fs type)]; octal escapes (\\040) decoded."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            mounts.append((point, parts[2]))
    return mounts


def parse_filesystems(text):
    """/proc/filesystems text -> set of filesystem names the kernel knows."""
    return set(line.split()[-1] for line in text.splitlines() if line.strip())


def tracing_dir(mounts, filesystems):
    """The mounted tracing directory given `parse_mounts` and `parse_filesystems` results, or None.

    A tracefs mount wins (/sys/kernel/tracing first). A kernel without tracefs (before 4.1)
    has its tracing directory in debugfs. From 4.1 debugfs/tracing is an automount of
    tracefs: entering it would mount, so it is not reported as mounted.
    """
    tracefs = [point for point, fstype in mounts if fstype == "tracefs"]
    if tracefs:
        return TRACEFS_MOUNT if TRACEFS_MOUNT in tracefs else tracefs[0]
    if "tracefs" not in filesystems:
        for point, fstype in mounts:
            if fstype == "debugfs":
                return os.path.join(point, "tracing")
    return None


def _proc(name):
    try:
        with open(os.path.join("/proc", name)) as handle:
            return handle.read()
    except (IOError, OSError):
        return ""


def filesystems():
    """The filesystems this kernel knows (/proc/filesystems)."""
    return parse_filesystems(_proc("filesystems"))


def find(known=None):
    """The mounted tracing directory of this system, or None; `known` is filesystems()."""
    return tracing_dir(parse_mounts(_proc("mounts")), filesystems() if known is None else known)


def ensure():
    """Return the tracing directory, mounting it first if needed (side effect; needs root).

    Mounts tracefs at /sys/kernel/tracing, or on a kernel without tracefs debugfs at
    /sys/kernel/debug, whose tracing/ is the directory.
    """
    known = filesystems()
    path = find(known)
    if path:
        return path
    if "tracefs" in known:
        fstype, point, path = "tracefs", TRACEFS_MOUNT, TRACEFS_MOUNT
    elif "debugfs" in known:
        fstype, point, path = "debugfs", DEBUGFS_MOUNT, os.path.join(DEBUGFS_MOUNT, "tracing")
    else:
        raise LegacytraceError("this kernel has neither tracefs nor debugfs (built without "
                               "CONFIG_FTRACE): choose another backend with --backend")
    status, _, err = trust.run(["mount", "-t", fstype, "nodev", point], MOUNT_TIMEOUT)
    if status != 0:
        raise LegacytraceError("cannot mount {} at {} ({}): mount it as root with "
                               "`mount -t {} nodev {}`".format(fstype, point, err.strip(), fstype,
                                                                point))
    return path
