"""Building the SystemTap program (pure): the request as template values, rendered into
stap_templates/flows.stp.j2; and the Program of a module built elsewhere.
"""
import collections
import ipaddress
import os
import pkgutil
import re

import jinja2

from legacytrace import trust
from legacytrace.backends.base import Program
from legacytrace.backends.stap.parse import PROTOCOL
from legacytrace.errors import UsageError, warn
from legacytrace.manifest import (ARG_TYPES, FIELD_NAME_RE, FIELD_PATH_RE, MAX_ARG_POS, PEEK_MAX,
                                  check_symbol)

TEMPLATE = "flows.stp.j2"


class StapPart(collections.namedtuple("StapPart", "release probes module")):
    """The target kernel's release, the probed functions, and the path of a module built
    elsewhere (None: compile this program's, or take it from the cache). staprun loads a
    module of the cache under a name of its own (-R), a prebuilt one as it was built."""

    __slots__ = ()
#: `uname -r` text, or a build tree path for `stap -r`.
RELEASE_RE = re.compile(r"^[A-Za-z0-9_.+~-]{1,100}$")
#: Module names of `legacytrace build -o lt_NAME.ko`.
BUILT_NAME_RE = re.compile(r"lt_[a-z0-9_]{1,40}")
#: struct to cast each field path root to, with the header that declares it.
_FIELD_ROOTS = collections.OrderedDict([
    ("skb_shinfo(skb)", 'lt_skb_shinfo(skb), "skb_shared_info", "kernel<net/sock.h>"'),
    ("skb", 'skb, "sk_buff", "kernel<net/sock.h>"'),
    ("sk", 'sk, "sock", "kernel<net/sock.h>"'),
])


def release_name(release):
    if not isinstance(release, str) or not RELEASE_RE.fullmatch(release):
        raise UsageError("kernel release {!r} is not a release name such as "
                         "3.10.0-1160.el7.x86_64".format(release))
    return release


def _position(value, what, probe):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ARG_POS:
        raise UsageError("probe {}: {} must be an argument position from 1 to {}, got {!r}"
                         .format(probe, what, MAX_ARG_POS, value))
    return value


def _probe_view(probe):
    """A model.Probe as template values: a checked symbol, positions, field expressions."""
    name = check_symbol(probe.name, "probe")
    if probe.kind != "entry":
        raise UsageError("probe {}: the stap backend traces function entries only, not {!r}"
                         .format(name, probe.kind))
    skb_pos = _position(probe.skb_pos, "skb_pos", name)
    sk_pos = _position(probe.sk_pos, "sk_pos", name)
    fields = []
    for field, path in probe.fields.items():
        if not isinstance(field, str) or not FIELD_NAME_RE.fullmatch(field):
            raise UsageError("probe {}: custom field name {!r} must be lower-case letters, "
                             "digits and _ (at most 32)".format(name, field))
        fields.append({"name": field, "expr": _field_expr(name, field, path, skb_pos, sk_pos)})
    args = _args_view(name, probe.args, skb_pos, sk_pos)
    return {"name": name, "skb_pos": skb_pos, "sk_pos": sk_pos, "fields": fields,
            "uses_sk": bool(sk_pos and not skb_pos)
            or any(f["expr"].startswith('@cast(sk,') for f in fields),
            "args": args, "reason": next((a["pos"] for a in args if a["name"] == "reason"), None),
            "caller": _flag(probe.caller, "caller", name),
            "peek": _peek_view(name, probe.peek, args)}


def _args_view(probe, args, skb_pos, sk_pos):
    """`args` (name -> position) as [{name, pos, ctype}]: known names, free positions."""
    views = []
    for arg, position in (args or {}).items():
        if arg not in ARG_TYPES:
            raise UsageError("probe {}: argument {!r} is not one of {}".format(
                probe, arg, ", ".join(ARG_TYPES)))
        position = _position(position, "args: " + arg, probe)
        if position in (skb_pos, sk_pos) or position in [v["pos"] for v in views]:
            raise UsageError("probe {}: args: {} is at position {}, which another argument "
                             "already has".format(probe, arg, position))
        views.append({"name": arg, "pos": position, "ctype": ARG_TYPES[arg]})
    return views


def _flag(value, what, probe):
    if not isinstance(value, bool):
        raise UsageError("probe {}: {} must be true or false, got {!r}".format(probe, what, value))
    return value


def _peek_view(probe, peek, args):
    """`peek` as {pos, bytes}: the struct msghdr * argument's position, 1..PEEK_MAX bytes."""
    if peek is None:
        return None
    if not isinstance(peek, dict) or set(peek) != {"arg", "bytes"} or peek["arg"] != "msg":
        raise UsageError("probe {}: peek must be {{arg: msg, bytes: N}}, got {!r}".format(
            probe, peek))
    size = peek["bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= PEEK_MAX:
        raise UsageError("probe {}: peek bytes must be an integer from 1 to {}, got {!r}".format(
            probe, PEEK_MAX, size))
    position = next((a["pos"] for a in args if a["name"] == "msg"), None)
    if position is None:
        raise UsageError("probe {}: peek reads through the msg argument: give its position "
                         "in args (args: {{msg: N}})".format(probe))
    return {"pos": position, "bytes": size}


def _field_expr(probe, field, path, skb_pos, sk_pos):
    """`skb.dev.mtu` -> @cast(skb, "sk_buff", "kernel<net/sock.h>")->dev->mtu."""
    if not isinstance(path, str) or not FIELD_PATH_RE.fullmatch(path):
        raise UsageError("probe {}: field {} has path {!r}: use skb.MEMBER[.MEMBER], "
                         "sk.MEMBER or skb_shinfo(skb).MEMBER".format(probe, field, path))
    for root, cast in _FIELD_ROOTS.items():
        if path.startswith(root + "."):
            if root != "sk" and skb_pos is None:
                raise UsageError("probe {}: field {} reads the sk_buff but the probe has "
                                 "no skb_pos".format(probe, field))
            if root == "sk" and skb_pos is None and sk_pos is None:
                raise UsageError("probe {}: field {} reads the sock but the probe has "
                                 "neither sk_pos nor skb_pos".format(probe, field))
            members = path[len(root) + 1:].split(".")
            return "@cast({})->{}".format(cast, "->".join(members))
    raise UsageError("probe {}: field {} has path {!r} with an unknown root".format(
        probe, field, path))


def _flow_view(flow):
    """The flow filter as numbers for lt_flow_match(); words for the script's comments."""
    values = dict((name, getattr(flow, name, None) if flow is not None else None)
                  for name in ("family", "proto", "saddr", "daddr", "sport", "dport"))
    for name, what, high in (("proto", "protocol", 255), ("sport", "source port", 65535),
                             ("dport", "destination port", 65535)):
        value = values[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= high):
            raise UsageError("flow filter: {} {!r} is not a number from 0 to {}".format(
                what, value, high))
    if values["family"] not in (None, 4, 6):
        raise UsageError("flow filter: IP version {!r} must be 4 or 6".format(values["family"]))
    nets = []
    for side in ("saddr", "daddr"):
        net = values[side]
        if net is None:
            continue
        if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise UsageError("flow filter: {} {!r} is not an IP network".format(side, net))
        if values["family"] not in (None, net.version):
            raise UsageError("flow filter: {} {} is not IPv{}".format(side, net, values["family"]))
        values["family"] = net.version
        nets.append({"name": side, "bytes": len(net.network_address.packed),
                     "net": _bytes16(net.network_address.packed),
                     "mask": _bytes16(net.netmask.packed)})
    words = ", ".join("{} {}".format(name, values[name]) for name in
                      ("family", "proto", "saddr", "daddr", "sport", "dport")
                      if values[name] is not None)
    values.update(nets=nets, empty=not words, words=words or "(all flows)")
    return values


def _bytes16(packed):
    return [b for b in bytearray(packed)] + [0] * (16 - len(packed))


def _template():
    source = pkgutil.get_data("legacytrace.stap_templates", TEMPLATE).decode("utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    return env.from_string(source)


def program(request):
    """Render the script for `request`; pure. Raise UsageError for anything unsafe."""
    release = release_name(request.host.release)
    flow = _flow_view(request.flow)
    probes = [_probe_view(probe) for probe in request.probes]
    if not probes:
        raise UsageError("no functions to probe: the manifest resolved to nothing on {}"
                         .format(release))
    text = _template().render(protocol=PROTOCOL, release=release, flow=flow,
                              filter_words=flow["words"], probes=probes)
    return Program("stap", text, run_id=request.run_id,
                   part=StapPart(release, [probe["name"] for probe in probes], None))


def module_program(path):
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
                   part=StapPart(None, [], os.path.abspath(path)))
