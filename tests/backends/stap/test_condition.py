"""The filter expression as lt_flow_match()'s C condition (backends/stap/condition.py):
evaluated on the struct lt_pkt the embedded C fills (tests/filtermodels.py), it answers as
the reference evaluator wherever the event tells, over expressions and events drawn with
fixed seeds."""
import pytest

from filtermodels import cases, random_event, stap_holds
from legacytrace import filterexpr as fx
from legacytrace.backends.stap.condition import condition


@pytest.mark.parametrize("seed", range(4))
def test_the_condition_keeps_what_user_space_keeps_and_drops_what_it_drops(seed):
    for rng, expr in cases(100 + seed, 1500):
        compiled = condition(expr)
        for _ in range(4):
            ev = random_event(rng)
            answer = fx.evaluate(expr, ev)
            if answer is not None:
                assert stap_holds(compiled, ev) == answer, (fx.text(expr), ev)


def test_each_distinct_network_gets_one_pair_of_arrays():
    compiled = condition(fx.parse("src net 10.0.0.0/8 or dst net 10.0.0.0/8 or host ::1"))
    assert [net["name"] for net in compiled.nets] == ["n0", "n1"]
    assert compiled.nets[0]["mask"][:4] == [255, 0, 0, 0] and compiled.nets[0]["bytes"] == 4
    assert "lt_addr_in(p->saddr, lt_n0_net, lt_n0_mask, 4)" in compiled.text
    assert "lt_addr_in(p->daddr, lt_n0_net, lt_n0_mask, 4)" in compiled.text
    assert condition(None) is None
