"""The registry of backends, by name, in the order `doctor` lists them.

A backend module is imported only when asked for, so a broken or missing one
costs the others nothing and fails with a message that says what to do.
"""
import collections
import importlib

from legacytrace.errors import BackendUnavailable

#: name -> "module:class"; the modules live in this package (backends/ in the repo).
REGISTRY = collections.OrderedDict([
    ("stap", "legacytrace.backends.stap:StapBackend"),
    ("ftrace", "legacytrace.backends.ftrace:FtraceBackend"),
    ("bpf", "legacytrace.backends.bpf:BpfBackend"),
])


def names():
    """All backend names, whether or not they can load here."""
    return list(REGISTRY)


def get(name):
    """Return a new instance of backend `name`, or raise BackendUnavailable saying why."""
    try:
        target = REGISTRY[name]
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
