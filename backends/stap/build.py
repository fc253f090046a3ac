"""Building the SystemTap program (pure): the request as template values, rendered into
stap_templates/flows.stp.j2; and the Program of a module built elsewhere.
"""
import collections
import os
import re

from legacytrace import filterexpr, trust, validate
from legacytrace.backends.base import Program, template
from legacytrace.backends.stap import condition
from legacytrace.backends.stap.parse import PROTOCOL
from legacytrace.errors import UsageError, warn
from legacytrace.kernel import structs
from legacytrace.model import BUFFER_KB
from legacytrace.validate import ARG_TYPES

TEMPLATE = "flows.stp.j2"


class StapPart(collections.namedtuple("StapPart", "release probes module")):
    """The target kernel's release, the probed functions, and the path of a module built
    elsewhere (None: compile this program's, or take it from the cache). staprun loads a
    module of the cache under a name of its own (-R), a prebuilt one as it was built."""

    __slots__ = ()
#: Module names of `legacytrace build -o lt_NAME.ko`.
BUILT_NAME_RE = re.compile(r"lt_[a-z0-9_]{1,40}")
#: struct to cast each field path root to, with the header that declares it.
_FIELD_ROOTS = collections.OrderedDict([
    ("skb_shinfo(skb)", 'lt_skb_shinfo(skb), "skb_shared_info", "kernel<net/sock.h>"'),
    ("skb", 'skb, "sk_buff", "kernel<net/sock.h>"'),
    ("sk", 'sk, "sock", "kernel<net/sock.h>"'),
])


def _probe_view(probe):
    """A checked model.Probe as template values: positions, field expressions, extras."""
    if probe.kind != "entry":
        raise UsageError("probe {}: the stap backend traces function entries only, not {!r}"
                         .format(probe.name, probe.kind))
    fields = [{"name": field, "expr": _field_expr(path)} for field, path in probe.fields.items()]
    args = [{"name": arg, "pos": at, "ctype": ARG_TYPES[arg]} for arg, at in probe.args.items()]
    peek = probe.peek and {"pos": probe.args[probe.peek["arg"]], "bytes": probe.peek["bytes"]}
    return {"name": probe.name, "skb_pos": probe.skb_pos, "sk_pos": probe.sk_pos,
            "fields": fields, "args": args, "reason": probe.args.get("reason"),
            "caller": probe.caller, "peek": peek}


def _field_expr(path):
    """`skb.dev.mtu` -> @cast(skb, "sk_buff", "kernel<net/sock.h>")->dev->mtu: stap reads
    the types from the kernel's headers (and follows pointers and embedded structs alike)."""
    root, _, members = structs.split(path)
    return "@cast({})->{}".format(_FIELD_ROOTS[root], "->".join(members))


def program(request):
    """Render the script for `request`; pure. Raise UsageError for anything unsafe."""
    release = request.host.release
    expr = request.flow and request.flow.expr
    probes = [_probe_view(probe) for probe in request.probes]
    if not probes:
        raise UsageError("no functions to probe: the manifest resolved to nothing on {}"
                         .format(release))
    processes = request.processes
    text = template("legacytrace.stap_templates", TEMPLATE).render(
        protocol=PROTOCOL, release=release, flow=condition.condition(expr),
        filter_words="all flows" if expr is None else filterexpr.text(expr), probes=probes,
        process=condition.process_condition(processes),
        process_words=processes.describe() if processes else "every process")
    return Program("stap", text, run_id=request.run_id,
                   part=StapPart(release, [probe["name"] for probe in probes], None),
                   buffer_kb=request.buffer_kb)


def module_program(path, buffer_kb=BUFFER_KB):
    """A Program for a module built elsewhere (`legacytrace trace --stap-module`).

    staprun needs the file to keep the name it was built with (NAME.ko holds NAME).
    """
    name = os.path.basename(path)[:-3] if path.endswith(".ko") else ""
    if not BUILT_NAME_RE.fullmatch(name) or not os.path.isfile(path):
        raise UsageError("{}: not a module built with `legacytrace build --backend stap "
                         "-o lt_NAME.ko`".format(path))
    with open(path, "rb") as handle:
        if name.encode("ascii") + b"\0" not in handle.read():
            raise UsageError("{} was built under another name: rename it back to the "
                             "file name it was built as".format(path))
    unsafe = trust.problem(path)
    if unsafe:
        warn("stap: --stap-module {}: {}: whoever can change it runs code in the kernel"
             .format(path, unsafe))
    return Program("stap", "# prebuilt SystemTap module {}\n".format(path),
                   part=StapPart(None, [], os.path.abspath(path)),
                   buffer_kb=validate.buffer_kb(buffer_kb))
