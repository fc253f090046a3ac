"""Manifest loading, validation (every error kind) and variant resolution."""
import pytest

from legacytrace import manifest
from legacytrace.errors import UsageError
from legacytrace.kernel.release import KernelRelease

EL7 = KernelRelease.parse("3.10.0-1160.el7.x86_64")
UPSTREAM_310 = KernelRelease.parse("3.10.105")
LAB = KernelRelease.parse("6.1.0-56-amd64")


def parse(text):
    return manifest.parse(text, "m.yaml")


def error(text):
    with pytest.raises(UsageError) as info:
        parse(text)
    return str(info.value)


def test_ipftrace_format_loads_unchanged(datadir):
    m = manifest.load(str(datadir / "manifests" / "ipftrace-style.yaml"))
    names = [f.label for f in m.functions]
    assert names[:3] == ["ip_rcv", "ip_local_out", "ip_output"]
    egress = [f.label for f in m.functions if f.egress]
    assert egress == ["ip_local_deliver_finish"]
    probes = manifest.resolve(m, LAB).probes
    assert [(p.name, p.skb_pos) for p in probes][:3] == [
        ("ip_rcv", 1), ("ip_local_out", 3), ("ip_output", 3)]


def test_bundled_generic_resolves_per_kernel():
    m = manifest.load("generic")
    assert m.source == "generic"
    by_kernel = {}
    for kernel in (EL7, UPSTREAM_310, LAB):
        probes = manifest.resolve(m, kernel).probes
        by_kernel[kernel.raw] = dict((p.name, p.skb_pos) for p in probes)
    assert by_kernel[EL7.raw]["ip_output"] == 2
    assert by_kernel[UPSTREAM_310.raw]["ip_output"] == 1
    assert by_kernel[LAB.raw]["ip_output"] == 3
    assert "kfree_skb_reason" in by_kernel[LAB.raw]
    assert "kfree_skb" in by_kernel[EL7.raw]


def test_variants_fall_back_when_symbol_missing():
    m = parse("""
functions:
  - variants:
      - {name: dev_queue_xmit, skb_pos: 1}
      - {name: __dev_queue_xmit, skb_pos: 1}
""")
    present = {"__dev_queue_xmit"}
    result = manifest.resolve(m, LAB, exists=present.__contains__)
    assert [p.name for p in result.probes] == ["__dev_queue_xmit"]
    result = manifest.resolve(m, LAB, exists=set().__contains__)
    assert result.probes == [] and result.missing == ["dev_queue_xmit"]


def test_sk_pos_description_fields_carried_to_probe():
    m = parse("""
functions:
  - name: tcp_sendmsg
    sk_pos: 1
    description: user data into a TCP socket
    fields: {state: sk.__sk_common.skc_state}
""")
    probe = manifest.resolve(m, LAB).probes[0]
    assert (probe.sk_pos, probe.skb_pos, probe.description) == (1, None, "user data into a TCP socket")
    assert dict(probe.fields) == {"state": "sk.__sk_common.skc_state"}


def test_btf_position_mismatch_names_the_right_one():
    m = parse("functions:\n  - {name: ip_output, skb_pos: 1}\n")
    with pytest.raises(UsageError) as info:
        manifest.resolve(m, LAB, skb_position=lambda name: 3)
    assert "ip_output takes its struct sk_buff * as argument 3, not 1" in str(info.value)
    assert "skb_pos: 3" in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("functions: [\n", "m.yaml: line 2 invalid YAML"),
    ("- a\n", "a manifest is a mapping"),
    ("functions: []\n", "'functions' must be a non-empty list"),
    ("functions:\n  - {name: ip_rcv, skb_pos: 1}\nextra: 1\n", "unknown key 'extra'"),
    ("functions:\n  - {name: ip_rcv, skb_pos: 1, egres: true}\n",
     "functions[0] (ip_rcv): unknown key 'egres'"),
    ("functions:\n  - ip_rcv\n", "functions[0]: an entry must be a mapping"),
    ("functions:\n  - {skb_pos: 1}\n", "'name' is missing"),
    ("functions:\n  - {name: ip_rcv, skb_pos: 7}\n", "skb_pos must be from 1 to 6"),
    ("functions:\n  - {name: ip_rcv, skb_pos: 0}\n", "skb_pos must be from 1 to 6"),
    ("functions:\n  - {name: ip_rcv, skb_pos: '1'}\n", "skb_pos must be an integer"),
    ("functions:\n  - {name: ip_rcv, skb_pos: true}\n", "skb_pos must be an integer"),
    ("functions:\n  - {name: ip_rcv, sk_pos: 1.5}\n", "sk_pos must be an integer"),
    ("functions:\n  - {name: ip_rcv}\n", "give skb_pos"),
    ("functions:\n  - {name: ip_rcv, skb_pos: 1, sk_pos: 1}\n", "skb_pos and sk_pos are both 1"),
    ("functions:\n  - {name: ip_rcv, skb_pos: 1, egress: 'yes'}\n", "egress must be true or false"),
    ("functions:\n  - {name: 'ip_rcv; rm -rf', skb_pos: 1}\n", "is not a kernel function name"),
    ("functions:\n  - {name: '1abc', skb_pos: 1}\n", "is not a kernel function name"),
    ("functions:\n  - {name: 12, skb_pos: 1}\n", "is not a kernel function name"),
    ("functions:\n  - {name: 'a\\\")%{', skb_pos: 1}\n", "is not a kernel function name"),
    ("functions:\n  - {name: " + "a" * 128 + ", skb_pos: 1}\n", "at most 127 characters"),
    ("functions:\n  - {name: ip_rcv, skb_pos: 1, variants: []}\n", "not both"),
    ("functions:\n  - {variants: []}\n", "'variants' must be a non-empty list"),
    ("functions:\n  - {variants: [{name: x, skb_pos: 1, kernel: '>4.4'}]}\n",
     "kernel condition '>4.4' not understood"),
    ("functions:\n  - {variants: [{name: x, skb_pos: 1, kernel: '>=5.0 <4.4'}]}\n",
     "kernel range '>=5.0 <4.4' is empty"),
    ("functions:\n  - {variants: [{name: x, skb_pos: 1, kernl: '>=5.0'}]}\n",
     "variants[0]: unknown key 'kernl'"),
    ("functions:\n  - {name: x, skb_pos: 1, fields: {len: 'skb->len'}}\n", "field len has path"),
    ("functions:\n  - {name: x, skb_pos: 1, fields: {Len: skb.len}}\n", "field name 'Len'"),
    ("functions:\n  - {name: x, skb_pos: 1, fields: [skb.len]}\n", "fields must be a mapping"),
    ("functions:\n  - {name: x, skb_pos: 1, description: [1]}\n", "description must be text"),
])
def test_validation_errors_name_file_entry_and_problem(text, expected):
    message = error(text)
    assert message.startswith("m.yaml")
    assert expected in message
    assert "\n" not in message


def test_symbol_suffixes_accepted():
    m = parse("functions:\n  - {name: tcp_v4_rcv.isra.0, skb_pos: 1}\n"
              "  - {name: ip_finish_output2.constprop.0.part.1, skb_pos: 3}\n")
    assert [f.label for f in m.functions] == ["tcp_v4_rcv.isra.0",
                                               "ip_finish_output2.constprop.0.part.1"]


def test_duplicate_after_resolution_is_an_error():
    m = parse("functions:\n  - {name: ip_rcv, skb_pos: 1}\n  - {name: ip_rcv, skb_pos: 1}\n")
    with pytest.raises(UsageError, match="ip_rcv is listed twice"):
        manifest.resolve(m, LAB)


def test_unknown_manifest_lists_bundled():
    with pytest.raises(UsageError) as info:
        manifest.load("no-such-manifest")
    assert "generic" in str(info.value)


def test_el_conditions():
    m = parse("""
functions:
  - variants:
      - {name: a, skb_pos: 1, kernel: el7}
      - {name: b, skb_pos: 1, kernel: '<4.4 !el7'}
      - {name: c, skb_pos: 1, kernel: '>=4.4'}
""")
    pick = lambda k: manifest.resolve(m, k).probes[0].name
    assert (pick(EL7), pick(UPSTREAM_310), pick(LAB)) == ("a", "b", "c")
