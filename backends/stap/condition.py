"""The flow filter's expression (legacytrace.filterexpr) as the C condition of lt_flow_match(),
and the process filter (legacytrace.procfilter) as a condition of the script language.

The embedded C parses each packet into a `struct lt_pkt` (family 0, 4 or 6; the protocol,
-1 where unknown; the addresses as bytes in network order; the ports, -1 where there are
none), and the event carries those same values: the condition tests what the event will
carry, so it keeps what user space keeps. Where the event cannot tell (no tuple, no ports)
the condition may answer either way: user space drops what it cannot tell.
"""
import collections

from legacytrace import filterexpr as fx


class Condition(collections.namedtuple("Condition", "text nets")):
    """The C expression over `p` (a const struct lt_pkt *), and the networks it names: each
    {"name", "bytes", "net", "mask"} for a pair of static arrays (net, mask: 16 numbers)."""

    __slots__ = ()


def process_condition(processes):
    """The script condition that a task is one of a checked process filter's (pid() is the
    thread group's, execname() the task's comm), or None for no filter. The comms hold no
    quote or backslash (legacytrace.validate.COMM_RE)."""
    if processes is None or processes.is_empty():
        return None
    return " || ".join(["pid() == {}".format(pid) for pid in sorted(processes.pids)]
                       + ['execname() == "{}"'.format(comm) for comm in sorted(processes.comms)])


def condition(expr):
    """The Condition for a checked expression, or None for no expression."""
    if expr is None:
        return None
    nets = []
    return Condition(_condition(expr, nets), nets)


def _condition(expr, nets):
    kind = type(expr)
    if kind in (fx.And, fx.Or):
        joiner = " && " if kind is fx.And else " || "
        return "(" + joiner.join(_condition(term, nets) for term in expr.terms) + ")"
    if kind is fx.Not:
        inner = _condition(expr.term, nets)
        return "!" + (inner if inner.startswith("(") else "(" + inner + ")")
    if kind is fx.Family:
        return "p->family == {}".format(expr.version)
    if kind is fx.Proto:
        family = "p->family != 0" if expr.version is None else "p->family == {}".format(
            expr.version)
        return "({} && p->proto == {})".format(family, expr.number)
    if kind is fx.Net:
        name = _network(expr.network, nets)
        return _sides(expr.direction, lambda side: "(p->family == {} && lt_addr_in(p->{}addr, "
                      "lt_{}_net, lt_{}_mask, {}))".format(expr.network.version, side, name, name,
                                                           len(expr.network.network_address.packed)))
    protos = fx.PORT_PROTOS if expr.proto is None else (expr.proto,)
    return "(({}) && {})".format(" || ".join("p->proto == {}".format(p) for p in protos), _sides(
        expr.direction, lambda side: _range("p->{}port".format(side), expr.low, expr.high)))


def _network(network, nets):
    """The name of the static arrays of `network` (one pair per distinct network)."""
    for known in nets:
        if known["network"] == network:
            return known["name"]
    name = "n{}".format(len(nets))
    nets.append({"name": name, "network": network, "bytes": len(network.network_address.packed),
                 "net": _bytes16(network.network_address.packed),
                 "mask": _bytes16(network.netmask.packed)})
    return name


def _bytes16(packed):
    return list(bytearray(packed)) + [0] * (16 - len(packed))


def _sides(direction, test):
    """`test("s")`/`test("d")` for the side(s) `direction` names (p->saddr/p->sport...)."""
    if direction in (fx.SRC, fx.DST):
        return test(direction[0])
    return "({} {} {})".format(test("s"), "||" if direction == fx.EITHER else "&&", test("d"))


def _range(variable, low, high):
    if low == high:
        return "{} == {}".format(variable, low)
    return "({} >= {} && {} <= {})".format(variable, low, variable, high)
