"""Shared test helpers.

LEGACYTRACE_REQUIRE_KERNEL=1 turns a skip of a test that needs a kernel feature of
this host (BTF, tracefs, bpftrace, root) into a failure: CI must not pass by skipping.
"""
import os

import pytest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


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
