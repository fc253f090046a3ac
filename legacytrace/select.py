"""Which backend `trace` uses on a host: the kernel version orders them, capabilities decide.

Preference order (first guess from the kernel; the first that can run wins):
- kernels before 4.1 (3.10 / EL7): stap, ftrace, bpf. SystemTap compiles against the
  kernel's own headers, so struct layouts are exact without BTF; ftrace there needs a
  table of known offsets; bpftrace needs 4.9.
- kernels with BTF: bpf, ftrace, stap. bpftrace reads typed structs from BTF and
  filters in the kernel with no compiler; ftrace gets exact offsets from BTF too;
  SystemTap needs headers and a compiler and lags new kernels.
- other kernels (4.x without BTF): stap, bpf, ftrace. Without BTF, only a compiler
  with the kernel's headers knows the struct layouts exactly (SystemTap, then bpftrace
  which parses the headers); ftrace would need offsets from a table or guessed.

The orders themselves are the registry's (legacytrace.backends.REGISTRY). Each backend is
judged by its own `Backend.check(host)` (`backend_checks()`). A backend module that
cannot load is reported unavailable with the reason, and the rest still work. Pass
`check` ({name: check(host)}) to judge otherwise: the backends' pure checks
(backends/<name>/check.py) with recorded hosts in the unit tests.
"""
import collections

from legacytrace import backends

from legacytrace.kernel import features
from legacytrace.backends.base import Availability
from legacytrace.errors import BackendUnavailable

_OLD = (backends.OLD,
        "kernel before 4.1: SystemTap first (exact layouts from the kernel's headers), then ftrace")
_BTF = (backends.BTF,
        "kernel with BTF: bpf first (typed access and in-kernel filter, no compiler), "
        "then ftrace, then SystemTap")
_NO_BTF = (backends.NO_BTF,
           "kernel without BTF: SystemTap first (exact layouts from the kernel's headers), "
           "then bpf (also from headers), then ftrace (known or guessed offsets)")


def preference(host):
    """(backend names in preference order, why) for `host`."""
    if host.kernel.version < features.TRACEFS_SINCE:
        kind, why = _OLD
    elif host.btf:
        kind, why = _BTF
    else:
        kind, why = _NO_BTF
    return tuple(backends.preferred(kind)), why


def unavailable(reason):
    """A check(host) that always answers no with `reason`: a backend that cannot load, or
    one that cannot run this trace (the CLI's fallback after Backend.ready)."""
    return lambda host: Availability.no(reason)


def backend_checks():
    """{name: check(host)} of every registered backend; one that cannot load says why."""
    found = collections.OrderedDict()
    for name in backends.names():
        try:
            found[name] = backends.get(name).check
        except BackendUnavailable as exc:
            found[name] = unavailable(str(exc))
    return found


def assess(host, check=None):
    """[(name, Availability)] for every backend, in preference order.

    `check` maps backend names to check(host) functions; default `backend_checks()`.
    """
    check = backend_checks() if check is None else check
    names, _ = preference(host)
    return [(name, check[name](host)) for name in names]


def choose(host, requested=None, check=None):
    """Return (name, reason, [(name, Availability), ...]) for `trace` on `host`.

    `requested` (from --backend) forces that backend; it raises BackendUnavailable with
    the reason when that backend cannot run here. Without it, the first available
    backend in `preference` order wins; when none can run, BackendUnavailable lists why.
    `check` is as for `assess`.
    """
    assessed = assess(host, check)
    found = dict(assessed)
    if requested is not None:
        if requested not in found:
            raise BackendUnavailable("unknown backend {!r}: choose one of {}".format(
                requested, ", ".join(backends.names())))
        if not found[requested].available:
            raise BackendUnavailable("backend {} cannot run here: {}".format(
                requested, found[requested].reason))
        return requested, "requested with --backend; " + found[requested].reason, assessed
    _, why = preference(host)
    for name, availability in assessed:
        if availability.available:
            return name, "{}; {}".format(why, availability.reason), assessed
    raise BackendUnavailable("no backend can run here: " + "; ".join(
        "{}: {}".format(name, availability.reason) for name, availability in assessed))
