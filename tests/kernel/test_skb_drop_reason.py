"""Drop reasons by name (legacytrace.kernel.skb_drop_reason), from BTF."""
import os

from conftest import DATA
from legacytrace.kernel import skb_drop_reason


TINY_BTF = os.path.join(DATA, "btf", "tiny.btf")


def test_short_names_follow_the_tracepoint():
    assert skb_drop_reason.short_name("SKB_DROP_REASON_NO_SOCKET") == "NO_SOCKET"
    assert skb_drop_reason.short_name("SKB_CONSUMED") == "CONSUMED"
    assert skb_drop_reason.short_name("OTHER") == "OTHER"


def test_reason_names_from_btf():
    assert skb_drop_reason.load(TINY_BTF)[3] == "NO_SOCKET"
    assert skb_drop_reason.load(None) == {}
    assert skb_drop_reason.load("/nonexistent/btf") == {}
