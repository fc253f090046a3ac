"""Which kernel has which kprobe_events syntax (legacytrace.kernel.features), read from
real tracing/README files.
"""
import os

import pytest

from conftest import DATA
from legacytrace.kernel import features


HOSTS = os.path.join(DATA, "hosts")


def _text(name):
    with open(os.path.join(HOSTS, name)) as handle:
        return handle.read()


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
