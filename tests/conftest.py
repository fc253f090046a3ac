"""Shared test helpers: where the test data is, recorded hosts, golden files.

LEGACYTRACE_REQUIRE_KERNEL=1 turns a skip of a test that needs a kernel feature of
this host (BTF, tracefs, bpftrace, root) into a failure: CI must not pass by skipping.

Golden files live under tests/golden/. After an intended change of what they hold,
regenerate them with `LEGACYTRACE_REGEN_GOLDEN=1 .venv/bin/pytest -q tests` and review
the diff before committing it.
"""
import io
import json
import os

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(TESTS, "data")
GOLDEN = os.path.join(TESTS, "golden")
REGEN_ENV = "LEGACYTRACE_REGEN_GOLDEN"


@pytest.fixture
def datadir():
    import pathlib
    return pathlib.Path(DATA)


def require(condition, reason):
    """Skip (or fail, under LEGACYTRACE_REQUIRE_KERNEL=1) unless `condition` holds."""
    if condition:
        return
    if os.environ.get("LEGACYTRACE_REQUIRE_KERNEL") == "1":
        pytest.fail("required kernel feature missing: " + reason)
    pytest.skip(reason)


def golden(name, text):
    """Assert that `text` is the golden file tests/golden/`name` (rewritten first under
    LEGACYTRACE_REGEN_GOLDEN=1)."""
    path = os.path.join(GOLDEN, name)
    if os.environ.get(REGEN_ENV) == "1":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with io.open(path, "w", encoding="utf-8") as out:
            out.write(text)
    with io.open(path, encoding="utf-8") as expected:
        assert text == expected.read(), "{} differs: regenerate with {}=1 and review the " \
                                        "diff".format(path, REGEN_ENV)


def saved_host(name, **changes):
    """HostFacts saved from a real host or constructed from documented facts
    (tests/data/hosts/`name`), with `changes` applied."""
    from legacytrace.kernel.host import HostFacts
    with open(os.path.join(DATA, "hosts", name)) as handle:
        facts = json.load(handle)
    facts.update(changes)
    return HostFacts.from_dict(facts)


def recorded(name, **changes):
    """saved_host of tests/data/hosts/`name`.json."""
    return saved_host(name + ".json", **changes)


def pure_checks():
    """{name: check(host)} of the backends' own checks, judged by the host's facts alone
    (no struct layout, no module cache): recorded hosts give stable answers."""
    from legacytrace.backends.bpf import check as bpf_check
    from legacytrace.backends.ftrace import check as ftrace_check
    from legacytrace.backends.stap import check as stap_check
    return {"stap": stap_check.check, "ftrace": ftrace_check.check, "bpf": bpf_check.check}


#: Tests that give a file to another user need root.
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="gives a file to another user: needs root")
#: The user nobody, whom such a test gives a file.
NOBODY = 65534


@pytest.fixture
def folder(tmp_path):
    """A private folder (pytest's are 0700) whose parents are safe for this user."""
    path = tmp_path / "safe"
    path.mkdir(mode=0o700)
    return path


def host_text(name):
    """The text of a file recorded from a host (tests/data/hosts/`name`)."""
    with open(os.path.join(DATA, "hosts", name)) as handle:
        return handle.read()
