"""enum skb_drop_reason: why the kernel dropped a packet, by name.

kfree_skb_reason() (5.17, commit c504e5c2f964 "net: skb: introduce kfree_skb_reason()")
and sk_skb_reason_drop() (6.11) take an `enum skb_drop_reason`; its values are renumbered
between releases (the list is sorted by subsystem and grows), so a number means
something only with the enum of the kernel that produced it, read from its BTF. The
skb:kfree_skb tracepoint prints the same names without the `SKB_DROP_REASON_` prefix
(__print_symbolic in include/trace/events/skb.h): names here follow it, so that every
backend reports `NO_SOCKET` whether the kernel or legacytrace named it.
"""
from legacytrace.kernel import btf as btfmod

#: Prefixes the tracepoint drops: SKB_DROP_REASON_NO_SOCKET -> NO_SOCKET, and 6.0's
#: SKB_NOT_DROPPED_YET / SKB_CONSUMED -> NOT_DROPPED_YET / CONSUMED.
_PREFIXES = ("SKB_DROP_REASON_", "SKB_")


def short_name(enumerator):
    """`SKB_DROP_REASON_NO_SOCKET` -> `NO_SOCKET`, as the skb:kfree_skb tracepoint prints it."""
    for prefix in _PREFIXES:
        if enumerator.startswith(prefix):
            return enumerator[len(prefix):]
    return enumerator


def names(btf):
    """{value: short name} from a `btf.BTF`; {} on kernels without the enum (before 5.17)."""
    return dict((value, short_name(name))
                for value, name in btf.enum_values("skb_drop_reason").items())


def load(path):
    """names() of the BTF at `path`; {} when there is none or it cannot be read."""
    if not path:
        return {}
    try:
        return names(btfmod.load(path))
    except btfmod.BTFError:
        return {}
