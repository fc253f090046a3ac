"""Which kernel functions exist and can be probed on this host.

`available_filter_functions` lists what ftrace (and kprobes) can attach to; it is
missing or unreadable on kernels built without the function tracer (this
development machine). /proc/kallsyms then gives the text symbols, a superset.
"""
import os


def parse_available_filter_functions(lines):
    """Names from available_filter_functions lines: `name` or `name [module]` (3.10 and 6.x)."""
    names = set()
    for line in lines:
        name = line.split(None, 1)[0] if line.strip() else None
        if name:
            names.add(name)
    return names


def parse_kallsyms(lines):
    """Text symbols (types t/T) from /proc/kallsyms lines: `ADDR TYPE NAME [module]`."""
    names = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[1] in ("t", "T"):
            names.add(parts[2])
    return names


class KernelFunctions(object):
    """The probe-able function names of the running kernel, read once on first use."""

    def __init__(self, tracefs=None):
        self.tracefs = tracefs
        self.source = None
        self._names = None

    def names(self):
        if self._names is None:
            self._names, self.source = self._read()
        return self._names

    def __contains__(self, name):
        return name in self.names()

    def _read(self):
        if self.tracefs:
            path = os.path.join(self.tracefs, "available_filter_functions")
            try:
                with open(path) as handle:
                    names = parse_available_filter_functions(handle)
                if names:
                    return names, path
            except (IOError, OSError):
                pass
        try:
            with open("/proc/kallsyms") as handle:
                return parse_kallsyms(handle), "/proc/kallsyms"
        except (IOError, OSError):
            return None, None

    @property
    def known(self):
        """False when neither source was readable: existence cannot be checked."""
        return self.names() is not None
