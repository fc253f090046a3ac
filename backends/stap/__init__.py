"""The SystemTap backend: a guru-mode script whose embedded C parses the sk_buff.

    request --build()--> .stp text --compile()--> lt_<hash>.ko (cached) --staprun--> LT1 lines --parse()--> FlowEvent

build.py renders `stap_templates/flows.stp.j2` (pure). Each probe is a
`kprobe.function("NAME")` with the `struct sk_buff *` from `pointer_arg(N)`, so no
debuginfo is needed; the struct layout comes from the kernel's own headers when the
module is compiled. The flow filter becomes C comparisons in `lt_flow_match()`.
Everything of the request that reaches the script was validated (legacytrace.validate)
before: guru-mode C runs in the kernel.

cache.py runs `stap -g -p4` once per distinct program and keeps the module, which root
loads, where no other user can change it. session.py loads it with `staprun -R`, which
renames it to `lt_<hash>_<staprun pid>`: that pid is the owner that `leftovers()` and
`cleanup()` check. parse.py reads the line protocol (LT1, documented at the top of the
template).
"""
from legacytrace.backends.base import Backend
from legacytrace.backends.stap import build, cache, check, parse, session
from legacytrace.model import BUFFER_KB


class StapBackend(Backend):
    name = "stap"
    summary = "SystemTap: guru-mode script with embedded C, compiled against the kernel's headers"
    features = ("peek",)

    def check(self, host):
        return check.check(host, cached=len(cache.cached_modules(host.release)))

    def program(self, request):
        return build.program(request)

    def module_program(self, path, buffer_kb=BUFFER_KB):
        """A Program for a module built elsewhere (`legacytrace trace --stap-module`)."""
        return build.module_program(path, buffer_kb)

    def compile(self, program, release=None, runtime=None, out=None):
        """The path of the module for `program`, compiled unless cached (cache.compile)."""
        return cache.compile(program, release, runtime, out)

    def ready(self, program, host):
        return cache.ready(program, host)

    def run(self, program, release=None, runtime=None):
        """A session that loads the program's module (compiled on attach unless cached)."""
        return session.StapSession(program, release, runtime)

    def parse(self, line, program=None):
        return parse.parse(line)

    def parse_lines(self, lines, program=None):
        return parse.parse_lines(lines)

    def leftovers(self, host):
        return session.leftovers()

    def cleanup(self, host):
        return session.cleanup()
