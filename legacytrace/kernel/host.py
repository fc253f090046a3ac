"""What a host can do, as plain data: read from the running system or from a recording.

`HostFacts` is data only (JSON round-trips), so selection and program building
can be tested with the recorded facts of an EL7 3.10 host, the 6.1 lab kernel or
this machine. `probe_host()` reads them from the running system without needing root
for what is readable, and changes nothing: it mounts nothing and loads nothing but a
bpftrace program that only exits (as root). Where tracefs is, and mounting it, is
legacytrace.kernel.tracefs.

The text parsers (`parse_*`) are pure so recorded files test them.
"""
import gzip
import os
import re
import shutil

from legacytrace import trust
from legacytrace.kernel import btf, features, tracefs as tracefsmod
from legacytrace.kernel.release import KernelRelease

#: Kernel config options the checks read; `HostFacts.kernel_config` maps each to y/m/n.
CONFIG_OPTIONS = ("CONFIG_MODULES", "CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS", "CONFIG_FTRACE",
                  "CONFIG_EVENT_TRACING", "CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_SYSCALL",
                  "CONFIG_BPF_EVENTS")

# Options that were named differently on older kernels: CONFIG_KPROBE_EVENT became
# CONFIG_KPROBE_EVENTS in 4.11 (3.10/EL7 configs carry the old name).
_CONFIG_RENAMED = {"CONFIG_KPROBE_EVENT": "CONFIG_KPROBE_EVENTS"}
# CAP_SYS_ADMIN is bit 21 of the capability sets in /proc/PID/status.
_CAP_SYS_ADMIN = 21
_BPFTRACE_VERSION = re.compile(r"bpftrace\s+v?(\S+)")
_STAP_VERSION = re.compile(r"\(version\s+([^,\s)]+)")
# Generous: in the lab's QEMU TCG guest `bpftrace --version` took 43 s (measured); on a
# real host it takes well under a second. A timeout only guards against a hang.
_TIMEOUT_VERSION = 120
_TIMEOUT_LOAD = 180


class HostFacts(object):
    """Facts about one host; every field is plain data.

    release        -- `uname -r` text
    arch           -- `uname -m` (x86_64)
    distro         -- PRETTY_NAME from os-release, or ""
    root           -- euid 0 or CAP_SYS_ADMIN in the effective set
    tracefs        -- path of the mounted tracing directory, or None
    tracefs_mountable -- a tracefs/debugfs could be mounted (we are root and the kernel has it)
    kprobe_events  -- the tracing directory has a kprobe_events file; None when that could
                      not be read (tracefs not mounted or not readable, config unknown)
    kprobe_syntax  -- optional kprobe syntax features the kernel's tracing/README advertises
                      (names from `legacytrace.kernel.features.KPROBE_SYNTAX`)
    instances      -- the tracing directory has instances/ (own ring buffers)
    tracepoints    -- "system:event" names of the tracepoints in
                      `legacytrace.kernel.features.NET_TRACE_SYSTEMS` (net, skb, sock, tcp, ...)
    btf            -- path of the kernel's BTF (/sys/kernel/btf/vmlinux), or None
    bpftrace       -- bpftrace version text, or None when absent or not runnable
    stap           -- SystemTap version text, or None
    kernel_build   -- path of the build tree (kernel-devel / linux-headers) for `release`, or None
    cc             -- path of a C compiler, or None
    notes          -- extra words for `doctor` (e.g. why a probe failed)
    distro_ids     -- os-release ID then ID_LIKE words ("centos", "rhel", "fedora")
    kernel_config  -- {option: "y"/"m"/"n"} for `CONFIG_OPTIONS`, or None when unreadable
    kernel_config_source -- the file `kernel_config` came from
    kprobes        -- the kernel has kprobes (CONFIG_KPROBES), None when unknown
    kprobe_pmu     -- perf's kprobe PMU exists (how bpftrace attaches kprobes, 4.17+)
    modules        -- the kernel loads modules (CONFIG_MODULES; SystemTap needs it), None unknown
    lockdown       -- the active kernel lockdown mode (none/integrity/confidentiality), or None
    bpftrace_loads -- `bpftrace -e 'BEGIN { exit(); }'` worked; None when not tried (not root)
    bpftrace_error -- what bpftrace said when it could not load, or None
    staprun        -- path of staprun (runs a module built elsewhere), or None
    """

    FIELDS = ("release", "arch", "distro", "root", "tracefs", "tracefs_mountable",
              "kprobe_events", "kprobe_syntax", "instances", "tracepoints", "btf",
              "bpftrace", "stap", "kernel_build", "cc", "notes",
              "distro_ids", "kernel_config", "kernel_config_source", "kprobes", "kprobe_pmu",
              "modules", "lockdown", "bpftrace_loads", "bpftrace_error", "staprun")

    def __init__(self, **values):
        defaults = {"arch": "x86_64", "distro": "", "root": False, "tracefs_mountable": False,
                    "kprobe_events": False, "kprobe_syntax": [], "instances": False,
                    "tracepoints": [], "notes": [], "distro_ids": [], "kprobe_pmu": False}
        for name in self.FIELDS:
            setattr(self, name, values.pop(name, defaults.get(name)))
        if values:
            raise TypeError("unknown HostFacts fields: " + ", ".join(sorted(values)))
        self.kernel = KernelRelease.parse(self.release)

    def to_dict(self):
        return dict((name, getattr(self, name)) for name in self.FIELDS)

    @classmethod
    def from_dict(cls, data):
        return cls(**dict((k, v) for k, v in data.items() if k in cls.FIELDS))

    def config(self, option):
        """"y", "m" or "n" for a `CONFIG_OPTIONS` option, or None when the config is unknown."""
        if not self.kernel_config:
            return None
        return self.kernel_config.get(option)


# ---- pure parsers -------------------------------------------------------------------

def parse_os_release(text):
    """os-release text -> (PRETTY_NAME, [ID, *ID_LIKE])."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    ids = [values["ID"]] if values.get("ID") else []
    ids.extend(values.get("ID_LIKE", "").split())
    return values.get("PRETTY_NAME", ""), ids


def parse_config(text):
    """Kernel .config text -> {option: "y"/"m"/"n"} for every option in `CONFIG_OPTIONS`.

    An option the file does not mention is "n": its dependencies were not met.
    """
    found = {}
    for line in text.splitlines():
        match = re.match(r"^(CONFIG_\w+)=(\S+)", line)
        if match:
            found[_CONFIG_RENAMED.get(match.group(1), match.group(1))] = match.group(2)
    return dict((name, found[name] if found.get(name) in ("y", "m") else "n")
                for name in CONFIG_OPTIONS)


def parse_cap_sys_admin(status_text):
    """/proc/self/status text -> whether CAP_SYS_ADMIN is in the effective set (CapEff)."""
    match = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text, re.M)
    return bool(match) and bool(int(match.group(1), 16) >> _CAP_SYS_ADMIN & 1)


def parse_lockdown(text):
    """/sys/kernel/security/lockdown text ("none [integrity] confidentiality") -> the active mode."""
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else None


def parse_bpftrace_version(text):
    """`bpftrace --version` output ("bpftrace v0.17.0") -> "0.17.0", or None."""
    match = _BPFTRACE_VERSION.search(text)
    return match.group(1) if match else None


def parse_stap_version(text):
    """`stap -V` output ("Systemtap translator/driver (version 4.8/0.188, ...") -> "4.8/0.188"."""
    match = _STAP_VERSION.search(text)
    return match.group(1) if match else None


# ---- reading the running system -----------------------------------------------------

def _read(path, opener=open):
    """The text of `path`, or None when it is absent or unreadable."""
    try:
        with opener(path, "rt") as handle:
            return handle.read()
    except (IOError, OSError, EOFError):
        return None


def _kernel_config(release):
    """({option: value}, source path) from /proc/config.gz or /boot/config-RELEASE, or (None, None)."""
    for path, opener in (("/proc/config.gz", gzip.open), ("/boot/config-" + release, open)):
        text = _read(path, opener)
        if text:
            return parse_config(text), path
    return None, None


def _kernel_build(release):
    """The kernel build tree for `release`: Debian/upstream /lib/modules/R/build, EL /usr/src/kernels/R."""
    for path in ("/lib/modules/{}/build".format(release), "/usr/src/kernels/" + release):
        if os.path.isfile(os.path.join(path, "Makefile")):
            return path
    return None


def _tracepoints(tracefs):
    """"system:event" names under tracefs/events for the systems in NET_TRACE_SYSTEMS."""
    names = []
    for system in features.NET_TRACE_SYSTEMS:
        folder = os.path.join(tracefs, "events", system)
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        names.extend("{}:{}".format(system, entry) for entry in entries
                     if os.path.isdir(os.path.join(folder, entry)))
    return names


def _probe_bpftrace(trial, notes):
    """(version, loads, error): `bpftrace --version`, then if `trial` (as root) a program that
    only exits."""
    if not shutil.which("bpftrace"):
        return None, None, None
    status, out, err = trust.run(["bpftrace", "--version"], _TIMEOUT_VERSION)
    version = parse_bpftrace_version(out + err) if status == 0 else None
    if version is None:
        notes.append("bpftrace is installed but `bpftrace --version` failed: "
                     + (err.strip() or "no output"))
        return None, None, None
    if not trial:
        return version, None, None
    status, out, err = trust.run(["bpftrace", "-e", "BEGIN { exit(); }"], _TIMEOUT_LOAD)
    if status == 0:
        return version, True, None
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    return version, False, (lines[-1] if lines else "exit status {}".format(status))


def _probe_stap():
    """SystemTap's version from `stap -V` (it prints on stderr), or None."""
    if not shutil.which("stap"):
        return None
    status, out, err = trust.run(["stap", "-V"], _TIMEOUT_VERSION)
    return parse_stap_version(err + out) if status == 0 else None


def _probe_tracefs(path, notes):
    """(kprobe_events, kprobe_syntax, instances, tracepoints) read from a mounted tracing dir."""
    if not os.access(path, os.R_OK | os.X_OK):
        notes.append("{} is not readable: run as root to see kprobe_events and "
                     "tracepoints".format(path))
        return None, [], False, []
    readme = _read(os.path.join(path, "README"))
    return (os.path.exists(os.path.join(path, "kprobe_events")),
            features.readme_kprobe_syntax(readme),
            os.path.isdir(os.path.join(path, "instances")),
            _tracepoints(path))


def _kprobes(config, kprobe_events, kprobe_pmu):
    """Whether the kernel has kprobes: from its config, else from files only kprobes create."""
    if config:
        return config["CONFIG_KPROBES"] != "n"
    debugfs_kprobes = os.path.join(tracefsmod.DEBUGFS_MOUNT, "kprobes")
    if kprobe_events or kprobe_pmu or os.path.isdir(debugfs_kprobes):
        return True
    return None


def is_root():
    """euid 0, or CAP_SYS_ADMIN in the effective set."""
    return os.geteuid() == 0 or parse_cap_sys_admin(_read("/proc/self/status") or "")


def probe_host(try_bpftrace=True):
    """Read `HostFacts` from the running system. Mounts nothing; no root needed for what is readable.

    `try_bpftrace=False` skips loading a trial bpftrace program (bpftrace_loads stays None):
    it takes a second natively and over a minute in an emulated guest, and only the bpf
    backend and automatic selection need its answer.
    """
    uname = os.uname()
    notes = []
    distro, distro_ids = parse_os_release(
        _read("/etc/os-release") or _read("/usr/lib/os-release") or "")
    root = is_root()
    filesystems = tracefsmod.filesystems()
    tracefs = tracefsmod.find(filesystems)
    config, config_source = _kernel_config(uname.release)
    kprobe_pmu = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    if tracefs:
        kprobe_events, syntax, instances, tracepoints = _probe_tracefs(tracefs, notes)
    else:
        # Not mounted yet: the config tells whether kprobe_events will be there.
        kprobe_events = config["CONFIG_KPROBE_EVENTS"] != "n" if config else None
        syntax, instances, tracepoints = [], False, []
    bpftrace, bpftrace_loads, bpftrace_error = _probe_bpftrace(root and try_bpftrace, notes)
    lockdown_text = _read("/sys/kernel/security/lockdown")
    return HostFacts(
        release=uname.release, arch=uname.machine, distro=distro, distro_ids=distro_ids,
        root=root, tracefs=tracefs,
        tracefs_mountable=bool(root and filesystems & {"tracefs", "debugfs"}),
        kprobe_events=kprobe_events, kprobe_syntax=syntax, instances=instances,
        tracepoints=tracepoints,
        btf=btf.VMLINUX if os.path.exists(btf.VMLINUX) else None,
        bpftrace=bpftrace, bpftrace_loads=bpftrace_loads, bpftrace_error=bpftrace_error,
        stap=_probe_stap(), staprun=shutil.which("staprun"),
        kernel_build=_kernel_build(uname.release),
        cc=shutil.which("gcc") or shutil.which("cc"),
        kernel_config=config, kernel_config_source=config_source,
        kprobes=_kprobes(config, kprobe_events, kprobe_pmu), kprobe_pmu=kprobe_pmu,
        # /proc/modules exists exactly when the kernel is built with CONFIG_MODULES.
        modules=config["CONFIG_MODULES"] != "n" if config else os.path.exists("/proc/modules"),
        lockdown=parse_lockdown(lockdown_text) if lockdown_text else None,
        notes=notes)
