"""The stap check: compiling needs headers and gcc, running a cached or prebuilt module does not.

Hosts are the saved facts of tests/data/hosts/ (the lab guest has no kernel headers).
"""
import json
import os

from legacytrace.backends import stap
from legacytrace.backends.stap import check as stap_check
from legacytrace.backends.stap import cache as stap_cache
from legacytrace.kernel.host import HostFacts

LAB = "6.1.0-56-amd64"


def saved_host(datadir, name):
    return HostFacts.from_dict(json.loads((datadir / "hosts" / name).read_text()))


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


def test_without_headers_and_cache_both_ways_out_are_named(datadir):
    verdict = stap_check.check(saved_host(datadir, "lab-6.1.json"))
    assert not verdict.available
    assert verdict.reason.startswith("no kernel headers for {} (apt-get install linux-headers-{})"
                                     .format(LAB, LAB))
    assert "legacytrace build -r {} -o lt_NAME.ko".format(LAB) in verdict.reason
    assert "--stap-module" in verdict.reason


def test_cached_modules_let_stap_run_without_headers(datadir):
    verdict = stap_check.check(saved_host(datadir, "lab-6.1.json"), cached=2)
    assert verdict.available
    assert "runs the 2 module(s) compiled before for {}".format(LAB) in verdict.reason
    assert "cannot compile new ones: no kernel headers" in verdict.reason


def test_a_cache_does_not_hide_what_no_module_can_overcome(datadir):
    """The 6.18 development kernel loads no modules at all: no hint about building elsewhere."""
    verdict = stap_check.check(saved_host(datadir, "fc-6.18.json"), cached=3)
    assert not verdict.available
    assert "CONFIG_MODULES" in verdict.reason and "--stap-module" not in verdict.reason


def test_el7_with_kernel_devel_compiles(datadir):
    verdict = stap_check.check(saved_host(datadir, "el7-3.10.json"))
    assert verdict.available and verdict.reason.startswith("stap 4.0 builds against")


def test_cached_modules_are_those_compiled_for_the_release(tmp_path, monkeypatch, datadir):
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "cache"))
    assert stap_cache.cached_modules(LAB) == []
    assert not os.path.exists(str(tmp_path / "cache")), "looking must not create the cache"
    cache_module(tmp_path / "cache", LAB)
    cache_module(tmp_path / "cache", "3.10.0-1160.el7.x86_64", key="fedcba9876543210")
    (tmp_path / "cache" / "stray").write_text("not a folder")
    (tmp_path / "cache" / ".lt_x.tmp").mkdir()
    found = stap_cache.cached_modules(LAB)
    assert found == [str(tmp_path / "cache" / "0123456789abcdef" / "lt_0123456789abcdef.ko")]
    host = saved_host(datadir, "lab-6.1.json")
    assert stap.StapBackend().check(host).available
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert not stap.StapBackend().check(host).available


def test_ready_for_a_request_whose_module_is_cached_or_can_be_built(tmp_path, monkeypatch, datadir):
    """Auto selection asks `ready()` once the program exists: a cache of other requests'
    modules makes stap available, but not for every request (the lab guest has no headers)."""
    monkeypatch.setenv(stap_cache.CACHE_ENV, str(tmp_path / "cache"))
    backend = stap.StapBackend()
    host = saved_host(datadir, "lab-6.1.json")
    program = backend.build(stap_request(LAB))
    why = backend.ready(program, host)
    assert "not in the cache" in why and "legacytrace build -r {}".format(LAB) in why
    module = stap_cache.module_path(program)[0]
    os.makedirs(os.path.dirname(module))
    with open(module, "wb") as handle:
        handle.write(os.path.basename(module)[:-3].encode("ascii") + b"\0")
    assert backend.ready(program, host) is None
    other = backend.build(stap_request("3.10.0-1160.el7.x86_64"))
    assert backend.ready(other, saved_host(datadir, "el7-3.10.json")) is None  # headers and gcc
    assert backend.ready(backend.module_program(module), host) is None          # --stap-module
