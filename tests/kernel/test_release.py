"""Kernel release parsing: every shape of `uname -r` the tool meets."""
import os

import pytest

from legacytrace.errors import UsageError
from legacytrace.kernel.release import KernelRelease, VersionRange, parse_version


@pytest.mark.parametrize("release, version, local, el", [
    ("3.10.0-1160.el7.x86_64", (3, 10, 0), "-1160.el7.x86_64", 7),
    ("3.10.0-123.el7.x86_64", (3, 10, 0), "-123.el7.x86_64", 7),
    ("4.18.0-513.5.1.el8_9.x86_64", (4, 18, 0), "-513.5.1.el8_9.x86_64", 8),
    ("4.19.0-27-amd64", (4, 19, 0), "-27-amd64", None),
    ("6.1.0-56-amd64", (6, 1, 0), "-56-amd64", None),
    ("6.18.44-fc-v595", (6, 18, 44), "-fc-v595", None),
    ("6.18.44-fc-v669", (6, 18, 44), "-fc-v669", None),
    ("5.15.0-91-generic", (5, 15, 0), "-91-generic", None),
    ("4.4", (4, 4, 0), "", None),
    ("6.8.0-rc3+", (6, 8, 0), "-rc3+", None),
])
def test_parse_release(release, version, local, el):
    kernel = KernelRelease.parse(release)
    assert kernel.version == version
    assert kernel.local == local
    assert kernel.el == el
    assert str(kernel) == release


def test_parse_running_release():
    release = os.uname().release
    kernel = KernelRelease.parse(release)
    assert release.startswith("{}.{}".format(kernel.major, kernel.minor))
    assert kernel.version >= (3, 10, 0)


def test_release_strips_whitespace():
    assert KernelRelease.parse("  6.1.0-56-amd64\n").version == (6, 1, 0)


@pytest.mark.parametrize("text", ["", None, "linux", "v6.1", "6", "el7.3.10"])
def test_bad_release(text):
    with pytest.raises(UsageError) as info:
        KernelRelease.parse(text)
    assert "kernel release" in str(info.value)


def test_versions_order_numerically():
    assert KernelRelease.parse("4.9.0").version < KernelRelease.parse("4.10.0").version
    assert KernelRelease.parse("3.10.0-1160.el7.x86_64").version < (4, 1)


@pytest.mark.parametrize("text, version", [("4.4", (4, 4, 0)), ("4.4.1", (4, 4, 1)),
                                           (" 3.10.0 ", (3, 10, 0))])
def test_parse_version(text, version):
    assert parse_version(text) == version


@pytest.mark.parametrize("text", ["4", "4.x", "4.4-rc1", ""])
def test_parse_version_rejects(text):
    with pytest.raises(UsageError):
        parse_version(text)


def test_version_range_is_half_open():
    r = VersionRange((4, 4, 0), (5, 17, 0))
    assert (4, 4, 0) in r
    assert (5, 16, 9) in r
    assert (5, 17, 0) not in r
    assert (3, 10, 0) not in r
    assert (3, 10, 0) in VersionRange(None, (4, 1, 0))
    assert (6, 18, 0) in VersionRange((5, 17, 0), None)
