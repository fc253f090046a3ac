"""Whether a host can run SystemTap (backends/stap/check.py), on recorded facts."""
from conftest import saved_host
from legacytrace.backends.stap import check as stap_check


LAB = "6.1.0-56-amd64"


def test_without_headers_and_cache_both_ways_out_are_named():
    verdict = stap_check.check(saved_host("lab-6.1.json"))
    assert not verdict.available
    assert verdict.reason.startswith("no kernel headers for {} (apt-get install linux-headers-{})"
                                     .format(LAB, LAB))
    assert "legacytrace build -r {} -o lt_NAME.ko".format(LAB) in verdict.reason
    assert "--stap-module" in verdict.reason


def test_cached_modules_let_stap_run_without_headers():
    verdict = stap_check.check(saved_host("lab-6.1.json"), cached=2)
    assert verdict.available
    assert "runs the 2 module(s) compiled before for {}".format(LAB) in verdict.reason
    assert "cannot compile new ones: no kernel headers" in verdict.reason


def test_a_cache_does_not_hide_what_no_module_can_overcome():
    """The 6.18 development kernel loads no modules at all: no hint about building elsewhere."""
    verdict = stap_check.check(saved_host("fc-6.18.json"), cached=3)
    assert not verdict.available
    assert "CONFIG_MODULES" in verdict.reason and "--stap-module" not in verdict.reason


def test_el7_with_kernel_devel_compiles():
    verdict = stap_check.check(saved_host("el7-3.10.json"))
    assert verdict.available and verdict.reason.startswith("stap 4.0 builds against")
