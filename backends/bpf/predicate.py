"""The flow filter's expression (legacytrace.filterexpr) as a bpftrace predicate, and the
process filter's (legacytrace.procfilter).

The program reads each packet into $family (0, 4 or 6), $proto, the address words $s0 $s1
$d0 $d1 (IPv4: one u32 each; IPv6: two u64, as a little-endian CPU reads the header's bytes)
and $sport $dport (-1 where there are none), and prints those same values: the predicate
tests what the event will carry, so it keeps what user space keeps. Where the event cannot
tell (no tuple, no ports) the predicate may answer either way: user space drops what it
cannot tell.
"""
import struct

from legacytrace import filterexpr as fx
from legacytrace.kernel.context import PF_KTHREAD

_U32 = struct.Struct("<I")
_U64X2 = struct.Struct("<QQ")
_SIDES = {fx.SRC: ("$s", "$sport"), fx.DST: ("$d", "$dport")}


def predicate(expr):
    """The bpftrace condition for a checked expression, or None for no expression."""
    return None if expr is None else _condition(expr)


def combined(expr, processes):
    """The condition of a checked expression and a checked process filter together, or None."""
    parts = [part for part in (predicate(expr), process_predicate(processes)) if part]
    return " && ".join(parts) or None


def process_predicate(processes):
    """The processes' task-context events (`pid` is the thread group's) and every event a
    process filter cannot judge in the kernel: an interrupt's, whose packet user space
    gives its owner, and a kernel thread's (ksoftirqd runs softirqs on its own stack).
    $ctx is the context the probe found (templates/bpftrace.bt.j2); None: no filter."""
    if processes is None or processes.is_empty():
        return None
    terms = ["$ctx != 0", "(curtask->flags & {:#x}) != 0".format(PF_KTHREAD)]
    terms += ["pid == {}".format(pid) for pid in sorted(processes.pids)]
    terms += ['comm == "{}"'.format(comm) for comm in sorted(processes.comms)]
    return "(" + " || ".join(terms) + ")"


def _condition(expr):
    kind = type(expr)
    if kind in (fx.And, fx.Or):
        joiner = " && " if kind is fx.And else " || "
        return "(" + joiner.join(_condition(term) for term in expr.terms) + ")"
    if kind is fx.Not:
        return "!" + _parenthesized(_condition(expr.term))
    if kind is fx.Family:
        return "$family == {}".format(expr.version)
    if kind is fx.Proto:
        family = "$family != 0" if expr.version is None else "$family == {}".format(expr.version)
        return "({} && $proto == {})".format(family, expr.number)
    if kind is fx.Net:
        return _sides(expr.direction, lambda side: _net(_SIDES[side][0], expr.network))
    protos = fx.PORT_PROTOS if expr.proto is None else (expr.proto,)
    return "(({}) && {})".format(" || ".join("$proto == {}".format(p) for p in protos), _sides(
        expr.direction, lambda side: _range(_SIDES[side][1], expr.low, expr.high)))


def _parenthesized(text):
    return text if text.startswith("(") and text.endswith(")") else "(" + text + ")"


def _sides(direction, test):
    if direction in (fx.SRC, fx.DST):
        return test(direction)
    return "({} {} {})".format(test(fx.SRC), "||" if direction == fx.EITHER else "&&",
                               test(fx.DST))


def _net(prefix, network):
    """The address words of one side (`$s` or `$d`) within `network`, masked as read."""
    terms = ["$family == {}".format(network.version)]
    if network.version == 4:
        masks = (_U32.unpack(network.netmask.packed)[0],)
        values = (_U32.unpack(network.network_address.packed)[0],)
    else:
        masks = _U64X2.unpack(network.netmask.packed)
        values = _U64X2.unpack(network.network_address.packed)
    terms += ["({}{} & {:#x}) == {:#x}".format(prefix, index, mask, value)
              for index, (mask, value) in enumerate(zip(masks, values)) if mask]
    return "(" + " && ".join(terms) + ")"


def _range(variable, low, high):
    if low == high:
        return "{} == {}".format(variable, low)
    return "({} >= {} && {} <= {})".format(variable, low, variable, high)
