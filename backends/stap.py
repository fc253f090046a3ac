"""The SystemTap backend: a guru-mode script whose embedded C parses the sk_buff.

    request --build()--> .stp text --compile()--> lt_<hash>.ko (cached) --staprun--> LT1 lines --parse()--> FlowEvent

`build()` renders `stap_templates/flows.stp.j2` (pure). Each probe is a
`kprobe.function("NAME")` with the `struct sk_buff *` from `pointer_arg(N)`, so no
debuginfo is needed; the struct layout comes from the kernel's own headers when the
module is compiled. The flow filter becomes C comparisons in `lt_flow_match()`.
Everything of the request that reaches the script (function names, argument
positions, custom field names and paths, filter numbers, the release) is validated
here first: guru-mode C runs in the kernel.

`compile()` runs `stap -g -p4` once per distinct program and caches the module by
content hash (script, release, runtime, stap version, options) in
`$LEGACYTRACE_STAP_CACHE` (default `~/.cache/legacytrace/stap`), made 0700 with modules
0600. Root loads these modules into the kernel, so a cache, or a cached module, that
another user could change is refused (legacytrace.trust). A session loads the
module with `staprun -R`, which renames it to `lt_<hash>_<staprun pid>`: that pid is
the owner that `leftovers()` and `cleanup()` check.

The line protocol (version LT1, tab-separated) is documented at the top of the template.
"""
import collections
import ctypes
import functools
import hashlib
import ipaddress
import json
import os
import pkgutil
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jinja2

from legacytrace import payload, trust

from legacytrace.kernel import features
from legacytrace.backends import checks
from legacytrace.backends.base import Backend, Program, Session
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.kernel.release import KernelRelease
from legacytrace.manifest import (ARG_TYPES, FIELD_NAME_RE, FIELD_PATH_RE, MAX_ARG_POS,
                                  PEEK_MAX, check_symbol)
from legacytrace.model import CONTEXTS, FlowEvent

PROTOCOL = "LT1"
_TAG = PROTOCOL + "\t"
_EVENT_TAG = _TAG + "E\t"
_CAUGHT_TAG = _TAG + "C\t"
TEMPLATE = "flows.stp.j2"
CACHE_ENV = "LEGACYTRACE_STAP_CACHE"
RUNTIME_ENV = "LEGACYTRACE_STAP_RUNTIME"

#: -D options baked into every module. A tracer must not stop itself: stap's overload
#: guard (STP_NO_OVERLOAD) would end a busy trace, and after MAXSKIPPED skipped probes
#: (default 100) the module exits; skipped probes are counted as lost events instead.
STAP_DEFINES = ("-DSTP_NO_OVERLOAD", "-DMAXSKIPPED=100000000")
#: `uname -r` text, or a build tree path for `stap -r`.
RELEASE_RE = re.compile(r"^[A-Za-z0-9_.+~-]{1,100}$")
#: A module staprun -R loaded: NAME cut to leave room for _<pid of staprun>, within the
#: length of NAME (seen on the 6.1 lab: lt_016d8cec070e491c -> lt_016d8cec070e_120).
RENAMED_RE = re.compile(r"^lt_[A-Za-z0-9_]*_([0-9]+)$")
#: Module names of `legacytrace build -o lt_NAME.ko`.
BUILT_NAME_RE = re.compile(r"lt_[a-z0-9_]{1,40}")
#: How long the module may take to load and register its probes (QEMU TCG is slow).
ATTACH_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
#: How long lines may still come after finish() asked staprun to stop.
FINISH_TIMEOUT = 30.0
#: Lines read from staprun that may wait for the parser; beyond them lines are dropped and
#: counted (about 200 bytes of memory a line).
BACKLOG_ENV = "LEGACYTRACE_STAP_BACKLOG"
BACKLOG = 200000
#: What stap's runtime reports at exit, e.g. "WARNING: Number of errors: 0, skipped probes: 12".
_SKIPPED_RE = re.compile(r"skipped probes: ([0-9]+)")
_ERRORS_RE = re.compile(r"Number of errors: ([0-9]+)")
#: The transport's report when its buffers overflowed (a reader too slow for the probes):
#: "WARNING: There were 13 transport failures. Try stap -s to increase the buffer size from 1."
_TRANSPORT_RE = re.compile(r"There were ([0-9]+) transport failures")
#: text_str() escapes: \n \t ..., \ooo (bytes), \uXXXX / \UXXXXXXXX (UTF-8, stap 4.1+).
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)", re.S)
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
                   "\\": 92, '"': 34, "'": 39, "0": 0}
#: struct to cast each field path root to, with the header that declares it.
_FIELD_ROOTS = collections.OrderedDict([
    ("skb_shinfo(skb)", 'lt_skb_shinfo(skb), "skb_shared_info", "kernel<net/sock.h>"'),
    ("skb", 'skb, "sk_buff", "kernel<net/sock.h>"'),
    ("sk", 'sk, "sock", "kernel<net/sock.h>"'),
])
#: The context column: lt_context()'s codes.
_CONTEXT_CODES = dict((str(code), name) for code, name in enumerate(CONTEXTS))
#: Columns of an E line before the custom fields.
_E_COLUMNS = 23
_new_event = tuple.__new__


class StapBackend(Backend):
    name = "stap"
    summary = "SystemTap: guru-mode script with embedded C, compiled against the kernel's headers"
    features = ("peek",)

    def check(self, host):
        return checks.stap(host, cached=len(cached_modules(host.release)))

    def build(self, request):
        """Render the script for `request`; pure. Raise UsageError for anything unsafe."""
        release = _release(request.host.release)
        flow = _flow_view(request.flow)
        probes = [_probe_view(probe) for probe in request.probes]
        if not probes:
            raise UsageError("no functions to probe: the manifest resolved to nothing on {}"
                             .format(release))
        text = _template().render(protocol=PROTOCOL, release=release, flow=flow,
                                  filter_words=flow["words"], probes=probes)
        return Program(self.name, text, {
            "protocol": PROTOCOL, "release": release, "run_id": request.run_id,
            "probes": [probe["name"] for probe in probes]})

    def module_program(self, path):
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
            _warn("--stap-module {}: {}: whoever can change it runs code in the kernel"
                  .format(path, unsafe))
        return Program(self.name, "# prebuilt SystemTap module {}\n".format(path),
                       {"protocol": PROTOCOL, "module": os.path.abspath(path), "rename": False})

    def compile(self, program, release=None, runtime=None, out=None):
        """Return the path of the module for `program`, compiling it unless cached.

        `release` (a `uname -r` or a build tree, default the program's target) and
        `runtime` (a SystemTap runtime directory, default $LEGACYTRACE_STAP_RUNTIME)
        pass through as `stap -r` / `stap -R`. `out` (lt_NAME.ko) builds the module under
        that name, for `legacytrace build`, and copies it there.
        """
        name = None
        if out:
            name = os.path.basename(out)[:-3] if out.endswith(".ko") else ""
            if not BUILT_NAME_RE.fullmatch(name):
                raise UsageError("{}: name the module lt_NAME.ko, NAME of lower-case letters, "
                                 "digits and _ (at most 40): SystemTap module names are C "
                                 "identifiers and `legacytrace cleanup` knows ours by lt_"
                                 .format(out))
            folder = os.path.dirname(os.path.abspath(out))
            if not os.path.isdir(folder):
                raise UsageError("{}: there is no folder {}: create it, or write the module "
                                 "elsewhere".format(out, folder))
        target = release or program.data.get("release") or "this kernel"
        module, command = self._module_path(program, release, runtime, name)
        name = os.path.basename(module)[:-3]
        if not os.path.isfile(module):
            try:
                _compile_into(os.path.dirname(module), name, command, program.text)
            except LegacytraceError as exc:
                raise LegacytraceError(
                    "{}; this program's module is not in the cache ({}): compile it where "
                    "stap, gcc and the kernel headers for {} are, with `legacytrace build -r "
                    "{} -o lt_NAME.ko`, and run it here with `trace --stap-module lt_NAME.ko`"
                    .format(exc, cache_dir(), target, target))
        unsafe = _unsafe_module(module)
        if unsafe:
            raise trust.Untrusted(unsafe)
        if out:
            try:
                shutil.copyfile(module, out)
            except OSError as exc:
                raise LegacytraceError("cannot write the module to {}: {} (it is built, in {})"
                                       .format(out, exc.strerror or exc, module))
            return out
        return module

    def _module_path(self, program, release=None, runtime=None, name=None):
        """(where `program`'s module is or will be in the cache, the stap command)."""
        command = _stap_command(program, release, runtime)
        key = _digest(command + [name or ""], program.text, _stap_version())[:16]
        return os.path.join(cache_dir(), key, (name or "lt_" + key) + ".ko"), command

    def ready(self, program, host):
        """None when this host can run `program`: a prebuilt or cached module, or headers and
        a compiler to build one; else why not."""
        if program.data.get("module") or (host.kernel_build and host.cc):
            return None
        try:
            module = self._module_path(program)[0]
        except trust.Untrusted as exc:
            return str(exc)
        if os.path.isfile(module):
            return _unsafe_module(module)
        return ("this trace's module is not in the cache, and without kernel headers and a C "
                "compiler for {0} none can be compiled here: build it where they are with "
                "`legacytrace build -r {0} -o lt_NAME.ko` and run it with `trace --stap-module "
                "lt_NAME.ko`".format(host.release))

    def run(self, program, release=None, runtime=None):
        """A session that loads the program's module (compiled on attach unless cached)."""
        return StapSession(self, program, release, runtime)

    def parse(self, line, program=None):
        try:
            return parse_line(salvage(line)[0])
        except (ValueError, IndexError, KeyError, TypeError, AttributeError, UnicodeError):
            return None

    def leftovers(self, host):
        """Our loaded modules (lt_*) that no live staprun runs: a killed run left them.

        A module staprun -R renamed ends in the staprun's pid; a prebuilt one keeps its
        name, and then any live staprun naming its file owns it.
        """
        running = _stapruns()
        found = []
        for name in _loaded_modules():
            if not name.startswith("lt_"):
                continue
            match = RENAMED_RE.match(name)
            if match and int(match.group(1)) in running:
                continue
            if any("/{}.ko".format(name) in cmdline for cmdline in running.values()):
                continue
            found.append(name)
        return found

    def cleanup(self, host):
        """Unload the modules of dead runs with `staprun -d`; return the names removed."""
        removed = []
        for name in self.leftovers(host):
            result = _call(["staprun", "-d", name])
            if result.returncode == 0 and name not in _loaded_modules():
                removed.append(name)
            else:
                _warn("could not unload {}: {}".format(name, result.output.strip()))
        return removed


class StapSession(Session):
    """staprun on the module: attach waits for the LT1 B line, detach stops staprun.

    A thread reads staprun's stdout as it comes into a queue of chunks, so that a parser
    that falls behind never leaves staprun blocked on a full pipe while the module's
    transport fills: in the 6.1 lab a CLI that read staprun itself, at about 300 us a line
    under TCG, got 1,700 of 16,000 lines (54 of them damaged) and then nothing more.
    staprun gets SIGTERM when this process dies (PR_SET_PDEATHSIG), so a killed
    legacytrace does not leave the module loaded; only a killed staprun does.
    """

    def __init__(self, backend, program, release=None, runtime=None):
        super(StapSession, self).__init__(program)
        self.backend = backend
        self.release = release
        self.runtime = runtime
        self.proc = None
        self.stderr = []
        self._stderr_thread = None
        self._stdout_thread = None
        self._chunks = queue.Queue()
        self._pending = collections.deque()
        self._backlog = 0                 # lines in _chunks, under _backlog_lock
        self._backlog_lock = threading.Lock()
        self._backlog_max = _backlog_max()
        self._eof = threading.Event()
        self._stopped = False
        self._finish_by = None
        #: faults the probes caught (the C line), see real_skipped()
        self.caught = 0

    def attach(self):
        module = self.program.data.get("module") or self.backend.compile(
            self.program, self.release, self.runtime)
        # -R: load under NAME_<pid> so that runs of one cached module do not collide
        rename = ["-R"] if self.program.data.get("rename", True) else []
        self.proc = subprocess.Popen([trust.program("staprun")] + rename + [module],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        self._stdout_thread = threading.Thread(target=self._read_stdout, args=(self.proc,),
                                               daemon=True)
        self._stdout_thread.start()
        for line in self._take(time.monotonic() + ATTACH_TIMEOUT):
            if line == PROTOCOL + "\tB":
                return
        if self._eof.is_set():
            _wait(self.proc)
            self._stderr_thread.join(5)
        raise LegacytraceError("staprun could not start {}: {}".format(
            module, _errors(self.stderr) or "exit status {}".format(self.proc.poll())))

    def lines(self):
        proc = self.proc
        if proc is None:
            return
        for line in self._take():
            yield line
        if not self._eof.is_set():
            return                   # finish() ran out of time: detach counts the rest
        if not _wait(proc):
            return                   # staprun is still unloading: detach says what is left
        if proc.returncode and not self._stopped:
            self._stderr_thread.join(5)
            raise LegacytraceError("staprun ended with status {}: {}".format(
                proc.returncode, _errors(self.stderr) or "no message"))

    def finish(self):
        """SIGTERM to staprun: the module unloads, and its last lines still come from lines()."""
        if self.proc is None or self._stopped:
            return False
        self._stopped = True
        self._finish_by = time.monotonic() + FINISH_TIMEOUT
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return True

    def detach(self):
        """Stop staprun (it unloads the module), collect lost counts; idempotent, never raises."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self._stopped = True
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if not _wait(proc):
                _kill(proc)
                left = [name for name in _loaded_modules() if name.endswith("_{}".format(proc.pid))]
                _warn("staprun did not end within {:g} s of SIGTERM and was killed{}".format(
                    STOP_TIMEOUT, "; its module {} is still loaded: `legacytrace cleanup` removes "
                    "it".format(", ".join(left)) if left else ""))
        except Exception as exc:  # a stop must go on whatever failed
            _warn("stopping staprun: {}".format(exc))
            _kill(proc)
        try:
            self._stdout_thread.join(5)
            unread = _events_in(self._pending)
            while not self._chunks.empty():
                unread += _events_in(self._chunks.get_nowait())
            if unread and self._finish_by is not None:   # after --count they are not wanted
                self.lost["stap lines unread at stop"] += unread
            self._stderr_thread.join(5)
            for line in self.stderr:
                _count_exit_report(line, self.lost)
            skipped = real_skipped(self.lost.pop("stap skipped probes", 0), self.caught,
                                   KernelRelease.parse(os.uname().release).version)
            if skipped:
                self.lost["stap skipped probes"] = skipped
        except Exception as exc:
            _warn("reading staprun's report: {}".format(exc))

    def _take(self, until=None):
        """Lines from the queue until staprun's output ends, or `until` (monotonic) passes;
        the chunk being taken is kept in `_pending`, so a stop loses none of it."""
        pending = self._pending
        while True:
            while pending:
                yield pending.popleft()
            deadline = self._finish_by if until is None else until
            if deadline is not None and time.monotonic() > deadline:
                return
            try:
                chunk = self._chunks.get(timeout=0.2)
            except queue.Empty:
                if self._eof.is_set() and self._chunks.empty():
                    return
                continue
            with self._backlog_lock:
                self._backlog -= len(chunk)
            pending.extend(chunk)

    def _read_stdout(self, proc):
        """staprun's stdout into the queue, a read at a time; counts what the backlog cannot take."""
        rest = b""
        try:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                complete = (rest + chunk).split(b"\n")
                rest = complete.pop()
                self._put([raw.decode("utf-8", "replace") for raw in complete])
            if rest:
                self._put([rest.decode("utf-8", "replace")])
        except Exception as exc:  # the reader must end (and say so) whatever happened
            _warn("reading staprun's output: {}".format(exc))
        finally:
            self._eof.set()

    def _put(self, lines):
        for line in lines:
            if salvage(line)[1]:
                self.lost["stap damaged lines"] += 1
            _count_lost(line, self.lost)
            if line.startswith(_CAUGHT_TAG) and line[len(_CAUGHT_TAG):].isdigit():
                self.caught += int(line[len(_CAUGHT_TAG):])
        with self._backlog_lock:
            kept = self._backlog + len(lines) <= self._backlog_max
            if kept:
                self._backlog += len(lines)
        if kept:
            self._chunks.put(lines)
        else:
            self.lost["stap lines the parser fell behind on"] += _events_in(lines)

    def _read_stderr(self):
        for line in _decoded(self.proc.stderr):
            self.stderr.append(line)
            if not _EXIT_REPORT_RE.search(line):
                sys.stderr.write("legacytrace: stap: {}\n".format(line))


def _backlog_max():
    """$LEGACYTRACE_STAP_BACKLOG, a positive line count, or BACKLOG."""
    text = os.environ.get(BACKLOG_ENV, "").strip()
    if not text:
        return BACKLOG
    if not text.isdigit() or int(text) < 1:
        raise UsageError("{}={!r}: give a number of lines, at least 1 (default {})".format(
            BACKLOG_ENV, text, BACKLOG))
    return int(text)


def _events_in(lines):
    return sum(1 for line in lines if line.startswith(_EVENT_TAG))


_EXIT_REPORT_RE = re.compile(r"Number of errors|skipped probes|Skipped due to|transport failures")


def salvage(line):
    """(line, damaged): the last whole LT1 line in `line`, and whether anything came before it.

    staprun's transport can lose its framing: seen once in the 6.1 lab (TCG, 2 CPUs), a
    message's tail was cut, its header bytes came out as text, and the next message ran
    on in the same line (tests/data/stap/lab-damaged-6.1.0-56-amd64.txt); the runtime
    counted one transport failure. The text before the last tag is not an event; what
    follows it is a whole line: no column can hold the tag, as text_str() escapes the
    tabs of comm and the command line.
    """
    cut = line.rfind(_TAG)
    if cut > 0:
        return line[cut:], True
    return line, False


def parse_line(line):
    """One LT1 E line -> FlowEvent; None for other lines. Raises ValueError on garbage.

    Written for speed (the tracer parses every line): one split, inline conversions,
    memoised address text.
    """
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) < _E_COLUMNS or parts[0] != PROTOCOL or parts[1] != "E":
        return None
    (_, _, time_ns, cpu, pid, tid, context, func, skb, family, proto, saddr, daddr, sport, dport,
     icmp_type, icmp_code, icmp_id, icmp_seq, length, dev, comm, cmdline) = parts[:_E_COLUMNS]
    fields = {}
    for item in parts[_E_COLUMNS:]:
        name, _, value = item.partition("=")
        if name[0] == "@":
            _extra(fields, name, value)
        else:
            fields[name] = None if value == "-" else int(value)
    family = int(family)
    # In EVENT_FIELDS order, made in one step (FlowEvent's docstring says why).
    return _new_event(FlowEvent, (
        "stap", "kprobe", int(time_ns), int(cpu), int(pid), int(tid),
        unescape(comm) if "\\" in comm else comm, _CONTEXT_CODES[context], func, "entry", None,
        int(skb, 16) or None, family if family in (4, 6) else None,
        None if proto == "-1" else int(proto), _address(family, saddr), _address(family, daddr),
        None if sport == "-1" else int(sport), None if dport == "-1" else int(dport),
        None if icmp_type == "-1" else int(icmp_type), None if icmp_code == "-1" else int(icmp_code),
        None if icmp_id == "-1" else int(icmp_id), None if icmp_seq == "-1" else int(icmp_seq),
        None if length == "-1" else int(length), None if dev == "-" else dev, fields,
        (unescape(cmdline) if "\\" in cmdline else cmdline) or None))


def _extra(fields, name, value):
    """An @extra of an E line into `fields`: @reason=N, @caller=SYMDATA, @peek=HEX ("-": none).

    symdata() prints "kfree_skb_reason+0x1a/0x80 [kernel]" (symbol, offset, size, module),
    or the address in hex when no symbol covers it: kept as the symbol and offset, or an int.
    """
    if value == "-":
        return
    if name == "@reason":
        fields["reason"] = int(value)
    elif name == "@caller":
        symbol = value.split("/", 1)[0].split(" ", 1)[0]
        fields["caller"] = int(symbol, 16) if symbol.startswith("0x") else symbol
    elif name == "@peek":
        fields.update(payload.fields(bytes.fromhex(value)))
    else:
        raise ValueError("unknown extra {}".format(name))


# Memoised: a process's comm and command line come back on each of its events.
@functools.lru_cache(maxsize=1024)
def unescape(text):
    """Undo SystemTap's text_str(): C escapes, \\ooo bytes, \\uXXXX code points."""
    out = bytearray()
    pos = 0
    for match in _ESCAPE_RE.finditer(text):
        out += text[pos:match.start()].encode("utf-8")
        code = match.group(1)
        if len(code) == 3:
            out.append(int(code, 8))
        elif len(code) > 3:
            out += chr(int(code[1:], 16)).encode("utf-8", "replace")
        else:
            out.append(_SIMPLE_ESCAPES.get(code, ord(code) if ord(code) < 128 else 63))
        pos = match.end()
    out += text[pos:].encode("utf-8")
    return out.decode("utf-8", "replace")


@functools.lru_cache(maxsize=1024)
def _address(family, text):
    """Hex bytes in network order -> canonical ipaddress text (a pure function, memoised)."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(text))
    if family == 6:
        return str(ipaddress.IPv6Address(bytes.fromhex(text)))
    return None


def _count_lost(line, lost):
    if line.startswith(PROTOCOL + "\tL\t"):
        parts = line.split("\t")
        if len(parts) == 4 and parts[3].isdigit():
            lost["stap " + parts[2]] += int(parts[3])


def real_skipped(skipped, caught, version):
    """The probe hits stap skipped, from its exit report's count `skipped`, without the `caught`
    faults its probes caught where kernel `version` counts those as missed hits too
    (features.KPROBE_FAULTS_COUNTED_MISSED_BEFORE): each caught fault is one such count."""
    if version < features.KPROBE_FAULTS_COUNTED_MISSED_BEFORE:
        return max(0, skipped - caught)
    return skipped


def _count_exit_report(line, lost):
    for regex, cause in ((_SKIPPED_RE, "stap skipped probes"), (_ERRORS_RE, "stap errors"),
                         (_TRANSPORT_RE, "stap transport failures")):
        match = regex.search(line)
        if match and int(match.group(1)):
            lost[cause] += int(match.group(1))


def _errors(lines):
    """stap's ERROR lines (else its last lines), as one line for a LegacytraceError."""
    errors = ([line for line in lines if ": error:" in line][:3]
              or [line for line in lines if "ERROR" in line or "error" in line] or lines[-3:])
    return " | ".join(line.strip() for line in errors)


# --- validation: everything below turns request values into template values ---------

def _release(release):
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


# --- side effects: compiling, the cache, staprun, /proc ----------------------------

def cache_dir(create=True):
    """Where compiled modules live: $LEGACYTRACE_STAP_CACHE, else ~/.cache/legacytrace/stap.

    `create` makes the missing folders 0700, after checking the folders above them, and
    refuses (trust.Untrusted) a cache another user could change: root loads its modules.
    """
    path = os.path.abspath(os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "legacytrace", "stap"))
    if create:
        missing, existing = [], path
        while not os.path.isdir(existing):
            missing.append(existing)
            existing = os.path.dirname(existing)
        unsafe = trust.problem(existing, own_below=path)
        for folder in reversed(missing if unsafe is None else ()):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        unsafe = unsafe or trust.problem(path, own_below=path)
        if unsafe:
            raise trust.Untrusted("refusing the stap module cache {}: {}: {}".format(
                path, unsafe, _CACHE_ADVICE))
    return path


#: What to do about a cache another user could change.
_CACHE_ADVICE = ("root would load kernel modules another user could have put there; fix its "
                 "permissions or set {} to a folder only you can write".format(CACHE_ENV))


def _unsafe_module(module):
    """Why the cached `module` must not be loaded, or None (its folder and it are ours)."""
    unsafe = trust.problem(module, own_below=cache_dir(create=False))
    return unsafe and "refusing the cached stap module {}: {}: {}".format(
        module, unsafe, _CACHE_ADVICE)


def cached_modules(release):
    """Paths of the cached modules compiled for `release` (KEY/NAME.ko beside NAME.stp, whose
    header names the target kernel): what this host can run without a compiler."""
    found = []
    root = cache_dir(create=False)
    wanted = " * Target kernel: {}\n".format(release)
    for key in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        folder = os.path.join(root, key)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            module = os.path.join(folder, name[:-4] + ".ko")
            if name.endswith(".stp") and os.path.isfile(module) and _script_targets(
                    os.path.join(folder, name), wanted) and not _unsafe_module(module):
                found.append(module)
    return found


def _script_targets(path, wanted):
    try:
        with open(path) as handle:
            return wanted in [next(handle, "") for _ in range(4)]
    except (IOError, OSError, UnicodeError):
        return False


def _stap_command(program, release, runtime):
    """stap's arguments (without -m and the script): -g -p4, -r, -R and the -D options."""
    release = release or program.data.get("release")
    explicit, runtime = runtime, runtime or os.environ.get(RUNTIME_ENV)
    command = ["stap", "-g", "-p4"] + list(STAP_DEFINES)
    if release:
        command += ["-r", release if os.path.isabs(release) else _release(release)]
    if runtime:
        if not os.path.isdir(runtime):
            raise UsageError("SystemTap runtime {} is not a directory (stap -R)".format(runtime))
        _check_runtime(runtime, named=runtime == explicit)
        command += ["-R", os.path.abspath(runtime)]
    return command


def _check_runtime(runtime, named):
    """The runtime's C becomes the module: refuse one from the environment that another user
    could change; warn about one named with -R."""
    unsafe = trust.tree_problem(runtime)
    if unsafe and named:
        _warn("-R {}: {}: whoever can change it writes the module's code".format(runtime, unsafe))
    elif unsafe:
        raise trust.Untrusted("refusing the SystemTap runtime {} of {}: {}: root would compile "
                              "code another user could have changed into a kernel module"
                              .format(runtime, RUNTIME_ENV, unsafe))


def _digest(command, text, version):
    key = json.dumps({"protocol": PROTOCOL, "command": command, "stap": version,
                      "script": text}, sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def _stap_version():
    result = _call(["stap", "-V"])
    if result.returncode != 0:
        raise LegacytraceError("stap -V failed: {}: install systemtap".format(
            result.output.strip()[:200]))
    return result.output.splitlines()[0] if result.output else ""


def _compile_into(target, name, command, text):
    """stap -m NAME in a scratch directory, then move it, NAME.ko and NAME.stp, to target."""
    parent = os.path.dirname(target)
    scratch = tempfile.mkdtemp(prefix=".{}.".format(name), dir=parent)
    try:
        script = os.path.join(scratch, name + ".stp")
        with open(script, "w") as handle:
            handle.write(text)
        result = _call(command + ["-m", name, script], cwd=scratch)
        if result.returncode != 0 or not os.path.isfile(os.path.join(scratch, name + ".ko")):
            raise LegacytraceError("stap could not compile the program: {}".format(
                _errors(result.output.splitlines()) or "exit status {}".format(result.returncode)))
        for leftover in os.listdir(scratch):
            if leftover not in (name + ".ko", name + ".stp"):
                os.remove(os.path.join(scratch, leftover))
            else:
                os.chmod(os.path.join(scratch, leftover), 0o600)
        os.rename(scratch, target)  # atomic; a concurrent build of the same key may win
    except OSError:
        if not os.path.isdir(target):
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_Result = collections.namedtuple("_Result", "returncode output")


def _call(argv, cwd=None):
    """Run argv, stdout and stderr together; a missing program is status 127."""
    try:
        proc = subprocess.Popen([trust.program(argv[0])] + argv[1:], cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        return _Result(127, str(exc))
    output = proc.communicate()[0]
    return _Result(proc.returncode, output.decode("utf-8", "replace"))


def _die_with_parent():
    """In the child: get SIGTERM when legacytrace dies (prctl PR_SET_PDEATHSIG = 1)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _decoded(stream):
    for raw in iter(stream.readline, b""):
        yield raw.decode("utf-8", "replace").rstrip("\n")


def _wait(proc):
    """Wait for staprun to end, at most STOP_TIMEOUT seconds (it unloads the module first,
    which has taken more than a minute in the lab); False when it has not ended."""
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill(proc):
    try:
        proc.kill()
        proc.wait(5)
    except Exception as exc:
        _warn("killing staprun: {}".format(exc))


def _loaded_modules():
    try:
        with open("/proc/modules") as handle:
            return [line.split(" ", 1)[0] for line in handle]
    except OSError:
        return []


def _stapruns():
    """pid -> command line of every staprun (it execs stapio in the same process)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/comm".format(entry)) as handle:
                if handle.read().strip() not in ("staprun", "stapio"):
                    continue
            with open("/proc/{}/cmdline".format(entry), "rb") as handle:
                found[int(entry)] = handle.read().decode("utf-8", "replace").replace("\0", " ")
        except OSError:
            continue
    return found


def _warn(message):
    sys.stderr.write("legacytrace: warning: stap: {}\n".format(message))
