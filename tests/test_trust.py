"""What root runs or loads must be files no other user can change (legacytrace.trust); the
stap module cache's own checks are tested in tests/backends/stap/test_cache.py."""
import os

import pytest

from conftest import NOBODY, needs_root
from legacytrace import trust


def test_a_folder_others_can_write_is_named(folder):
    (folder / "shared").mkdir()
    (folder / "shared" / "lt_x.ko").write_bytes(b"module")
    os.chmod(str(folder / "shared"), 0o775)
    assert trust.problem(str(folder / "shared" / "lt_x.ko")) == \
        "{} is writable by group (mode 0775)".format(folder / "shared")
    os.chmod(str(folder / "shared"), 0o757)
    assert "writable by others (mode 0757)" in trust.problem(str(folder / "shared" / "lt_x.ko"))


def test_a_sticky_folder_is_accepted_above_ours_but_not_as_ours(folder):
    os.chmod(str(folder), 0o1777)                         # as /tmp
    (folder / "cache").mkdir(mode=0o700)
    assert trust.problem(str(folder / "cache"), own_below=str(folder / "cache")) is None
    assert "writable by group and others (mode 1777)" in trust.problem(
        str(folder / "cache"), own_below=str(folder))


def test_a_symlink_is_as_safe_as_the_folder_that_holds_it_and_its_target(folder):
    unsafe = folder / "unsafe"
    unsafe.mkdir()
    os.chmod(str(unsafe), 0o777)
    (unsafe / "target").mkdir()
    (folder / "link").symlink_to(unsafe / "target")       # safe link, unsafe target
    assert str(unsafe) in trust.problem(str(folder / "link"))
    (folder / "real").mkdir()
    (unsafe / "link").symlink_to(folder / "real")         # safe target, link others can swap
    assert str(unsafe) in trust.problem(str(unsafe / "link"))


@needs_root
def test_a_file_of_another_user_is_named(folder):
    module = folder / "lt_x.ko"
    module.write_bytes(b"module")
    os.chown(str(module), NOBODY, NOBODY)
    assert trust.problem(str(module)) == "{} is owned by uid {}".format(module, NOBODY)


@needs_root
def test_root_runs_no_program_another_user_can_change(folder, monkeypatch):
    program = folder / "bin" / "bpftrace"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    os.chmod(str(program), 0o755)
    monkeypatch.setenv("PATH", str(program.parent))
    assert trust.program("bpftrace") == str(program)
    os.chmod(str(program.parent), 0o777)
    with pytest.raises(trust.Untrusted, match="refusing to run {} as root: {} is writable"
                       .format(program, program.parent)):
        trust.program("bpftrace")
