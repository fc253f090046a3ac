"""Kernel function lookup from kallsyms and available_filter_functions."""
from legacytrace import symbols


def test_kallsyms_keeps_text_symbols_only(datadir):
    with open(str(datadir / "hosts" / "kallsyms-6.18-excerpt.txt")) as handle:
        lines = [l for l in handle if not l.startswith("#")]
    names = symbols.parse_kallsyms(lines)
    assert {"ip_rcv", "__dev_queue_xmit", "tcp_v4_rcv"} <= names
    data = [l.split()[2] for l in lines if l.split()[1] in "dDbB"]
    assert data and not names.intersection(data)
