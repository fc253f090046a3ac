"""Every bundled manifest resolves to functions the lab kernel has, with the right positions.

For each entry the variant that fits the kernel and that kallsyms lists is picked, as
`legacytrace trace` picks it; an entry is left out only when the kernel has none of the
functions its variants name (so no variant is gated away from a kernel that has it); and
where the kernel has BTF, each picked sk_buff position is the one in the function's prototype.
tests/test_bundled_manifests.py holds the same resolution to the kernel sources' table; this
holds it to the running kernel.
"""
import os

import pytest

import labkit

from legacytrace import manifest

from legacytrace.kernel import btf
from legacytrace.errors import LegacytraceError
from legacytrace.kernel.release import KernelRelease


def skb_position():
    """skb_position(name) from the kernel's BTF, or None without BTF (EL7)."""
    if not os.path.exists(labkit.BTF):
        return None
    types = btf.load(labkit.BTF)

    def position(name):
        try:
            return types.skb_position(name)
        except LegacytraceError:        # no prototype in BTF (a .isra clone): nothing to check
            return None
    return position


@pytest.mark.parametrize("name", manifest.bundled_names())
def test_bundled_manifest_resolves_to_functions_the_kernel_has(name):
    loaded = manifest.load(name)
    symbols = labkit.kernel_symbols()
    resolution = manifest.resolve(loaded, KernelRelease.parse(labkit.kernel_release()),
                                  exists=symbols.__contains__, skb_position=skb_position())
    assert resolution.probes, resolution.missing
    picked = {probe.name for probe in resolution.probes}
    assert picked <= symbols
    for entry in loaded.functions:
        names = {variant.name for variant in entry.variants}
        if not names & picked:
            assert not names & symbols, "{}: the kernel has {} but no variant fits it".format(
                entry.label, sorted(names & symbols))
