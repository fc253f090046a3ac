"""Function discovery from BTF: which functions take a struct sk_buff *, and where.

Recorded prototypes (tests/data/discover/, from the BTF of the 6.1 lab kernel and of
this machine's 6.18 kernel) drive the pure logic; the live BTF, when present, checks
it against legacytrace.kernel.btf's own position lookup.
"""
import json
import os

import pytest

from conftest import DATA, require
from legacytrace import discover, manifest
from legacytrace.kernel import btf, symbols
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.kernel.release import KernelRelease


class RecordedBTF(object):
    """The part of legacytrace.kernel.btf.BTF that discovery uses, over a recorded capture."""

    def __init__(self, release):
        with open(os.path.join(DATA, "discover", "functions-{}.json".format(release))) as handle:
            self.facts = json.load(handle)

    def functions(self, wanted=None):
        for name, params in sorted(self.facts["functions"].items()):
            if params is not None and (wanted is None or wanted(name)):
                yield name, [tuple(param) for param in params]


@pytest.fixture(params=["6.1.0-56-amd64", "6.18.44-fc-v669"])
def recorded(request):
    return RecordedBTF(request.param)


def test_positions_of_the_ip_output_path(recorded):
    found = discover.skb_functions(recorded, r"^ip6?_(output|xmit|rcv)$")
    assert [(f.name, f.skb_pos, f.sk_pos) for f in found] == [
        ("ip6_output", 3, 2), ("ip6_xmit", 2, 1), ("ip_output", 3, 2), ("ip_rcv", 1, None)]
    assert found[0].prototype == \
        "ip6_output(struct net *net, struct sock *sk, struct sk_buff *skb)"


def test_pointer_to_pointer_is_not_an_skb():
    """__netif_receive_skb_core(struct sk_buff **pskb, ...) from 5.8: not probe-able as skb."""
    recorded = RecordedBTF("6.18.44-fc-v669")
    assert recorded.facts["functions"]["__netif_receive_skb_core"][0][1] == "struct sk_buff **"
    assert discover.skb_functions(recorded, "^__netif_receive_skb") == \
        discover.skb_functions(recorded, "^__netif_receive_skb$")
    # bfifo_enqueue(skb, sch, struct sk_buff **to_free): the first sk_buff * counts.
    assert [(f.skb_pos, f.sk_pos) for f in discover.skb_functions(recorded, "^bfifo_enqueue$")] \
        == [(1, None)]


def test_const_sock_counts_as_sock(recorded):
    (xmit,) = discover.skb_functions(recorded, "^ip6_xmit$")
    assert xmit.params[0][1] == "const struct sock *" and xmit.sk_pos == 1


def test_socket_only_functions_are_not_listed(recorded):
    assert discover.skb_functions(recorded, "^tcp_(connect|sendmsg)$") == []


def test_intersected_with_the_probeable_set():
    """On 6.18, BTF knows functions kallsyms lacks; only symbols can be probed."""
    recorded = RecordedBTF("6.18.44-fc-v669")
    kallsyms = set(n for n, t in recorded.facts["kallsyms"].items() if t)
    everything = [f.name for f in discover.skb_functions(recorded, "^ip_")]
    probeable = [f.name for f in discover.skb_functions(recorded, "^ip_", kallsyms)]
    assert set(probeable) == set(everything) & kallsyms
    assert "ip_rcv_core" in probeable
    recorded.facts["kallsyms"].pop("ip_rcv_core")
    kallsyms.discard("ip_rcv_core")
    assert "ip_rcv_core" not in [f.name for f in discover.skb_functions(recorded, "^ip_", kallsyms)]


def test_manifest_from_btf_loads_and_resolves(recorded):
    text = discover.manifest_from_btf("^ip_(rcv|output)$", recorded, release="6.1.0-56-amd64")
    assert "6.1.0-56-amd64" in text.splitlines()[0] and "'^ip_(rcv|output)$'" in text
    m = manifest.parse(text, "generated.yaml")
    probes = manifest.resolve(m, KernelRelease.parse("6.1.0-56-amd64")).probes
    assert [(p.name, p.skb_pos, p.sk_pos) for p in probes] == [
        ("ip_output", 3, 2), ("ip_rcv", 1, None)]


def test_nothing_found_says_what_to_do(recorded):
    with pytest.raises(LegacytraceError) as info:
        discover.manifest_from_btf("^no_such_function$", recorded)
    assert "no probe-able function" in str(info.value) and "list-functions --skb" in str(info.value)


def test_invalid_regex_is_a_usage_error(recorded):
    with pytest.raises(UsageError) as info:
        discover.skb_functions(recorded, "ip_(")
    assert "invalid REGEX 'ip_('" in str(info.value)


def test_kernel_without_btf_gets_a_clear_message(tmp_path):
    with pytest.raises(LegacytraceError) as info:
        discover.load_btf(str(tmp_path / "vmlinux"))
    assert "needs the kernel's BTF" in str(info.value) and "bundled manifest" in str(info.value)


def live():
    require(os.path.exists(btf.VMLINUX), "no BTF at " + btf.VMLINUX)
    functions = symbols.KernelFunctions(None)
    require(functions.known, "cannot read /proc/kallsyms")
    return discover.load_btf(), functions


def test_live_positions_agree_with_the_btf_reader():
    data, functions = live()
    found = discover.skb_functions(data, "^(ip6?|tcp|udp)_", functions)
    assert len(found) > 50
    for function in found:
        assert function.name in functions
        assert data.skb_position(function.name) == function.skb_pos, function
        sock = data.sock_position(function.name)
        assert function.sk_pos == (sock if sock and sock <= 6 else None), function


def test_live_generated_manifest_resolves_here():
    data, functions = live()
    text = discover.manifest_from_btf("^ip_(rcv|local_deliver|output)$", data, functions,
                                      os.uname().release)
    result = manifest.resolve(manifest.parse(text), KernelRelease.parse(os.uname().release),
                              exists=functions.__contains__, skb_position=data.skb_position)
    assert [p.name for p in result.probes] == ["ip_local_deliver", "ip_output", "ip_rcv"]
