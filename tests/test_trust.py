"""What root runs or loads must be files no other user can change (legacytrace.trust), and
the stap module cache above all: a module planted there runs in the kernel."""
import os
import stat

import pytest

from legacytrace import trust
from legacytrace.backends import stap
from legacytrace.backends.stap import cache as stap_cache
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="gives a file to another user: needs root")
NOBODY = 65534
LAB = "6.1.0-56-amd64"


@pytest.fixture
def folder(tmp_path):
    """A private folder (pytest's are 0700) whose parents are safe for this user."""
    path = tmp_path / "safe"
    path.mkdir(mode=0o700)
    return path


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


# --- the stap module cache ------------------------------------------------------------------

@pytest.fixture
def cache(folder, monkeypatch):
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(folder / "cache"))
    monkeypatch.setattr(stap_cache, "_stap_version", lambda: "Systemtap translator/driver (test)")
    return folder / "cache"


def cached(cache):
    """A compiled module in the cache where compile() looks for the program's module."""
    backend = stap.StapBackend()
    program = backend.build(TraceRequest([Probe("ip_rcv", 1)], FlowFilter(),
                                         HostFacts(release=LAB), run_id="lt4242"))
    module = stap_cache.module_path(program)[0]
    os.makedirs(os.path.dirname(module), mode=0o700)
    with open(module, "wb") as handle:
        handle.write(b"module")
    with open(module[:-3] + ".stp", "w") as handle:
        handle.write(program.text)
    return backend, program, module


def test_the_cache_is_made_private(cache):
    assert stap_cache.cache_dir() == str(cache)
    assert stat.S_IMODE(os.stat(str(cache)).st_mode) == 0o700


def test_a_cache_others_can_write_is_refused(cache):
    cache.parent.chmod(0o777)
    with pytest.raises(trust.Untrusted, match=r"refusing the stap module cache {}: {} is "
                       r"writable by group and others \(mode 0777\): root would load kernel "
                       r"modules".format(cache, cache.parent)):
        stap_cache.cache_dir()
    assert not cache.exists(), "nothing is made in a folder others can write"


def test_a_cache_reached_through_a_symlink_is_ours_where_it_is(cache):
    shared = cache.parent / "shared"
    shared.mkdir()
    os.chmod(str(shared), 0o1777)                          # as /tmp: others may add folders
    cache.symlink_to(shared)
    with pytest.raises(trust.Untrusted, match=r"{} is writable by group and others \(mode 1777\)"
                       .format(shared)):
        stap_cache.cache_dir()


def test_a_cached_module_others_can_write_is_refused_and_not_counted(cache):
    backend, program, module = cached(cache)
    assert backend.compile(program) == module and stap_cache.cached_modules(LAB) == [module]
    os.chmod(module, 0o666)
    with pytest.raises(trust.Untrusted, match="refusing the cached stap module {}".format(module)):
        backend.compile(program)
    assert stap_cache.cached_modules(LAB) == []
    assert backend.ready(program, HostFacts(release=LAB)).startswith(
        "refusing the cached stap module " + module)


@needs_root
def test_a_cache_folder_of_another_user_is_refused(cache):
    backend, program, module = cached(cache)
    os.chown(os.path.dirname(module), NOBODY, NOBODY)
    with pytest.raises(trust.Untrusted, match="is owned by uid {}".format(NOBODY)):
        backend.compile(program)
    assert stap_cache.cached_modules(LAB) == []


def test_compiled_modules_are_private(cache):
    """A stand-in for `stap -p4` writes NAME.ko (stap itself is not needed here)."""
    target = os.path.join(stap_cache.cache_dir(), "0123456789abcdef")
    stap_cache._compile_into(target, "lt_x", ["sh", "-c", 'echo module > "$2.ko"', "sh"], "probe")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert [stat.S_IMODE(os.stat(os.path.join(target, name)).st_mode)
            for name in ("lt_x.ko", "lt_x.stp")] == [0o600, 0o600]


def test_a_prebuilt_module_others_can_write_is_loaded_with_a_warning(folder, capsys):
    module = folder / "lt_icmp.ko"
    module.write_bytes(b"lt_icmp\0")
    os.chmod(str(module), 0o666)
    program = stap.StapBackend().module_program(str(module))
    assert program.part.module == str(module)
    assert capsys.readouterr().err == (
        "legacytrace: warning: stap: --stap-module {0}: {0} is writable by group and others "
        "(mode 0666): whoever can change it runs code in the kernel\n".format(module))


def test_a_runtime_others_can_change_is_refused_from_the_environment(folder, monkeypatch):
    runtime = folder / "runtime"
    runtime.mkdir()
    (runtime / "runtime.h").write_text("/* C */\n")
    os.chmod(str(runtime / "runtime.h"), 0o666)
    monkeypatch.setenv(stap_cache.RUNTIME_ENV, str(runtime))
    program = stap.StapBackend().build(TraceRequest([Probe("ip_rcv", 1)], FlowFilter(),
                                                    HostFacts(release=LAB), run_id="lt4242"))
    with pytest.raises(trust.Untrusted, match="refusing the SystemTap runtime {} of {}".format(
            runtime, stap_cache.RUNTIME_ENV)):
        stap_cache._stap_command(program, None, None)
    assert "-R" in stap_cache._stap_command(program, None, str(runtime))     # named: a warning
