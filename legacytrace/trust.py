"""Files legacytrace runs or loads as root must be files no other user can change.

The rule is ssh's StrictModes: a file, and every folder above it, is owned by the effective
user or root and writable by neither group nor others; above our own folders, a folder
others may write is accepted when its sticky bit keeps each entry to its owner (/tmp).
What legacytrace keeps for itself (the stap module cache, backends/stap/cache.py) must be
the effective user's own.
Without this, root under `sudo -E`, or with the HOME or XDG_CACHE_HOME of another user,
would load a kernel module that user planted in the cache: kernel code execution.
"""
import os
import shutil
import stat
import subprocess

from legacytrace.errors import LegacytraceError

#: Mode bits that let group or others write.
WRITABLE = stat.S_IWGRP | stat.S_IWOTH


class Untrusted(LegacytraceError):
    """A file or folder another user could change, where root would run or load it."""


def problem(path, own_below=None):
    """Why a user other than the effective one (or root) could change `path`, or None.

    `own_below` and what is under it down to `path` must be the effective user's own (not
    root's, and no sticky folder). Both the path as given and its real path (symlinks
    resolved) are checked: a symlink is only as safe as the folder that holds it.
    """
    path = os.path.abspath(path)
    own = [os.path.abspath(own_below), os.path.realpath(own_below)] if own_below else []
    for candidate, follow in _chain(path):
        try:
            st = os.stat(candidate) if follow else os.lstat(candidate)
        except OSError as exc:
            return "cannot check {}: {}".format(candidate, exc.strerror)
        if stat.S_ISLNK(st.st_mode):
            continue
        mine = any(candidate == top or candidate.startswith(top + "/") for top in own)
        if st.st_uid != os.geteuid() and (mine or st.st_uid != 0):
            return "{} is owned by uid {}".format(candidate, st.st_uid)
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and not mine
        if st.st_mode & WRITABLE and not sticky:
            return "{} is writable by {} (mode {:04o})".format(
                candidate, "group and others" if st.st_mode & WRITABLE == WRITABLE
                else "group" if st.st_mode & stat.S_IWGRP else "others",
                stat.S_IMODE(st.st_mode))
    return None


def _chain(path):
    """(path, follow symlinks) of `path` and each folder above it, then of its real path."""
    found, seen = [], set()
    for start, follow in ((path, False), (os.path.realpath(path), True)):
        current = start
        while current not in seen:
            seen.add(current)
            found.append((current, follow))
            current = os.path.dirname(current)
    return found



def program(name):
    """The path of program `name` on PATH for a subprocess. As root, LegacytraceError when
    another user could change it; a missing program is left to the caller (OSError)."""
    path = shutil.which(name)
    if path is None or os.geteuid() != 0:
        return path or name
    found = problem(path)
    if found:
        raise Untrusted("refusing to run {} as root: {}: another user could change "
                               "what root runs; fix its permissions or PATH".format(path, found))
    return path


def run(argv, timeout):
    """Run `argv` (its program from PATH, checked by program()) -> (exit status, stdout,
    stderr); the status is None when it could not run or timed out, and stderr says why."""
    try:
        proc = subprocess.Popen([program(argv[0])] + argv[1:], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
    except (OSError, Untrusted) as exc:
        return None, "", str(exc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, "{} timed out after {} s".format(argv[0], timeout)
    return proc.returncode, out, err
