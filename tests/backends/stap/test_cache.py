"""The stap module cache (backends/stap/cache.py): compiling once per program with a
stand-in stap, modules for a release, what a host can run without a compiler, and the
trust rule for the cache, its modules, a prebuilt module and a SystemTap runtime.
"""
import os
import stat

import pytest

from conftest import NOBODY, needs_root, saved_host
from legacytrace import trust
from legacytrace.backends import stap
from legacytrace.backends.stap import cache as stap_cache
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest


#: 6.1 positions (docs/kernel-facts.md): ip_output/ip_finish_output (net, sk, skb).
PROBES_61 = [
    Probe("ip_rcv", 1), Probe("ip_local_deliver", 1), Probe("tcp_v4_rcv", 1),
    Probe("ip_output", 3, 2), Probe("ip_finish_output", 3, 2), Probe("__dev_queue_xmit", 1),
]


def request(probes, flow=None, release="6.1.0-56-amd64"):
    return TraceRequest(probes, flow or FlowFilter(), HostFacts(release=release), run_id="lt4242")


def build(probes, flow=None, release="6.1.0-56-amd64"):
    return stap.StapBackend().build(request(probes, flow, release))


FAKE_STAP = """#!/bin/sh
# stands in for stap: -V prints a version; otherwise writes NAME.ko for -m NAME
if [ "$1" = "-V" ]; then echo "Systemtap translator/driver (version 9.9/test)"; exit 0; fi
echo "$@" >> "{log}"
while [ $# -gt 0 ]; do
  if [ "$1" = "-m" ]; then name="$2"; fi
  shift
done
echo module > "$name.ko"
"""


@pytest.fixture
def fake_stap(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "stap.log"
    script = bindir / "stap"
    script.write_text(FAKE_STAP.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", "{}:{}".format(bindir, os.environ["PATH"]))
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(stap_cache.RUNTIME_ENV, raising=False)
    return log


def calls(log):
    return log.read_text().splitlines() if log.exists() else []


def test_second_compile_of_the_same_program_is_cached(fake_stap, tmp_path):
    backend = stap.StapBackend()
    program = build(PROBES_61, FlowFilter.parse(proto="icmp"))
    first = backend.compile(program)
    assert len(calls(fake_stap)) == 1
    assert os.path.basename(first).startswith("lt_") and first.endswith(".ko")
    assert backend.compile(program) == first
    assert len(calls(fake_stap)) == 1, "the second compile ran stap again"
    assert os.path.isfile(first[:-3] + ".stp"), "the cache keeps the script next to the module"
    assert os.path.basename(os.path.dirname(first)) == os.path.basename(first)[3:-3]
    command = calls(fake_stap)[0].split()
    assert command[:3] == ["-g", "-p4", "-DSTP_NO_OVERLOAD"]
    assert command[command.index("-r") + 1] == "6.1.0-56-amd64"


def test_a_different_program_or_runtime_is_a_different_module(fake_stap, tmp_path):
    backend = stap.StapBackend()
    icmp = build(PROBES_61, FlowFilter.parse(proto="icmp"))
    udp = build(PROBES_61, FlowFilter.parse(proto="udp"))
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    names = {backend.compile(icmp), backend.compile(udp),
             backend.compile(icmp, runtime=str(runtime)),
             backend.compile(icmp, release="6.1.0-99-amd64")}
    assert len(names) == 4
    assert "-R {}".format(runtime) in calls(fake_stap)[2]


def test_compile_out_builds_under_the_file_name(fake_stap, tmp_path):
    out = tmp_path / "lt_icmp.ko"
    path = stap.StapBackend().compile(build(PROBES_61), out=str(out))
    assert path == str(out) and out.read_text() == "module\n"
    command = calls(fake_stap)[0].split()
    assert command[command.index("-m") + 1] == "lt_icmp"


@pytest.mark.parametrize("name", ["icmp.ko", "lt_icmp", "lt_ICMP.ko", "lt_a;b.ko", "lt_.ko",
                                  "lt_" + "a" * 41 + ".ko", "lt_a\n.ko"])


def test_compile_out_name_must_be_a_module_name(fake_stap, tmp_path, name):
    with pytest.raises(UsageError):
        stap.StapBackend().compile(build(PROBES_61), out=str(tmp_path / name))


def test_compile_out_in_a_missing_folder_is_refused_before_stap_runs(fake_stap, tmp_path):
    with pytest.raises(UsageError, match="there is no folder"):
        stap.StapBackend().compile(build(PROBES_61), out=str(tmp_path / "no" / "lt_icmp.ko"))
    assert calls(fake_stap) == []


def test_compile_out_that_cannot_be_written_says_where_the_module_is(fake_stap, tmp_path):
    (tmp_path / "lt_icmp.ko").mkdir()             # a folder where the file should go
    with pytest.raises(LegacytraceError, match="cannot write the module to .*lt_icmp.ko: .* in "):
        stap.StapBackend().compile(build(PROBES_61), out=str(tmp_path / "lt_icmp.ko"))


def test_compile_failure_names_the_error(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "stap"
    script.write_text('#!/bin/sh\n[ "$1" = "-V" ] && { echo v; exit 0; }\n'
                      'echo "x.c:1:2: error: unknown type name" >&2\n'
                      'echo "Pass 4: compilation failed." >&2\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "{}:{}".format(bindir, os.environ["PATH"]))
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(LegacytraceError) as info:
        stap.StapBackend().compile(build(PROBES_61))
    assert "error: unknown type name" in str(info.value)
    assert ("this program's module is not in the cache" in str(info.value)
            and "legacytrace build -r 6.1.0-56-amd64 -o lt_NAME.ko" in str(info.value)
            and "--stap-module" in str(info.value))
    assert os.listdir(str(tmp_path / "cache")) == [], "a failed compile leaves nothing behind"


LAB = "6.1.0-56-amd64"


def cache_module(root, release, key="0123456789abcdef"):
    """A cache entry as compile() leaves it: KEY/lt_KEY.ko beside its script."""
    folder = root / key
    folder.mkdir(parents=True)
    program = stap.StapBackend().build(stap_request(release))
    (folder / "lt_{}.stp".format(key)).write_text(program.text)
    (folder / "lt_{}.ko".format(key)).write_bytes(b"module")


def stap_request(release):
    from legacytrace.flowfilter import FlowFilter
    from legacytrace.model import Probe, TraceRequest
    return TraceRequest([Probe("ip_rcv", 1)], FlowFilter(), HostFacts(release=release),
                        run_id="lt4242")


def test_cached_modules_are_those_compiled_for_the_release(tmp_path, monkeypatch):
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "cache"))
    assert stap_cache.cached_modules(LAB) == []
    assert not os.path.exists(str(tmp_path / "cache")), "looking must not create the cache"
    cache_module(tmp_path / "cache", LAB)
    cache_module(tmp_path / "cache", "3.10.0-1160.el7.x86_64", key="fedcba9876543210")
    (tmp_path / "cache" / "stray").write_text("not a folder")
    (tmp_path / "cache" / ".lt_x.tmp").mkdir()
    found = stap_cache.cached_modules(LAB)
    assert found == [str(tmp_path / "cache" / "0123456789abcdef" / "lt_0123456789abcdef.ko")]
    host = saved_host("lab-6.1.json")
    assert stap.StapBackend().check(host).available
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert not stap.StapBackend().check(host).available


def test_ready_for_a_request_whose_module_is_cached_or_can_be_built(tmp_path, monkeypatch):
    """Auto selection asks `ready()` once the program exists: a cache of other requests'
    modules makes stap available, but not for every request (the lab guest has no headers)."""
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "cache"))
    backend = stap.StapBackend()
    host = saved_host("lab-6.1.json")
    program = backend.build(stap_request(LAB))
    why = backend.ready(program, host)
    assert "not in the cache" in why and "legacytrace build -r {}".format(LAB) in why
    module = stap_cache.module_path(program)[0]
    os.makedirs(os.path.dirname(module))
    with open(module, "wb") as handle:
        handle.write(os.path.basename(module)[:-3].encode("ascii") + b"\0")
    assert backend.ready(program, host) is None
    other = backend.build(stap_request("3.10.0-1160.el7.x86_64"))
    assert backend.ready(other, saved_host("el7-3.10.json")) is None  # headers and gcc
    assert backend.ready(backend.module_program(module), host) is None          # --stap-module


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
