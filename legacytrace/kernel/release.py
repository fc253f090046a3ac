"""Kernel release strings and version ranges.

Releases come in many shapes: `3.10.0-1160.el7.x86_64` (EL7), `6.1.0-56-amd64`
(Debian), `6.18.44-fc-v595` (Firecracker), `4.4.0` (upstream). The version
decides only a first guess; features are detected at run time where a file tells.
"""
import collections
import re

from legacytrace.errors import UsageError

_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(.*)$")
_EL = re.compile(r"\.el(\d+)")


class KernelRelease(collections.namedtuple("KernelRelease", "major minor patch local raw")):
    """A parsed `uname -r`: the upstream version and the distribution's suffix."""

    __slots__ = ()

    @classmethod
    def parse(cls, release):
        """Parse `release`; raise UsageError for text that is not a kernel release."""
        text = (release or "").strip()
        match = _RELEASE.match(text)
        if not match:
            raise UsageError("not a kernel release: {!r} (expected e.g. 3.10.0-1160.el7.x86_64)"
                             .format(release))
        major, minor, patch, local = match.groups()
        return cls(int(major), int(minor), int(patch or 0), local, text)

    @property
    def version(self):
        return (self.major, self.minor, self.patch)

    @property
    def el(self):
        """The Enterprise Linux major (7 for `.el7`), or None for other kernels."""
        match = _EL.search(self.local)
        return int(match.group(1)) if match else None

    def __str__(self):
        return self.raw


def parse_version(text):
    """`"4.4"` or `"4.4.1"` -> (4, 4, 0) / (4, 4, 1); raise UsageError otherwise."""
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?$", str(text).strip())
    if not match:
        raise UsageError("not a kernel version: {!r} (expected e.g. 4.4 or 3.10.0)".format(text))
    major, minor, patch = match.groups()
    return (int(major), int(minor), int(patch or 0))


class VersionRange(collections.namedtuple("VersionRange", "min max")):
    """A half-open range [min, max) of kernel versions; either end may be None (open)."""

    __slots__ = ()

    def __contains__(self, version):
        if self.min is not None and version < self.min:
            return False
        if self.max is not None and version >= self.max:
            return False
        return True
