"""Guest-side helpers of the kernel lab, shared by the pytest fixtures and capture.py.

Plain functions and small classes without pytest, so a capture script can run the
same traffic and the same tracefs handling as the tests. Everything here runs as root
inside the lab guest (see tests/lab/README.md).
"""
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

LOOPBACK = "127.0.0.1"
UDP_PAYLOAD = "legacytrace-lab"
HTTP_PATH = "/legacytrace-lab.txt"

# Small programs run as their own processes so a test knows their pid and argv.
UDP_SEND = (
    "import socket,sys;"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
    "s.sendto(sys.argv[3].encode(),(sys.argv[1],int(sys.argv[2])))"
)
UDP_RECV = (
    "import socket,sys;"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
    "s.bind((sys.argv[1],int(sys.argv[2])));"
    "print('ready',flush=True);"
    "s.settimeout(30);"
    "print(s.recvfrom(2048)[0].decode(),flush=True)"
)


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

    @property
    def comm(self) -> str:
        """What the kernel shows as comm: the executed file's base name, cut to 15 bytes."""
        return os.path.basename(self.argv[0])[:15]

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


def udp_closed_port() -> Workload:
    """A datagram to a port without a listener: the kernel answers ICMP port unreachable."""
    port = free_port(socket.SOCK_DGRAM)
    return run_process("udp-closed", [sys.executable, "-c", UDP_SEND, LOOPBACK, str(port), UDP_PAYLOAD],
                       dport=port)


def udp_open_port() -> List[Workload]:
    """A datagram to a listening socket; returns the sender and the receiver."""
    port = free_port(socket.SOCK_DGRAM)
    argv = [sys.executable, "-c", UDP_RECV, LOOPBACK, str(port)]
    server = start_and_wait_for(argv, "ready")
    sender = run_process("udp-open", [sys.executable, "-c", UDP_SEND, LOOPBACK, str(port), UDP_PAYLOAD],
                         dport=port)
    out, _ = server.communicate(timeout=60)
    receiver = Workload("udp-receiver", argv, server.pid, server.returncode, "ready\n" + out)
    if UDP_PAYLOAD not in out:
        raise LabError("the UDP receiver got nothing: {!r}".format(out))
    return [sender, receiver]


def http_request() -> List[Workload]:
    """One TCP connection carrying an HTTP/1.1 GET to a local server; returns client and server."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ltlab-http-") as root:
        Path(root, HTTP_PATH.lstrip("/")).write_text("hello from the legacytrace lab\n")
        argv = [sys.executable, "-u", "-m", "http.server", "--bind", LOOPBACK,
                "--directory", root, str(port)]
        server = start_and_wait_for(argv, "Serving HTTP")
        try:
            client = run_process("http", ["curl", "-sS", "--http1.1", "-o", "/dev/null",
                                          "-w", "%{http_code}",
                                          "http://{}:{}{}".format(LOOPBACK, port, HTTP_PATH)],
                                 dport=port)
        finally:
            out = stop_process(server, signal.SIGTERM)
    if client.output.strip() != "200":
        raise LabError("HTTP request failed: curl said {!r}".format(client.output))
    return [client, Workload("http-server", argv, server.pid, server.returncode, out)]


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
    r"^(?P<time>\d+\.\d+) IP (?P<src>[\d.]+?)(?:\.(?P<sport>\d+))? > "
    r"(?P<dst>[\d.]+?)(?:\.(?P<dport>\d+))?: (?P<rest>.*)$")


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
    """tcpdump on an interface, started before and stopped after the traffic."""

    iface: str = "lo"
    pcap: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".pcap")[1]))
    proc: Optional[subprocess.Popen] = None
    text: List[str] = field(default_factory=list)

    def start(self) -> "Tcpdump":
        """Returns once tcpdump listens, so no packet of the traffic is missed."""
        argv = ["tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-w", str(self.pcap)]
        self.proc = start_and_wait_for(argv, "listening on", stream="stderr")
        return self

    def stop(self) -> List[Packet]:
        """SIGINT to tcpdump itself flushes the file; then read it back as text."""
        stop_process(self.proc)
        out = subprocess.run(["tcpdump", "-r", str(self.pcap), "-n", "-tt"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             universal_newlines=True, check=True).stdout
        self.text = out.splitlines()
        return self.packets()

    def packets(self) -> List[Packet]:
        """The parsed IPv4 packets of the finished capture."""
        return [p for p in map(parse_tcpdump_line, self.text) if p]

    def __enter__(self) -> "Tcpdump":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.stop()
        self.pcap.unlink()


# --- tracefs ------------------------------------------------------------------

def tracefs_root() -> Path:
    """The mounted tracefs, mounting it if needed (the lab guest usually has it)."""
    for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (root / "trace").exists():
            return root
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    return Path("/sys/kernel/tracing")


def append_line(path: Path, line: str) -> None:
    """Append, never truncate: truncating kprobe_events deletes every probe on the system."""
    with open(str(path), "a") as f:
        f.write(line + "\n")


class TraceSession:
    """Own kprobes and events in an own buffer instance; undoes exactly what it did."""

    def __init__(self, instance: str, root: Optional[Path] = None):
        self.root = root or tracefs_root()
        self.inst = self.root / "instances" / instance
        self.kprobes: List[str] = []
        self.enabled: List[str] = []
        self.options: Dict[str, str] = {}

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

    def set_global_option(self, name: str, value: str) -> None:
        """Some options (record-tgid) exist only at the top level: remember and restore them."""
        path = self.root / "options" / name
        self.options.setdefault(name, path.read_text().strip())
        path.write_text(value)

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
        for name, value in self.options.items():
            (self.root / "options" / name).write_text(value)
        self.options = {}


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


def kernel_release() -> str:
    """The running kernel's release (uname -r)."""
    return os.uname().release
