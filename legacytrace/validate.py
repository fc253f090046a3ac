"""The one validator of what reaches generated code: kernel symbols, argument positions,
custom field names and paths, extra arguments, peeks, run ids, release names, the
flow filter and the process filter, each one rule in one place.

Generated code runs in the kernel or as root (guru-mode SystemTap C, kprobe_events,
bpftrace), so every value of a request is checked before a backend builds from it:
the manifest loader checks what it reads, `resolve` returns checked probes, and
`Backend.build` checks a whole request again (a request may be made by hand). A backend
then checks only its mechanism's own limits (kprobe_events' 128 arguments of 63
characters, names bpftrace's line keeps for itself, ...). Every failure is a UsageError
naming where the value came from.
"""
import collections
import ipaddress
import re

from legacytrace import filterexpr as fx
from legacytrace.errors import UsageError
from legacytrace.kernel import structs, tracepoints
from legacytrace.kernel.x86_64 import ARGS_IN_REGISTERS

#: A kernel symbol: a C identifier, optionally with the suffixes GCC gives clones.
SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(isra|constprop|part|cold|llvm)\.[0-9]+)*\Z")
#: kallsyms keeps names up to KSYM_NAME_LEN - 1 = 127 characters (before 6.1).
SYMBOL_MAX = 127
#: A custom field name: what it is called in the output.
FIELD_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,31}\Z")
#: A custom field path: an argument and its members, or skb_shinfo(skb) and its members.
FIELD_PATH_RE = re.compile(
    r"^(skb|sk|skb_shinfo\(skb\))(\.[a-z_][a-z0-9_]{0,63}){1,4}\Z")
#: The argument each root of a field path needs: skb_pos, else sk_pos (sk is also skb->sk).
FIELD_ROOT_NEEDS = {"skb": ("skb_pos",), "skb_shinfo(skb)": ("skb_pos",),
                    "sk": ("sk_pos", "skb_pos")}
#: The highest argument position a probe reads (x86_64 passes six in registers).
MAX_ARG_POS = ARGS_IN_REGISTERS
#: Extra arguments a variant may name (`args`), with the C type a backend reads them as.
ARG_TYPES = collections.OrderedDict([("msg", "struct msghdr *"),
                                     ("reason", "enum skb_drop_reason")])
#: `peek` reads user data through this kind of argument, at most this many bytes.
PEEK_ARGS = ("msg",)
PEEK_MAX = 128
#: A run id names what a run attaches (kprobe group `legacytrace_<id>`, a folder): lt<pid>.
RUN_ID_RE = re.compile(r"^[a-z0-9_]{1,32}\Z")
#: A `uname -r` text (or a build tree's name), as it may appear in programs and commands.
RELEASE_RE = re.compile(r"^[A-Za-z0-9_.+~-]{1,100}\Z")
#: What a probe may be: a function's entry or its return.
KINDS = ("entry", "return")
#: Process ids run below PID_MAX_LIMIT, 4 * 1024 * 1024 on 64-bit (include/linux/threads.h).
PID_LIMIT = 4 * 1024 * 1024
#: A comm the process filter may name: the kernel keeps 15 characters (TASK_COMM_LEN 16 with
#: its NUL); letters, digits, space and `_.:/@+=,~#-` (kworker/0:1, php-fpm, Web Content):
#: no quote or backslash can reach a string of generated code.
COMM_RE = re.compile(r"^[A-Za-z0-9_.:/@+=,~# -]{1,15}\Z")
#: What -p meant before it was the process id: a protocol name, which --proto now takes.
_PROTOCOL_WORDS = ("tcp", "udp", "icmp", "icmp6")


def symbol(name, where):
    """`name` if it is a plausible kernel function symbol, else UsageError."""
    if not isinstance(name, str) or not SYMBOL_RE.match(name) or len(name) > SYMBOL_MAX:
        raise UsageError("{}: {!r} is not a kernel function name (a C identifier, optionally "
                         "with .isra.N/.constprop.N/.part.N, at most {} characters)"
                         .format(where, name, SYMBOL_MAX))
    return name


def position(value, key, where):
    """A 1-based argument position 1..MAX_ARG_POS, or None; a bool is no number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError("{}: {} must be an integer from 1 to {}, got {!r}".format(
            where, key, MAX_ARG_POS, value))
    if not 1 <= value <= MAX_ARG_POS:
        raise UsageError("{}: {} must be from 1 to {} (x86_64 register arguments), got {}"
                         .format(where, key, MAX_ARG_POS, value))
    return value


def positions(skb_pos, sk_pos, where, required=True):
    """The sk_buff and sock positions of a function: at least one (unless not `required`:
    a return probe reads the return value), not the same."""
    skb_pos, sk_pos = position(skb_pos, "skb_pos", where), position(sk_pos, "sk_pos", where)
    if required and skb_pos is None and sk_pos is None:
        raise UsageError("{}: give skb_pos (or sk_pos for a socket-level function)"
                         .format(where))
    if skb_pos is not None and skb_pos == sk_pos:
        raise UsageError("{}: skb_pos and sk_pos are both {}".format(where, skb_pos))
    return skb_pos, sk_pos


def flag(value, key, where):
    """True or False, nothing else."""
    if not isinstance(value, bool):
        raise UsageError("{}: {} must be true or false, got {!r}".format(where, key, value))
    return value


def text(value, key, where):
    if not isinstance(value, str):
        raise UsageError("{}: {} must be text, got {!r}".format(where, key, value))
    return value


def args(value, taken, where):
    """`args: {name: position}` with known names at positions no other argument has;
    `taken` are the skb/sk positions."""
    if value is None:
        return collections.OrderedDict()
    if not isinstance(value, dict) or not value:
        raise UsageError("{}: args must be a mapping of name: position, e.g. {{msg: 2}}"
                         .format(where))
    checked = collections.OrderedDict()
    for name in sorted(value, key=str):
        if name not in ARG_TYPES:
            raise UsageError("{}: args: unknown argument {!r} (known: {})".format(
                where, name, ", ".join(ARG_TYPES)))
        at = position(value[name], "args: " + name, where)
        if at in taken or at in checked.values():
            raise UsageError("{}: args: {} is at position {}, which another argument "
                             "already has".format(where, name, at))
        checked[name] = at
    return checked


def fields(value, where):
    """`fields: {name: path}`, names and paths as FIELD_NAME_RE and FIELD_PATH_RE say."""
    if not isinstance(value, dict):
        raise UsageError("{}: fields must be a mapping of name: path (e.g. len: skb.len)"
                         .format(where))
    checked = collections.OrderedDict()
    for name in sorted(value, key=str):
        path = value[name]
        if not isinstance(name, str) or not FIELD_NAME_RE.match(name):
            raise UsageError("{}: field name {!r} must be lower-case letters, digits and _ "
                             "(at most 32)".format(where, name))
        if not isinstance(path, str) or not FIELD_PATH_RE.match(path):
            raise UsageError("{}: field {} has path {!r}: use skb.MEMBER[.MEMBER], "
                             "sk.MEMBER or skb_shinfo(skb).MEMBER".format(where, name, path))
        checked[name] = path
    return checked


def field_roots(checked, skb_pos, sk_pos, where):
    """Each field path starts at an argument the function has."""
    have = {"skb_pos": skb_pos, "sk_pos": sk_pos}
    for name, path in checked.items():
        root = structs.split(path)[0]
        if not any(have[key] is not None for key in FIELD_ROOT_NEEDS[root]):
            raise UsageError("{}: field {} reads {}, which this probe does not have: give "
                             "{}".format(where, name, root, " or ".join(FIELD_ROOT_NEEDS[root])))



def peek(value, arg_names, where):
    """`peek: {arg: msg, bytes: N}`, through an argument each variant names (`arg_names`:
    the names of each variant's args)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"arg", "bytes"}:
        raise UsageError("{}: peek must be {{arg: msg, bytes: N}}".format(where))
    if value["arg"] not in PEEK_ARGS:
        raise UsageError("{}: peek reads through {}, not {!r}".format(
            where, " or ".join(PEEK_ARGS), value["arg"]))
    size = value["bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= PEEK_MAX:
        raise UsageError("{}: peek bytes must be an integer from 1 to {}, got {!r}".format(
            where, PEEK_MAX, size))
    for name, names in arg_names:
        if value["arg"] not in names:
            raise UsageError("{}: peek reads {} but variant {} has no args: {{{}: N}}"
                             .format(where, value["arg"], name, value["arg"]))
    return {"arg": value["arg"], "bytes": size}


def probe(found):
    """A model.Probe whose every value is checked, or UsageError naming the function."""
    where = "function {}".format(symbol(found.name, "probe"))
    skb_pos, sk_pos = positions(found.skb_pos, found.sk_pos, where, found.kind != "return")
    args(found.args or None, (skb_pos, sk_pos), where)
    field_roots(fields(found.fields, where), skb_pos, sk_pos, where)
    peek(found.peek, [(found.name, found.args)], where)
    flag(found.caller, "caller", where)
    flag(found.egress, "egress", where)
    text(found.description, "description", where)
    if found.kind not in KINDS:
        raise UsageError("{}: kind must be entry or return, got {!r}".format(where, found.kind))
    if found.tracepoint is not None:
        tracepoints.check(found.tracepoint, where)
    return found


def run_id(value):
    """A run id as RUN_ID_RE says (lower-case letters, digits and _, at most 32)."""
    if not isinstance(value, str) or not RUN_ID_RE.match(value):
        raise UsageError("invalid run id {!r}: use lower-case letters, digits and _, at most "
                         "32 (lt<pid>)".format(value))
    return value


#: --buffer-size bounds, KiB per CPU: one page, the least a mechanism takes (a few dozen
#: events); 1 GiB per CPU, more than any host should pin for tracing.
BUFFER_KB_MIN, BUFFER_KB_MAX = 4, 1048576


def buffer_kb(value):
    """A buffer size in KiB per CPU: an int (not a bool) within the bounds above."""
    if type(value) is not int or not BUFFER_KB_MIN <= value <= BUFFER_KB_MAX:
        raise UsageError("--buffer-size {!r}: give KiB per CPU, from {} to {}".format(
            value, BUFFER_KB_MIN, BUFFER_KB_MAX))
    return value


def release(value):
    """A kernel release as it may appear in a program or a command (RELEASE_RE)."""
    if not isinstance(value, str) or not RELEASE_RE.match(value):
        raise UsageError("kernel release {!r} is not a release name such as "
                         "3.10.0-1160.el7.x86_64".format(value))
    return value


def pid_text(text):
    """A process id from the command line (`-p/--pid`): ASCII digits, 1 to PID_LIMIT - 1.
    -p was the protocol before: anything but a number fails saying how to ask for one now."""
    value = str(text).strip()
    if not re.match(r"^[0-9]+\Z", value):
        word = value.lower()
        how = ("--proto {0} or the expression {0}".format(word) if word in _PROTOCOL_WORDS
               else "--proto or the filter expression")
        raise UsageError("invalid PID {!r}: -p/--pid is a process id (as in bcc); for a "
                         "protocol use {}".format(text, how))
    if not 0 < int(value) < PID_LIMIT:
        raise UsageError("invalid PID {!r}: use a process id from 1 to {}".format(
            text, PID_LIMIT - 1))
    return int(value)


def pid(value):
    """A process (or thread) id: an int from 1 to PID_LIMIT - 1; a bool is no number."""
    if not _int(value, 1, PID_LIMIT - 1):
        raise UsageError("invalid PID {!r}: use a process id from 1 to {}".format(
            value, PID_LIMIT - 1))
    return value


def comm(value):
    """A process name for --comm, as COMM_RE says."""
    if not isinstance(value, str) or not COMM_RE.match(value):
        too_long = isinstance(value, str) and len(value) > 15
        raise UsageError("invalid comm {!r}: {}".format(value, (
            "the kernel keeps the first 15 characters of a process name: give those"
            if too_long else "use at most 15 letters, digits, spaces or _.:/@+=,~#-")))
    return value


def processes(found):
    """A procfilter.ProcessFilter whose pids, thread ids and comms are each checked."""
    for each in list(found.pids) + list(found.threads):
        pid(each)
    for each in found.comms:
        comm(each)
    return found


def _int(value, low, high):
    return type(value) is int and low <= value <= high


def _one_of(value, choices):
    """`value` is one of `choices` and of its type: 4.0 and True are not 4 and 1 here."""
    return any(type(value) is type(choice) and value == choice for choice in choices)


#: What each node of a filter expression may hold (legacytrace.filterexpr).
_NODE_RULES = {
    fx.Family: lambda node: _one_of(node.version, (4, 6)),
    fx.Proto: lambda node: _one_of(node.version, (None, 4, 6)) and _int(node.number, 0, 255),
    fx.Net: lambda node: _one_of(node.direction, fx.DIRECTIONS) and isinstance(
        node.network, (ipaddress.IPv4Network, ipaddress.IPv6Network)),
    fx.Port: lambda node: _one_of(node.direction, fx.DIRECTIONS) and _int(node.low, 0, 65535)
    and _int(node.high, node.low, 65535) and _one_of(node.proto, (None,) + fx.PORT_PROTOS),
}


def expression(expr, depth=0):
    """A filter expression (legacytrace.filterexpr) of the node types, directions, numbers
    and ipaddress networks its parser makes, and no deeper than it allows: the backends
    compile it into kernel code."""
    kind = type(expr)
    if depth > fx.MAX_DEPTH:
        raise UsageError("filter expression: nested deeper than {}".format(fx.MAX_DEPTH))
    if kind in (fx.And, fx.Or):
        if not isinstance(expr.terms, tuple) or len(expr.terms) < 2:
            raise UsageError("filter expression: {!r} needs two terms or more".format(expr))
        for term in expr.terms:
            expression(term, depth + 1)
    elif kind is fx.Not:
        expression(expr.term, depth + 1)
    elif kind not in _NODE_RULES or not _NODE_RULES[kind](expr):
        raise UsageError("filter expression: {!r} is not a term of tcpdump's language as "
                         "legacytrace reads it".format(expr))
    return expr


def request(found):
    """A model.TraceRequest whose every value is checked: its probes, run id, target
    release, buffer size, flow filter and process filter."""
    for each in found.probes:
        probe(each)
    run_id(found.run_id)
    release(found.host.release)
    buffer_kb(found.buffer_kb)
    if found.flow is not None and found.flow.expr is not None:
        expression(found.flow.expr)
    if found.processes is not None:
        processes(found.processes)
    return found
