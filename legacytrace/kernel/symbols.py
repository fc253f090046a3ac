"""Which kernel functions exist and can be probed on this host.

`available_filter_functions` lists what ftrace (and kprobes) can attach to; it is
missing or unreadable on kernels built without the function tracer (this
development machine). /proc/kallsyms then gives the text symbols, a superset.
"""
import bisect
import os
import re

#: A function's entry as a manifest names it: a C identifier, with the suffixes of GCC's
#: clones (legacytrace.validate.SYMBOL_RE) but not of a cold part (`ip_rcv_finish_core.cold`,
#: the code GCC moved out of the function), nor a `__pfx_` symbol (the padding before a
#: function, 6.2+), nor an assembler label (`.E_copy`). kallsyms lists all of them.
_ENTRY_RE = re.compile(
    r"^(?!__pfx_)[A-Za-z_][A-Za-z0-9_]*(\.(isra|constprop|part|llvm)\.[0-9]+)*\Z")


def is_entry(name):
    """True when `name` is a function entry a manifest can probe (see _ENTRY_RE)."""
    return _ENTRY_RE.match(name) is not None


def parse_available_filter_functions(lines):
    """Names from available_filter_functions lines: `name` or `name [module]` (3.10 and 6.x)."""
    names = set()
    for line in lines:
        name = line.split(None, 1)[0] if line.strip() else None
        if name:
            names.add(name)
    return names


def _text_symbols(lines):
    """(address text, name) of the text symbols (types t/T) in /proc/kallsyms lines:
    `ADDR TYPE NAME [module]`."""
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[1] in ("t", "T"):
            yield parts[0], parts[2]


def parse_kallsyms(lines):
    """Text symbol names from /proc/kallsyms lines."""
    return set(name for _address, name in _text_symbols(lines))


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


#: An address this far past a symbol's start is not in it (no kernel function is 1 MiB).
MAX_FUNCTION_SIZE = 1 << 20


class Kallsyms(object):
    """Kernel text addresses -> "function+0xoffset", as %pS prints them, from /proc/kallsyms.

    Used for return addresses (a manifest's `caller`) that a backend reports as numbers
    (ftrace's fetch args cannot symbolize). Addresses read as 0 when not root
    (kptr_restrict): then nothing can be named and numbers stay numbers.
    """

    def __init__(self, lines):
        table = sorted((int(address, 16), name) for address, name in _text_symbols(lines)
                       if int(address, 16))
        self._addresses = [address for address, _name in table]
        self._names = [name for _address, name in table]

    @classmethod
    def read(cls, path="/proc/kallsyms"):
        """The running kernel's table; an empty one when it cannot be read."""
        try:
            with open(path) as handle:
                return cls(handle)
        except (IOError, OSError):
            return cls(())

    def name(self, address):
        """`address` as "function+0xoffset", or None when it is not inside a known symbol."""
        index = bisect.bisect_right(self._addresses, address) - 1
        if index < 0:
            return None
        offset = address - self._addresses[index]
        if offset >= MAX_FUNCTION_SIZE:  # past the last symbol (kallsyms gives no sizes)
            return None
        return "{}+{:#x}".format(self._names[index], offset) if offset else self._names[index]
