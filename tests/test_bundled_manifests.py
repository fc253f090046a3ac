"""The bundled manifests: they load, and resolve per kernel to what the sources say.

EXPECTED is the table read from the kernel sources (the comments in manifests/*.yaml
name the trees and files): for each kernel, every manifest's probes as
(name, skb_pos, sk_pos). The recorded BTF of the 6.1 lab kernel and of this machine's
6.18 kernel (tests/data/discover/) and, when present, the live BTF check the 6.x rows.
"""
import json
import os

import pytest

from conftest import DATA, require
from legacytrace import manifest
from legacytrace.kernel import btf, symbols
from legacytrace.kernel.release import KernelRelease

EL7 = "3.10.0-1160.el7.x86_64"
U310 = "3.10.105"
LAB = "6.1.0-56-amd64"
HERE = "6.18.44-fc-v669"
KERNELS = (EL7, U310, "4.4.155", "4.19.0", "5.10.44", LAB, HERE)

# Shared rows: the receive side that no kernel in the table changed.
_RX4 = [("tcp_v4_rcv", 1, None), ("udp_rcv", 1, None), ("icmp_rcv", 1, None)]
_RX6 = [("tcp_v6_rcv", 1, None), ("udpv6_rcv", 1, None), ("icmpv6_rcv", 1, None)]


def _generic(ip_rcv, deliver_finish, ip6_rcv, input_finish, local_out, output, finish,
             ip6_local_out, ip6_output, ip6_finish, xmit, drop):
    return ([("__netif_receive_skb", 1, None), ip_rcv, ("ip_local_deliver", 1, None),
             deliver_finish] + _RX4 +
            [ip6_rcv, ("ip6_input", 1, None), input_finish] + _RX6 +
            [local_out, output, finish, ("ip6_xmit", 2, 1), ip6_local_out, ip6_output,
             ip6_finish, xmit, drop])


def _okfn(name, form):
    """An okfn-style function: (skb) on upstream 3.10, (sk, skb) on EL7, (net, sk, skb) on 4.4+."""
    return {"u3.10": (name, 1, None), "el7": (name, 2, 1), "4.4": (name, 3, 2)}[form]


def _generic_for(form, rcv_core, xmit, drop):
    deliver = {"u3.10": ("ip_local_deliver_finish", 1, None),
               "el7": ("ip_local_deliver_finish", 2, None),
               "4.4": ("ip_local_deliver_finish", 3, None)}[form]
    finish6 = {"u3.10": ("ip6_input_finish", 1, None), "el7": ("ip6_input_finish", 2, None),
               "4.4": ("ip6_input_finish", 3, None)}[form]
    local_out = {"u3.10": ("ip_local_out", 1, None), "el7": ("ip_local_out_sk", 2, 1),
                 "4.4": ("ip_local_out", 3, 2)}[form]
    local_out6 = {"u3.10": ("ip6_local_out", 1, None), "el7": ("ip6_local_out_sk", 2, 1),
                  "4.4": ("ip6_local_out", 3, 2)}[form]
    return _generic(("ip_rcv_core", 1, None) if rcv_core else ("ip_rcv", 1, None), deliver,
                    ("ip6_rcv_core", 1, None) if rcv_core else ("ipv6_rcv", 1, None), finish6,
                    local_out, _okfn("ip_output", form), _okfn("ip_finish_output", form),
                    local_out6, _okfn("ip6_output", form), _okfn("ip6_finish_output", form),
                    xmit, drop)


def _senders(form):
    return [_okfn("ip_finish_output", form), _okfn("ip6_finish_output", form)]


_DEV_OLD, _DEV_NEW = ("dev_queue_xmit", 1, None), ("__dev_queue_xmit", 1, None)
_KFREE = ("kfree_skb", 1, None)
_OLD_SENDMSG, _NEW_SENDMSG = [("tcp_sendmsg", None, 2)], [("tcp_sendmsg", None, 1)]

EXPECTED = {
    EL7: {"generic": _generic_for("el7", False, _DEV_OLD, _KFREE),
          "icmp-senders": _senders("el7"), "http1": _OLD_SENDMSG, "drops": [_KFREE]},
    U310: {"generic": _generic_for("u3.10", False, _DEV_OLD, _KFREE),
           "icmp-senders": _senders("u3.10"), "http1": _OLD_SENDMSG, "drops": [_KFREE]},
    "4.4.155": {"generic": _generic_for("4.4", False, _DEV_OLD, _KFREE),
                "icmp-senders": _senders("4.4"), "http1": _NEW_SENDMSG, "drops": [_KFREE]},
    "4.19.0": {"generic": _generic_for("4.4", True, _DEV_OLD, _KFREE),
               "icmp-senders": _senders("4.4"), "http1": _NEW_SENDMSG, "drops": [_KFREE]},
    "5.10.44": {"generic": _generic_for("4.4", True, _DEV_OLD, _KFREE),
                "icmp-senders": _senders("4.4"), "http1": _NEW_SENDMSG, "drops": [_KFREE]},
    LAB: {"generic": _generic_for("4.4", True, _DEV_NEW, ("kfree_skb_reason", 1, None)),
          "icmp-senders": _senders("4.4"), "http1": _NEW_SENDMSG,
          "drops": [("kfree_skb_reason", 1, None)]},
    HERE: {"generic": _generic_for("4.4", True, _DEV_NEW, ("sk_skb_reason_drop", 2, 1)),
           "icmp-senders": _senders("4.4"), "http1": _NEW_SENDMSG,
           "drops": [("sk_skb_reason_drop", 2, 1)]},
}
for _rows in EXPECTED.values():
    _rows["tcp-connect"] = [("tcp_connect", None, 1)]

#: Extra arguments per kernel: where tcp_sendmsg's msghdr and the drop reason are.
EXPECTED_ARGS = {EL7: ({"msg": 3}, {}), U310: ({"msg": 3}, {}), "4.4.155": ({"msg": 2}, {}),
                 "4.19.0": ({"msg": 2}, {}), "5.10.44": ({"msg": 2}, {}),
                 LAB: ({"msg": 2}, {"reason": 2}), HERE: ({"msg": 2}, {"reason": 3})}

ARG_C_TYPES = {"msg": ("struct msghdr *",), "reason": ("enum skb_drop_reason",)}


def rows(probes):
    return [(p.name, p.skb_pos, p.sk_pos) for p in probes]


def test_the_expected_manifests_are_bundled():
    assert set(manifest.bundled_names()) == set(EXPECTED[EL7])


@pytest.mark.parametrize("name", sorted(EXPECTED[EL7]))
def test_bundled_manifest_loads_with_descriptions(name):
    m = manifest.load(name)
    assert m.name == name and m.description
    assert all(function.description for function in m.functions)


@pytest.mark.parametrize("release", KERNELS)
@pytest.mark.parametrize("name", sorted(EXPECTED[EL7]))
def test_resolves_to_what_the_sources_say(name, release):
    result = manifest.resolve(manifest.load(name), KernelRelease.parse(release))
    assert result.missing == []
    assert rows(result.probes) == EXPECTED[release][name]


@pytest.mark.parametrize("release", KERNELS)
def test_payload_and_reason_arguments(release):
    kernel = KernelRelease.parse(release)
    http = manifest.resolve(manifest.load("http1"), kernel).probes[0]
    drop = manifest.resolve(manifest.load("drops"), kernel).probes[0]
    assert (dict(http.args), dict(drop.args)) == EXPECTED_ARGS[release]
    assert http.peek == {"arg": "msg", "bytes": 64}
    assert drop.caller and drop.egress and dict(drop.fields) == {"mark": "skb.mark"}


def test_generic_ends_with_the_drop_as_only_egress():
    m = manifest.load("generic")
    assert [f.egress for f in m.functions] == [False] * (len(m.functions) - 1) + [True]


def recorded(release):
    with open(os.path.join(DATA, "discover", "functions-{}.json".format(release))) as handle:
        return json.load(handle)


def check_against_prototypes(probes, prototype):
    """Each probe's positions against `prototype(name)` -> [(param, C type)]."""
    for probe in probes:
        params = prototype(probe.name)
        types = [ctype for _name, ctype in params]
        skb = types.index("struct sk_buff *") + 1 if "struct sk_buff *" in types else None
        assert skb == probe.skb_pos, (probe.name, params)
        if probe.sk_pos is not None:
            assert types[probe.sk_pos - 1] in ("struct sock *", "const struct sock *"), \
                (probe.name, params)
        for arg, position in probe.args.items():
            assert types[position - 1] in ARG_C_TYPES[arg], (probe.name, arg, params)


@pytest.mark.parametrize("release", (LAB, HERE))
@pytest.mark.parametrize("name", sorted(EXPECTED[EL7]))
def test_recorded_btf_agrees(name, release):
    facts = recorded(release)
    functions = facts["functions"]
    symbols_known = facts.get("kallsyms", functions)
    result = manifest.resolve(manifest.load(name), KernelRelease.parse(facts["release"]),
                              exists=lambda n: symbols_known.get(n) is not None)
    assert result.missing == []
    assert rows(result.probes) == EXPECTED[release][name]
    check_against_prototypes(result.probes, lambda n: functions[n])


def test_recorded_6_18_has_no_old_drop_functions():
    """The brief's claim, checked on the record: from 6.11 both are inline wrappers."""
    facts = recorded(HERE)
    assert facts["kallsyms"]["kfree_skb"] is None and facts["kallsyms"]["kfree_skb_reason"] is None
    assert facts["kallsyms"]["sk_skb_reason_drop"] == "T"


@pytest.mark.parametrize("name", sorted(EXPECTED[EL7]))
def test_live_btf_agrees(name):
    require(os.path.exists(btf.VMLINUX), "no BTF at " + btf.VMLINUX)
    functions = symbols.KernelFunctions(None)
    require(functions.known, "cannot read /proc/kallsyms")
    data = btf.load()
    kernel = KernelRelease.parse(os.uname().release)
    result = manifest.resolve(manifest.load(name), kernel, exists=functions.__contains__,
                              skb_position=data.skb_position)
    assert result.missing == []
    check_against_prototypes(result.probes, data.func_params)
    if kernel.version >= (6, 11, 0):
        assert rows(result.probes) == EXPECTED[HERE][name]


@pytest.mark.parametrize("release, unread", [
    (EL7, ["kfree_skb: no reason on this kernel (the manifest reads it from sk_skb_reason_drop, "
           "kfree_skb_reason on others)"]),
    ("5.10.0-46-amd64", ["kfree_skb: no reason on this kernel (the manifest reads it from "
                         "sk_skb_reason_drop, kfree_skb_reason on others)"]),
    (LAB, []), (HERE, [])])
def test_what_a_kernel_cannot_give_is_said(release, unread):
    """drops before 5.17: kfree_skb has no reason argument; the CLI says so once."""
    resolution = manifest.resolve(manifest.load("drops"), KernelRelease.parse(release))
    assert resolution.unread == unread
    assert manifest.resolve(manifest.load("generic"), KernelRelease.parse(release)).unread == []
