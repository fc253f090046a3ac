"""The registry of backends, by name, in the order `doctor` lists them, with each one's
place in the preference order of each kind of kernel (legacytrace.select says why).

A backend module is imported only when asked for, so a broken or missing one
costs the others nothing and fails with a message that says what to do. Adding a
backend is adding its package (backends/<name>/) and its line here.
"""
import collections
import importlib

from legacytrace.errors import BackendUnavailable

#: Kinds of kernel, each with its own preference order (legacytrace.select.preference).
OLD, BTF, NO_BTF = "old", "btf", "no_btf"


class Entry(collections.namedtuple("Entry", "target rank")):
    """`target` is "module:class" of the Backend; `rank` its place (0 first) in the
    preference order of each kind of kernel."""

    __slots__ = ()


#: name -> Entry; the modules live in this package (backends/ in the repository).
REGISTRY = collections.OrderedDict([
    ("stap", Entry("legacytrace.backends.stap:StapBackend", {OLD: 0, BTF: 2, NO_BTF: 0})),
    ("ftrace", Entry("legacytrace.backends.ftrace:FtraceBackend", {OLD: 1, BTF: 1, NO_BTF: 2})),
    ("bpf", Entry("legacytrace.backends.bpf:BpfBackend", {OLD: 2, BTF: 0, NO_BTF: 1})),
])


def names():
    """All backend names, whether or not they can load here."""
    return list(REGISTRY)


def preferred(kind):
    """Backend names in order of preference on a kind of kernel (OLD, BTF, NO_BTF)."""
    return sorted(REGISTRY, key=lambda name: REGISTRY[name].rank[kind])


def get(name):
    """Return a new instance of backend `name`, or raise BackendUnavailable saying why."""
    try:
        target = REGISTRY[name].target
    except KeyError:
        raise BackendUnavailable("unknown backend {!r}: choose one of {}".format(
            name, ", ".join(REGISTRY)))
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if getattr(exc, "name", None) == module_name:
            raise BackendUnavailable(
                "backend {!r} is not part of this build of legacytrace: choose one of {}".format(
                    name, ", ".join(n for n in REGISTRY if n != name)))
        raise BackendUnavailable("backend {!r} cannot load ({}): reinstall legacytrace "
                                 "with its dependencies".format(name, exc))
    return getattr(module, class_name)()
