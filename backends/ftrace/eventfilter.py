"""The filter expression (legacytrace.filterexpr) as an ftrace event filter over fetched values.

An ftrace event filter compares a probe's fetched values with constants: `f0_p == 6 && (...)`.
This module compiles the expression into one, for kernels back to 3.10, whose filter takes
no `!` and no `&` and at most a page of text (docs/kernel-facts.md, "Event filters"). The
result may let through more than the expression, never less: user space checks every event
again with the reference evaluator, on what the event's lines tell.

Where the values come from is a *view*: the IP header of one family at a fixed place from
skb->data (IPView: on receive at L4 it is before data, at the device layer after the link
header), or the packet's struct sock (SockView). A probe has one view or several (a function
whose skb->data may point anywhere: each place it may point to), each with a guard of values
fetched in the same probe (the IP version and header length, skb->protocol, an Ethernet type,
the protocol byte the function implies), so that a packet laid out otherwise is passed to
user space, not dropped: an event passes when some view's guard holds and the expression
holds there, or when no guard holds.

Under a view the kernel knows less than user space does: an IPv4 header with options moves
the ports, an IPv6 extension header hides the protocol and the ports. So every primitive is
compiled twice, as a formula that holds whenever the primitive is true (for where it stands
un-negated) and one that holds whenever it is false (under a `not`); where the view cannot
tell, both hold. A primitive the reference evaluator calls unknown (None) may take any value:
an expression Kleene's logic calls true is true whatever its unknown parts are.
"""
import collections
import struct

from legacytrace import filterexpr as fx
from legacytrace.kernel.context import INTERRUPT_FLAGS_MIN

#: The IPv6 extension headers user space walks past (hop-by-hop, routing, fragment,
#: destination options; parse.decode_ip): behind them the kernel's
#: view of the protocol and the ports is unknown.
IPV6_EXTENSIONS = (0, 43, 44, 60)
#: skb->protocol (__be16) as a little-endian u16 fetch reads it; 0 before the IP layer sets it.
ETH_P_IP_LE = 0x0008
ETH_P_IPV6_LE = 0xdd86
#: The largest filter text a kernel takes: the write must fit in a page.
MAX_TEXT = 4095


class IPView(collections.namedtuple("IPView", "family at ethertype protos")):
    """An IP header of `family` (4 or 6) at skb->data + `at` (negative: before data).
    `ethertype`: the offset from skb->data of an Ethernet type field that must name the family
    (the device layer), or None. `protos`: IP protocols the function implies (the guard checks
    the protocol byte, or IPv6's next header), or () for any. An IPv4 view places the header
    only where it has no options (the guard checks it where `at` < 0)."""

    __slots__ = ()


class SockView(collections.namedtuple("SockView", "offsets proto")):
    """The tuple of the packet's struct sock: `offsets` of its struct sock_common members
    (skc_family, skc_rcv_saddr, skc_daddr, skc_num, skc_dport, and skc_v6_rcv_saddr and
    skc_v6_daddr or None where the layout lacks them); `proto` the IP protocol the function
    implies (tcp_connect: 6), or None."""

    __slots__ = ()


class Field(collections.namedtuple("Field", "name base at size bits")):
    """A value the filter reads: at byte `at` from `base` ("data": skb->data, "sk": the struct
    sock *), `size` bytes read little-endian; `bits` is (width, shift) of a bitfield of that
    container, or None."""

    __slots__ = ()


# --- formulas: True, False, ("cmp", name, op, value), ("and", terms), ("or", terms) ----------

_NEGATED = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}


def _cmp(name, op, value):
    return ("cmp", name, op, value)


def _junction(kind, terms):
    """`and`/`or` of `terms`, flattened, constants folded, repeats left out."""
    decisive = kind == "or"
    kept = []
    for term in terms:
        if term is decisive:
            return decisive
        if term is (not decisive):
            continue
        for each in (term[1] if term[0] == kind else (term,)):
            if each not in kept:
                kept.append(each)
    if not kept:
        return not decisive
    return kept[0] if len(kept) == 1 else (kind, tuple(kept))


def _and(*terms):
    return _junction("and", terms)


def _or(*terms):
    return _junction("or", terms)


def _negate(formula):
    """The exact negation of a formula (De Morgan, comparisons flipped): no `!` is needed."""
    if formula is True or formula is False:
        return not formula
    if formula[0] == "cmp":
        return _cmp(formula[1], _NEGATED[formula[2]], formula[3])
    return _junction("or" if formula[0] == "and" else "and", [_negate(t) for t in formula[1]])


def _any_of(name, values):
    return _or(*[_cmp(name, "==", value) for value in values])


def render(formula):
    """The filter text of a formula; sub-formulas of the other junction in parentheses."""
    if formula is True or formula is False:
        raise ValueError("a constant formula has no filter text")
    if formula[0] == "cmp":
        return "{} {} {}".format(formula[1], formula[2], formula[3])
    inner = [render(t) if t[0] == "cmp" else "(" + render(t) + ")" for t in formula[1]]
    return (" && " if formula[0] == "and" else " || ").join(inner)


# --- values of a view ------------------------------------------------------------------------

def _le(data):
    """Big-endian bytes as the number a little-endian fetch of them reads."""
    return int.from_bytes(data, "little")


class _Fields(object):
    """The fields a compilation asks for, by name, each asked once."""

    def __init__(self):
        self.fields = collections.OrderedDict()

    def get(self, name, base, at, size, bits=None):
        self.fields.setdefault(name, Field(name, base, at, size, bits))
        return name


def _prefix_terms(fields, name, base, at, packed, length):
    """Comparisons that hold exactly when the `length` leading bits of the address at `at`
    equal those of `packed`: whole words compare as such, a partial one as bitfields of its
    whole bytes and of the top bits of the next byte (a little-endian word holds byte k in
    bits 8k..8k+7)."""
    terms = []
    word = 4 if len(packed) == 4 else 8
    for start in range(0, len(packed), word):
        bits = max(0, min(length - start * 8, word * 8))
        chunk = packed[start:start + word]
        label = "{}{}".format(name, start // word if word == 8 else "")
        if bits == word * 8:
            terms.append(_cmp(fields.get(label, base, at + start, word), "==", _le(chunk)))
            continue
        whole, rest = divmod(bits, 8)
        if whole:
            terms.append(_cmp(_bitfield(fields, label, base, at + start, word, whole * 8, 0),
                              "==", _le(chunk[:whole])))
        if rest:
            terms.append(_cmp(_bitfield(fields, label, base, at + start, word, rest,
                                        whole * 8 + 8 - rest), "==", chunk[whole] >> (8 - rest)))
    return terms


def _bitfield(fields, label, base, at, size, width, shift):
    """A bitfield of the word at `at`, named after its place: `LABELb<shift>_<width>`."""
    return fields.get("{}b{}_{}".format(label, shift, width), base, at, size, (width, shift))


class _Values(object):
    """What one view reads and how each primitive compiles there; `known()` answers the
    primitives whose value the view knows without reading anything."""

    def __init__(self, fields, prefix):
        self.fields = fields
        self.prefix = prefix

    def name(self, what):
        return self.prefix + what

    # The directions of a side test: SRC, DST, either or both of them.
    @staticmethod
    def sides(direction, positive, test):
        """`test(side, positive)` combined for `direction`, for where the primitive stands."""
        if direction in (fx.SRC, fx.DST):
            return test(direction, positive)
        either = direction == fx.EITHER
        combine = _or if either == positive else _and
        return combine(test(fx.SRC, positive), test(fx.DST, positive))


class _IPValues(_Values):
    """A view of an IP header at skb->data + view.at."""

    def __init__(self, fields, prefix, view):
        super(_IPValues, self).__init__(fields, prefix)
        self.view = view
        at = view.at
        self.version = fields.get(self.name("v"), "data", at, 1)
        self.proto = fields.get(self.name("p"), "data", at + (9 if view.family == 4 else 6), 1)
        self.addresses = {fx.SRC: at + (12 if view.family == 4 else 8),
                          fx.DST: at + (16 if view.family == 4 else 24)}
        self.ports_at = at + (20 if view.family == 4 else 40)

    def guard(self, eth):
        """What holds when the view is the packet's layout."""
        view = self.view
        if view.family == 4:
            # version 4 and the header's length: 5 words where data is past the header
            terms = [_cmp(self.version, "==", 0x45)] if view.at < 0 else [
                _cmp(self.version, ">=", 0x45), _cmp(self.version, "<=", 0x4f)]
            eth_le = ETH_P_IP_LE
        else:
            terms = [_cmp(self.version, ">=", 0x60), _cmp(self.version, "<=", 0x6f)]
            eth_le = ETH_P_IPV6_LE
        if eth is not None:
            terms.append(_any_of(eth, (0, eth_le)))
        if view.ethertype is not None:
            terms.append(_cmp(self.fields.get(self.name("e"), "data", view.ethertype, 2), "==",
                              eth_le))
        if view.protos:
            terms.append(_any_of(self.proto, view.protos))
        return _and(*terms)

    def unsure(self):
        """When the view does not show the protocol and ports as user space will: an IPv4
        header with options, an IPv6 extension header."""
        if self.view.family == 4:
            return _cmp(self.version, "!=", 0x45)
        return _any_of(self.proto, IPV6_EXTENSIONS)

    def proto_in(self, protos):
        """The protocol byte is one of `protos`; constant where the guard checked it."""
        implied = self.view.protos
        if implied:
            if not set(implied) & set(protos):
                return False
            if set(implied) <= set(protos):
                return True
        return _any_of(self.proto, protos)

    def proto_is(self, number, positive):
        test = self.proto_in((number,))
        test = test if positive else _negate(test)
        # under a guard of implied protocols an IPv6 view has no extension header
        return test if self.view.family == 4 or self.view.protos else _or(test, self.unsure())

    def net(self, direction, network, positive):
        if network.version != self.view.family:
            return not positive
        packed = network.network_address.packed

        def test(side, positive):
            terms = _prefix_terms(self.fields, self.name(side[0]), "data", self.addresses[side],
                                  packed, network.prefixlen)
            exact = _and(*terms)
            return exact if positive else _negate(exact)
        return self.sides(direction, positive, test)

    def port(self, expr, positive):
        protos = fx.PORT_PROTOS if expr.proto is None else (expr.proto,)

        def test(side, positive):
            at = self.ports_at + (0 if side == fx.SRC else 2)
            exact = _port_range(self.fields, self.name(side[0] + "p"), "data", at,
                                expr.low, expr.high)
            return exact if positive else _negate(exact)
        compared = self.sides(expr.direction, positive, test)
        if positive:
            return _or(_and(self.proto_in(protos), compared), self.unsure()) \
                if self.view.family == 6 else \
                _and(self.proto_in(protos), _or(self.unsure(), compared))
        not_ported = _negate(self.proto_in(protos))
        return _or(not_ported, self.unsure(), compared)


def _port_range(fields, name, base, at, low, high):
    """The port at `at` (network order) within [low, high]: one comparison of the u16 for one
    port, else its two bytes compared in order (a little-endian read swaps them)."""
    if low == high:
        return _cmp(fields.get(name, base, at, 2), "==", _le(struct.pack(">H", low)))
    hi = fields.get(name + "h", base, at, 1)
    lo = fields.get(name + "l", base, at + 1, 1)
    above = _or(_cmp(hi, ">", low >> 8), _and(_cmp(hi, "==", low >> 8), _cmp(lo, ">=", low & 0xff)))
    below = _or(_cmp(hi, "<", high >> 8),
                _and(_cmp(hi, "==", high >> 8), _cmp(lo, "<=", high & 0xff)))
    return _and(above if low else True, below if high < 0xffff else True)


class _SockValues(_Values):
    """A view of the packet's struct sock, for one family (skc_family 2 or 10)."""

    def __init__(self, fields, prefix, view, family):
        super(_SockValues, self).__init__(fields, prefix)
        self.view = view
        self.family = family
        offsets = view.offsets
        if family == 4:
            self.addresses = {fx.SRC: offsets["skc_rcv_saddr"], fx.DST: offsets["skc_daddr"]}
        else:
            self.addresses = {fx.SRC: offsets.get("skc_v6_rcv_saddr"),
                              fx.DST: offsets.get("skc_v6_daddr")}

    def proto_is(self, number, positive):
        if self.view.proto is None:
            return True
        return (self.view.proto == number) == positive

    def net(self, direction, network, positive):
        if network.version != self.family:
            return not positive
        if None in self.addresses.values():
            return True                  # the layout does not know the IPv6 addresses
        packed = network.network_address.packed

        def test(side, positive):
            exact = _and(*_prefix_terms(self.fields, self.name(side[0]), "sk",
                                        self.addresses[side], packed, network.prefixlen))
            return exact if positive else _negate(exact)
        return self.sides(direction, positive, test)

    def port(self, expr, positive):
        protos = fx.PORT_PROTOS if expr.proto is None else (expr.proto,)
        if self.view.proto is not None and self.view.proto not in protos:
            return not positive
        offsets = self.view.offsets

        def test(side, positive):
            if side == fx.SRC:            # skc_num: the local port, in host order
                number = self.fields.get(self.name("sp"), "sk", offsets["skc_num"], 2)
                exact = _and(_cmp(number, ">=", expr.low), _cmp(number, "<=", expr.high))
            else:
                exact = _port_range(self.fields, self.name("dp"), "sk", offsets["skc_dport"],
                                    expr.low, expr.high)
            return exact if positive else _negate(exact)
        compared = self.sides(expr.direction, positive, test)
        return compared if self.view.proto is not None else True


def _formula(expr, values, positive):
    """A formula that holds whenever `expr` is true (`positive`) or false, under a view."""
    kind = type(expr)
    if kind is fx.Not:
        return _formula(expr.term, values, not positive)
    if kind in (fx.And, fx.Or):
        terms = [_formula(term, values, positive) for term in expr.terms]
        return _and(*terms) if (kind is fx.And) == positive else _or(*terms)
    if kind is fx.Family:
        return (expr.version == _family(values)) == positive
    if kind is fx.Proto:
        if expr.version is not None and expr.version != _family(values):
            return not positive
        return values.proto_is(expr.number, positive)
    if kind is fx.Net:
        return values.net(expr.direction, expr.network, positive)
    return values.port(expr, positive)


def _family(values):
    return values.view.family if isinstance(values, _IPValues) else values.family


class Compiled(collections.namedtuple("Compiled", "fields text left_out")):
    """The fields to fetch (Field, in order) and the filter text, or None: no filter (the
    expression keeps every event the probe can tell apart, or none was given). `left_out`:
    the views the kernel's page of filter text had no room for; events laid out so pass to
    user space."""

    __slots__ = ()


def compile_ip(expr, views, eth=None, limit=MAX_TEXT):
    """The filter of a probe whose IP header is where one of `views` (IPView, the likeliest
    first) says; `eth` is the name of a field already fetched with skb->protocol (a
    little-endian u16), or None. Views that do not fit in `limit` characters are left out,
    the last first: an event laid out as one of them passes, as where no guard holds."""
    if expr is None:
        return Compiled((), None, ())
    for kept in range(len(views), 0, -1):
        compiled = _compile_views(expr, views[:kept], eth)
        if compiled.text is None or len(compiled.text) <= limit:
            return compiled._replace(left_out=tuple(views[kept:]))
    return Compiled((), None, tuple(views))


def _compile_views(expr, views, eth):
    fields = _Fields()
    matches, guards = [], []
    for index, view in enumerate(views):
        values = _IPValues(fields, "f{}{}_".format(view.family, index), view)
        guard = values.guard(eth)
        guards.append(guard)
        matches.append(_and(guard, _formula(expr, values, True)))
    return _compiled(fields, _or(*(matches + [_and(*[_negate(g) for g in guards])])))


def compile_sock(expr, view):
    """The filter of a probe whose tuple is its struct sock's (SockView). A socket of neither
    family gives an event without a tuple, which no expression keeps."""
    if expr is None:
        return Compiled((), None, ())
    fields = _Fields()
    family = fields.get("fs_family", "sk", view.offsets["skc_family"], 2)
    alternatives = [_and(_cmp(family, "==", number), _formula(
        expr, _SockValues(fields, "fs{}_".format(version), view, version), True))
        for version, number in ((4, 2), (6, 10))]
    formula = _or(*alternatives)
    # no event of this probe can match: a comparison that never holds
    return _compiled(fields, _cmp(family, ">", 0xffff) if formula is False else formula)


def _compiled(fields, formula):
    if formula is True:
        return Compiled((), None, ())
    text = render(formula)
    used = [f for f in fields.fields.values() if _mentions(text, f.name)]
    return Compiled(tuple(used), text, ())


def _mentions(text, name):
    return any(word == name for word in text.replace("(", " ").replace(")", " ").split())


# --- the process filter ----------------------------------------------------------------------

#: The process filter's text takes at most half of a filter's page; the flow filter the rest.
PROCESS_TEXT_MAX = MAX_TEXT // 2


def process_filter(processes):
    """The filter text that keeps the events of a checked process filter's threads
    (common_pid is a thread id; ProcessFilter.threads) and every interrupt-context event,
    whose packet user space gives its owner (common_flags, legacytrace.kernel.context), or
    None: the kernel keeps every event. A comm is no field 3.10 filters on, so with --comm
    the kernel keeps all; and where the threads take more than PROCESS_TEXT_MAX characters."""
    if processes is None or not processes.pids or processes.comms:
        return None
    terms = ["common_flags >= {}".format(INTERRUPT_FLAGS_MIN)] + [
        "common_pid == {}".format(low) if low == high else
        "(common_pid >= {} && common_pid <= {})".format(low, high)
        for low, high in _runs(sorted(processes.threads))]
    text = " || ".join(terms)
    return text if len(text) <= PROCESS_TEXT_MAX else None


def _runs(numbers):
    """(first, last) of each run of consecutive numbers in a sorted list."""
    runs = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return [tuple(run) for run in runs]


def joined(process, flow):
    """One filter of both texts (either may be None)."""
    if process and flow:
        return "({}) && ({})".format(process, flow)
    return process or flow
