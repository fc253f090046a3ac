"""What a host can do, as plain data: read from the running system or from a recording.

`HostFacts` is data only (JSON round-trips), so selection and program building
can be tested with the recorded facts of an EL7 3.10 host, the 6.1 lab kernel or
this machine. `probe_host()` reads them from the running system without needing root
for what is readable.
"""
from legacytrace.kernel import KernelRelease


class HostFacts(object):
    """Facts about one host; every field is plain data.

    release        -- `uname -r` text
    arch           -- `uname -m` (x86_64)
    distro         -- PRETTY_NAME from os-release, or ""
    root           -- euid 0 or CAP_SYS_ADMIN in the effective set
    tracefs        -- path of the mounted tracing directory, or None
    tracefs_mountable -- a tracefs/debugfs could be mounted (we are root and the kernel has it)
    kprobe_events  -- the tracing directory has a kprobe_events file
    kprobe_syntax  -- optional kprobe syntax features the kernel's tracing/README advertises
    instances      -- the tracing directory has instances/ (own ring buffers)
    tracepoints    -- "system:event" names of the net/skb/sock/tcp tracepoints present
    btf            -- path of the kernel's BTF (/sys/kernel/btf/vmlinux), or None
    bpftrace       -- bpftrace version text, or None when absent or not runnable
    stap           -- SystemTap version text, or None
    kernel_build   -- path of the build tree (kernel-devel / linux-headers) for `release`, or None
    cc             -- path of a C compiler, or None
    notes          -- extra words for `doctor` (e.g. why a probe failed)
    """

    FIELDS = ("release", "arch", "distro", "root", "tracefs", "tracefs_mountable",
              "kprobe_events", "kprobe_syntax", "instances", "tracepoints", "btf",
              "bpftrace", "stap", "kernel_build", "cc", "notes")

    def __init__(self, **values):
        defaults = {"arch": "x86_64", "distro": "", "root": False, "tracefs_mountable": False,
                    "kprobe_events": False, "kprobe_syntax": [], "instances": False,
                    "tracepoints": [], "notes": []}
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
