"""The filter expression as a bpftrace predicate (backends/bpf/predicate.py): evaluated on
the values the program reads (tests/filtermodels.py), it answers as the reference evaluator
wherever the event tells, over expressions and events drawn with fixed seeds."""
import pytest

from filtermodels import bpftrace_holds, bpftrace_values, cases, random_event
from legacytrace import filterexpr as fx
from legacytrace.backends.bpf.predicate import predicate


@pytest.mark.parametrize("seed", range(4))
def test_the_predicate_keeps_what_user_space_keeps_and_drops_what_it_drops(seed):
    for rng, expr in cases(seed, 1500):
        text = predicate(expr)
        for _ in range(4):
            ev = random_event(rng)
            answer = fx.evaluate(expr, ev)
            if answer is not None:
                assert bpftrace_holds(text, bpftrace_values(ev)) == answer, (fx.text(expr), ev)


def test_words_are_compared_as_the_program_reads_them():
    text = predicate(fx.parse("src net 127.0.0.0/8 and dst host 10.1.2.3 and udp dst port 53"))
    assert "($s0 & 0xff) == 0x7f" in text and "($d0 & 0xffffffff) == 0x302010a" in text
    assert "$dport == 53" in text and "$proto == 17" in text
    six = predicate(fx.parse("net 2001:db8::/32"))
    assert "($s0 & 0xffffffff) == {:#x}".format(int.from_bytes(bytes.fromhex("20010db8"),
                                                                   "little")) in six
    assert "$s1" not in six                 # a /32 masks nothing of the second word
    assert predicate(None) is None


def test_negation_and_ranges():
    text = predicate(fx.parse("not (portrange 1000-2000 or icmp)"))
    assert text.startswith("!(") and "($sport >= 1000 && $sport <= 2000)" in text
