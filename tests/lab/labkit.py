"""Guest-side helpers of the kernel lab, shared by the pytest fixtures and capture.py.

Plain functions and small classes without pytest, so a capture script can run the
same traffic and the same tracefs handling as the tests. Everything here runs as root
inside the lab guest (see tests/lab/README.md).
"""
import errno
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

LOOPBACK = "127.0.0.1"
BTF = "/sys/kernel/btf/vmlinux"
UDP_PAYLOAD = "legacytrace-lab"
HTTP_PATH = "/legacytrace-lab.txt"

# Senders are small programs of their own (bash, curl, busybox): under TCG every process
# start costs seconds per shared library, and a Python start costs about ten.
UDP_SEND = 'printf %s "$1" > /dev/udp/"$2"/"$3"'


#: The CLI of the venv that runs the tests (the console script, not the checkout's module).
LEGACYTRACE = str(Path(sys.executable).parent / "legacytrace")


class LabError(RuntimeError):
    """A lab helper could not do its job; the message names the problem."""


# --- processes -------------------------------------------------------------

@dataclass
class Workload:
    """A finished process of known shape: who sent the traffic, for comparison with traces."""

    name: str
    argv: List[str]
    pid: int
    returncode: int
    output: str
    dport: Optional[int] = None
    comm: str = ""

    def __post_init__(self) -> None:
        """comm as the kernel shows it: the executed file's base name, cut to 15 bytes."""
        self.comm = self.comm or os.path.basename(self.argv[0])[:15]

    def as_dict(self) -> Dict[str, object]:
        """For sidecar files and failure messages."""
        return {"name": self.name, "argv": self.argv, "pid": self.pid, "comm": self.comm,
                "dport": self.dport, "returncode": self.returncode}


def run_process(name: str, argv: List[str], timeout: float = 60,
                dport: Optional[int] = None) -> Workload:
    """Run argv to its end and keep its pid, which a finished subprocess.run would hide."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise LabError("{} did not finish in {} s: {}".format(name, timeout, out.strip()[-300:]))
    return Workload(name, list(argv), proc.pid, proc.returncode, out, dport)


def start_and_wait_for(argv: List[str], marker: str, timeout: float = 60,
                       stream: str = "stdout") -> subprocess.Popen:
    """Start a helper process and return once it printed marker (it is then ready)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return proc
    stop_process(proc)
    raise LabError("{} never printed {!r}; it said: {}".format(
        argv[0], marker, "".join(seen)[-500:] or "(nothing)"))


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> str:
    """Signal the process itself (not a shell around it) and collect the rest of its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return (out or "") + (err or "")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# --- traffic of a known shape -----------------------------------------------

def loopback_up() -> None:
    """Loopback is down when the lab guest boots."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def ping(count: int = 2) -> Workload:
    """ICMP echo over loopback: 84-byte IP packets, one request and one reply per count."""
    return run_process("ping", ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "5", LOOPBACK])


def udp_send(name: str, port: int) -> Workload:
    """One datagram from bash's /dev/udp (the bash process itself sends it)."""
    return run_process(name, ["bash", "-c", UDP_SEND, "bash", UDP_PAYLOAD, LOOPBACK, str(port)],
                       dport=port)


def udp_closed_port() -> Workload:
    """A datagram to a port without a listener: the kernel answers ICMP port unreachable."""
    return udp_send("udp-closed", free_port(socket.SOCK_DGRAM))


def udp_open_port() -> List[Workload]:
    """A datagram to a socket of this process; returns the sender and the receiver (this process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(30)
        port = sock.getsockname()[1]
        sender = udp_send("udp-open", port)
        data = sock.recv(2048).decode()
    if data != UDP_PAYLOAD:
        raise LabError("the UDP receiver got {!r}".format(data))
    me = Path("/proc/self")
    argv = [a.decode() for a in me.joinpath("cmdline").read_bytes().split(b"\0")[:-1]]
    receiver = Workload("udp-receiver", argv, os.getpid(), 0, data, port,
                        me.joinpath("comm").read_text().strip())
    return [sender, receiver]


class Listener:
    """A TCP listener on loopback (`port`, or a free one) that accepts and reads in a thread,
    answering HTTP; a context manager that closes it."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                try:
                    if conn.recv(4096):
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def exchange(self, data: bytes = b"GET /warm-up HTTP/1.1\r\nHost: lab\r\n\r\n") -> int:
        """One connection from this process: connect, send, read the answer, close."""
        with socket.create_connection((LOOPBACK, self.port), timeout=30) as conn:
            conn.sendall(data)
            conn.recv(4096)
            return conn.getsockname()[1]

    def close(self) -> None:
        """shutdown() first: close() alone leaves a socket that a thread's accept() blocks on
        listening, and the next Listener on the port fails with EADDRINUSE."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def wait_listening(port: int, timeout: float = 60) -> None:
    """Wait for a TCP listener without connecting to it (a probe connection would be traced too)."""
    wanted = "{}:{:04X}".format("0100007F", port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return
        time.sleep(0.1)
    raise LabError("nothing listens on {}:{} after {} s".format(LOOPBACK, port, timeout))


def http_request() -> List[Workload]:
    """One TCP connection carrying curl's HTTP/1.1 GET to busybox httpd; returns client and server."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ltlab-http-") as root:
        Path(root, HTTP_PATH.lstrip("/")).write_text("hello from the legacytrace lab\n")
        argv = ["busybox", "httpd", "-f", "-v", "-p", "{}:{}".format(LOOPBACK, port), "-h", root]
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True)
        try:
            wait_listening(port)
            client = run_process("http", ["curl", "-sS", "--http1.1", "-o", "/dev/null",
                                          "-w", "%{http_code}",
                                          "http://{}:{}{}".format(LOOPBACK, port, HTTP_PATH)],
                                 dport=port)
        finally:
            out = stop_process(server, signal.SIGTERM)
    if client.output.strip() != "200":
        raise LabError("HTTP request failed: curl said {!r}".format(client.output))
    return [client, Workload("http-server", argv, server.pid, server.returncode, out, port)]


def all_traffic() -> List[Workload]:
    """Every traffic shape once, in a fixed order: ping, UDP closed, UDP open, HTTP."""
    return [ping()] + [udp_closed_port()] + udp_open_port() + http_request()


# --- ground truth: tcpdump ----------------------------------------------------

@dataclass
class Packet:
    """One packet as tcpdump printed it, with the few fields tests compare."""

    time: float
    src: str
    dst: str
    sport: Optional[int]
    dport: Optional[int]
    proto: str
    line: str


PACKET_RE = re.compile(
    r"^(?P<time>\d+\.\d+) IP (?P<src>\d+\.\d+\.\d+\.\d+)(?:\.(?P<sport>\d+))? > "
    r"(?P<dst>\d+\.\d+\.\d+\.\d+)(?:\.(?P<dport>\d+))?: (?P<rest>.*)$")


def parse_tcpdump_line(line: str) -> Optional[Packet]:
    """`tcpdump -n -tt` text to a Packet; None for lines that are not IPv4."""
    m = PACKET_RE.match(line.strip())
    if not m:
        return None
    rest = m.group("rest")
    if rest.startswith("ICMP"):
        proto = "icmp"
    elif rest.startswith("UDP"):
        proto = "udp"
    else:
        proto = "tcp" if rest.startswith("Flags") else "other"
    return Packet(float(m.group("time")), m.group("src"), m.group("dst"),
                  _port(m.group("sport")), _port(m.group("dport")), proto, line.rstrip("\n"))


def _port(text: Optional[str]) -> Optional[int]:
    """ICMP lines have no ports."""
    return int(text) if text else None


@dataclass
class Tcpdump:
    """tcpdump on an interface, started before and stopped after the traffic; `expression`
    (its words) picks the packets."""

    iface: str = "lo"
    proc: Optional[subprocess.Popen] = None
    text: List[str] = field(default_factory=list)
    expression: Sequence[str] = ()

    def start(self) -> "Tcpdump":
        """Returns once tcpdump listens, so no packet of the traffic is missed."""
        argv = ["tcpdump", "-i", self.iface, "-n", "-tt", "-l", "--immediate-mode"] + \
            list(self.expression)
        self.proc = start_and_wait_for(argv, "listening on", stream="stderr")
        return self

    def stop(self) -> List[Packet]:
        """SIGINT to tcpdump itself; it prints what is left and exits."""
        self.text = stop_process(self.proc).splitlines()
        return self.packets()

    def packets(self) -> List[Packet]:
        """The parsed IPv4 packets of the finished capture."""
        return [p for p in map(parse_tcpdump_line, self.text) if p]

    def __enter__(self) -> "Tcpdump":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.stop()


# --- tracefs ------------------------------------------------------------------

def tracefs_root() -> Path:
    """The mounted tracefs, mounting it if needed (the lab guest usually has it)."""
    for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (root / "trace").exists():
            return root
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    return Path("/sys/kernel/tracing")


def append_line(path: Path, line: str) -> None:
    """Append, never truncate: truncating kprobe_events deletes every probe on the system.

    A plain write on an O_APPEND descriptor, like the shell's `>>` (Python's "a" mode
    also seeks, which tracefs refuses with EINVAL).
    """
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class TraceSession:
    """Own kprobes and events in an own buffer instance; undoes exactly what it did."""

    def __init__(self, instance: str, root: Optional[Path] = None):
        self.root = root or tracefs_root()
        self.inst = self.root / "instances" / instance
        self.kprobes: List[str] = []
        self.enabled: List[str] = []

    def __enter__(self) -> "TraceSession":
        self.inst.mkdir()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_kprobe(self, definition: str) -> str:
        """Append a `p:GROUP/EVENT ...` or `r:...` line; returns GROUP/EVENT."""
        event = definition.split()[0].split(":", 1)[1]
        try:
            append_line(self.root / "kprobe_events", definition)
        except OSError as e:
            raise LabError("kernel refused {!r}: {} {}".format(definition, e, self.error_log()))
        self.kprobes.append(event)
        return event

    def enable(self, event: str) -> None:
        """Enable GROUP/EVENT in the own instance only."""
        (self.inst / "events" / event / "enable").write_text("1")
        self.enabled.append(event)

    def set(self, name: str, value: str) -> None:
        """Write an instance file (trace_clock, options/hash-ptr); the instance dies with the session."""
        (self.inst / name).write_text(value)

    def read_pipe(self, settle: float = 0.5) -> str:
        """Drain trace_pipe without blocking, until it stays empty for `settle` seconds."""
        fd = os.open(str(self.inst / "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        chunks = []
        quiet_since = time.monotonic()
        try:
            while time.monotonic() - quiet_since < settle:
                try:
                    data = os.read(fd, 65536)
                except OSError as e:
                    if e.errno != errno.EAGAIN:
                        raise
                    time.sleep(0.05)
                    continue
                if data:
                    chunks.append(data)
                    quiet_since = time.monotonic()
                else:
                    time.sleep(0.05)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")

    def error_log(self) -> str:
        """The kernel's reason for a refused definition (5.1+ has error_log)."""
        log = self.root / "error_log"
        return log.read_text().strip()[-500:] if log.exists() else ""

    def close(self) -> None:
        """Disable, drop the instance, then remove only the own probes (enabled ones are busy)."""
        for event in self.enabled:
            (self.inst / "events" / event / "enable").write_text("0")
        self.enabled = []
        if self.inst.exists():
            self.inst.rmdir()
        for event in self.kprobes:
            append_line(self.root / "kprobe_events", "-:" + event)
        self.kprobes = []


# --- struct layout from BTF ---------------------------------------------------

def btf_offsets(struct: str, members: Iterable[str],
                btf: str = "/sys/kernel/btf/vmlinux") -> Dict[str, int]:
    """Byte offsets of members, from pahole over the running kernel's BTF.

    pahole prints members of anonymous nested structs/unions with offsets from the
    start of the outer struct; the first plain (non-bitfield) match of a name wins.
    """
    out = subprocess.run(["pahole", "-C", struct, btf], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise LabError("pahole -C {} {} failed: {}".format(struct, btf, out.stderr.strip()[-300:]))
    found = {}
    for name in members:
        m = re.search(r"[\s*]{}(?:\[\d+\])?;\s*/\*\s*(\d+)\s+\d+\s*\*/".format(re.escape(name)),
                      out.stdout)
        if not m:
            raise LabError("pahole shows no member {} in struct {}".format(name, struct))
        found[name] = int(m.group(1))
    return found


def kernel_symbols() -> Set[str]:
    """Names of the lab kernel outside modules (a static function the compiler inlined is absent):
    /proc/kallsyms in the guest, the kernel's System.map on the host (the host phase builds for it)."""
    path = "/proc/kallsyms" if os.environ.get("LEGACYTRACE_LAB_PHASE") != "host" else \
        "/boot/System.map-" + kernel_release()
    with open(path) as f:
        return {fields[2] for fields in map(str.split, f) if len(fields) == 3}


def kernel_release() -> str:
    """The lab kernel's release: uname -r in the guest, the one the host phase builds for."""
    if os.environ.get("LEGACYTRACE_LAB_PHASE") == "host":
        return os.environ["LEGACYTRACE_LAB_RELEASE"]
    return os.uname().release


#: Why the bpf backend has no lab test on EL7's 3.10 (tests/lab/test_host.py checks that doctor
#: says so): EL7's backported eBPF runs a bpftrace kprobe there, the backend is not proven.
NO_BPFTRACE = "the bpf backend needs 4.9, bpftrace's minimum; not proven on EL7's backported eBPF"


def lab_kernel() -> str:
    """The lab kernel's name (tests/lab/labkernels.py: 6.1, 5.10, el7)."""
    return os.environ.get("LEGACYTRACE_LAB_KERNEL", "6.1")


def manifest_probes(name: str, *functions: str) -> list:
    """Probes of bundled manifest `name` on the running kernel, with the argument positions the
    manifest gives for it (legacytrace.manifest.resolve, symbols from kallsyms).

    Without `functions`: every entry, as `legacytrace trace` resolves it. With them: for each
    name, the manifest's variant of that name that fits this kernel (also where the entry
    prefers another function), in the order given; LabError when one does not resolve."""
    from legacytrace import manifest
    from legacytrace.kernel.release import KernelRelease
    loaded = manifest.load(name)
    kernel = KernelRelease.parse(kernel_release())
    exists = kernel_symbols().__contains__
    if not functions:
        return manifest.resolve(loaded, kernel, exists=exists).probes
    probes = []
    for function in functions:
        entries = tuple(entry._replace(variants=tuple(v for v in entry.variants if v.name == function))
                        for entry in loaded.functions)
        found = manifest.resolve(loaded._replace(functions=tuple(e for e in entries if e.variants)),
                                 kernel, exists=exists).probes
        if not found:
            raise LabError("manifest {} has no variant of {} for {}".format(name, function, kernel))
        probes.append(found[0])
    return probes


class CliTrace:
    """`legacytrace trace ... --json` in its own session: stdout lines collected as they come,
    stderr in a file of `folder`. `pipe_to` sends stdout through a shell pipe (`head -1`)."""

    def __init__(self, args: List[str], folder, env: Optional[Dict[str, str]] = None,
                 pipe_to: Optional[str] = None):
        argv = [LEGACYTRACE, "trace", "--json"] + list(args)
        self.stderr_path = Path(str(folder)) / "stderr-{}.txt".format(time.monotonic())
        command = argv
        if pipe_to:
            command = ["sh", "-c", " ".join(map(shlex.quote, argv)) + " | " + pipe_to]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                                     stderr=open(str(self.stderr_path), "w"),
                                     env=dict(os.environ, **(env or {})), start_new_session=True)
        self.buffer = b""
        self.lines: List[str] = []

    def read(self, timeout: float) -> bool:
        """Collect complete stdout lines for up to `timeout` seconds; False at end of output."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return True
        data = os.read(fd, 65536)
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines += [line.decode() for line in complete]
        return bool(data)

    def finish(self, timeout: float) -> int:
        """Read to the end of output (the tracer is stopping), then its exit code."""
        deadline = time.monotonic() + timeout
        while self.read(1.0):
            if time.monotonic() > deadline:
                raise LabError("the trace did not end within {} s: {}".format(timeout, self.stderr))
        self.proc.wait(max(1.0, deadline - time.monotonic()))
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def objects(self) -> List[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    @property
    def events(self) -> List[dict]:
        """The event objects of --json (not the summary object that ends it)."""
        return [obj for obj in self.objects if "type" not in obj]

    @property
    def summary(self) -> Optional[dict]:
        """The last --json object: the run's summary, or None when the run did not end."""
        found = [obj for obj in self.objects if obj.get("type") == "summary"]
        return found[-1] if found else None
