"""Kernel function lookup from kallsyms and available_filter_functions."""
from legacytrace.kernel import symbols


def test_kallsyms_keeps_text_symbols_only(datadir):
    with open(str(datadir / "hosts" / "kallsyms-6.18-excerpt.txt")) as handle:
        lines = [l for l in handle if not l.startswith("#")]
    names = symbols.parse_kallsyms(lines)
    assert {"ip_rcv", "__dev_queue_xmit", "tcp_v4_rcv"} <= names
    data = [l.split()[2] for l in lines if l.split()[1] in "dDbB"]
    assert data and not names.intersection(data)


def test_only_function_entries_are_listed(datadir):
    """kallsyms also holds cold parts, the padding before functions (__pfx_, 6.2+) and
    assembler labels: none is a function a manifest can probe."""
    with open(str(datadir / "hosts" / "kallsyms-6.18-excerpt.txt")) as handle:
        names = symbols.parse_kallsyms(l for l in handle if not l.startswith("#"))
    entries = set(n for n in names if symbols.is_entry(n))
    assert "disk_set_independent_access_ranges.cold" in names - entries
    assert "__pfx_x86_pmu_event_mapped" in names - entries
    assert {"ip_rcv", "lruvec_stat_mod_folio.constprop.0", "io_msg_copy_hdr.isra.0"} <= entries
    assert not any(symbols.is_entry(n) for n in (".E_copy", ".slowpath", "ip_rcv.cold.1"))
