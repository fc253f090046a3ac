"""legacytrace.enrich: what live events get in user space (drop reason names, return
address symbols, command lines).
"""
import os

from conftest import DATA
from legacytrace.enrich import Enricher
from legacytrace.kernel import symbols
from legacytrace.model import FlowEvent


TINY_BTF = os.path.join(DATA, "btf", "tiny.btf")


class NoCmdlines(object):
    def enrich_all(self, events):
        return list(events)


def kallsyms(datadir):
    with open(str(datadir / "hosts" / "kallsyms-6.18-excerpt.txt")) as handle:
        return symbols.Kallsyms(l for l in handle if not l.startswith("#"))


def test_kallsyms_names_addresses_with_offsets(datadir):
    table = kallsyms(datadir)
    assert table.name(0xffffffff81000000) == "srso_alias_untrain_ret"
    assert table.name(0xffffffff8124e0a0 + 0x1c) == "__pfx_x86_pmu_event_mapped+0x1c"
    assert table.name(0x1000) is None
    assert table.name(0xffffffffffff0000) is None  # far past the last symbol


def test_enricher_names_numbers_and_keeps_names(datadir):
    enrich = Enricher(NoCmdlines(), TINY_BTF, kallsyms=lambda: kallsyms(datadir))
    ev = FlowEvent(fields={"reason": 3, "caller": 0xffffffff81000004, "mark": 7})
    named = FlowEvent(fields={"reason": "NO_SOCKET", "caller": "ip_rcv+0x10"})
    assert enrich([ev, named]) == [ev, named]
    assert ev.fields == {"reason": "NO_SOCKET", "caller": "srso_alias_untrain_ret+0x4", "mark": 7}
    assert named.fields == {"reason": "NO_SOCKET", "caller": "ip_rcv+0x10"}


def test_enricher_keeps_unknown_numbers(datadir):
    enrich = Enricher(NoCmdlines(), None, kallsyms=lambda: symbols.Kallsyms(()))
    [ev] = enrich([FlowEvent(fields={"reason": 77, "caller": 0xffffffff81000004})])
    assert ev.fields == {"reason": 77, "caller": "0xffffffff81000004"}


def test_tables_are_read_only_when_needed():
    reads = []
    enrich = Enricher(NoCmdlines(), None, kallsyms=lambda: reads.append(1))
    enrich([FlowEvent(fields={"mark": 1}), FlowEvent()])
    assert reads == []
