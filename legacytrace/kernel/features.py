"""Which kernel has which tracing feature: the one table, and the README that tells.

Features are detected on the running kernel wherever a file tells (tracefs
`README`, `kprobe_events`, `/sys/kernel/btf/vmlinux`, the kernel config); the
versions here are only first guesses and the source of constructed host facts
for kernels we cannot run. Versions are upstream releases in which the feature
appeared (docs/kernel-facts.md); distribution kernels may backport.

kprobe_events syntax beyond the baseline that 3.10 already accepts
(`p`/`r`/`-:`, `%REG`, `@ADDR`, `@SYM`, `$stackN`, `$retval`, `+OFF(...)`,
`u8..u64 s8..s64 string`, bitfields) is named by the strings in
`KPROBE_SYNTAX`. The kernel lists the syntax it accepts in tracing/README from
about 4.9 (perf detects features by reading it); a README without a kprobe
section means: baseline only.
"""
import collections
import re

#: Optional kprobe_events syntax, in the order the kernel gained it:
#:   comm         `$comm` fetch arg (the current task's comm)
#:   x-types      hex types `x8 x16 x32 x64` (and `u*` then print decimal)
#:   maxactive    `r[MAXACTIVE]:...` (concurrent kretprobe instances)
#:   argN         `$argN` fetch args (function arguments by position)
#:   symbol       the `symbol` type (an address printed as SYM+off)
#:   array        `TYPE[N]` arrays of a type, strings included
#:   user-memory  `+u<OFF>(...)` and `ustring` (reading user memory)
#:   sym%return   `p ...SYM%return` as a spelling of a return probe
#:   char         the `char` type
#:   btf-args     arguments by name with `->field` access, typed from BTF
KPROBE_SYNTAX = ("comm", "x-types", "maxactive", "argN", "symbol", "array",
                 "user-memory", "sym%return", "char", "btf-args")

#: feature -> upstream (major, minor) that brought it.
KPROBE_SYNTAX_SINCE = collections.OrderedDict([
    ("comm", (4, 8)),
    ("x-types", (4, 9)),
    ("maxactive", (4, 12)),
    ("argN", (4, 20)),
    ("symbol", (4, 20)),
    ("array", (4, 20)),
    ("user-memory", (5, 3)),
    ("sym%return", (5, 10)),
    ("char", (6, 3)),
    ("btf-args", (6, 5)),
])

#: tracefs as its own filesystem, mounted at /sys/kernel/tracing; before, the
#: tracing directory is part of debugfs (/sys/kernel/debug/tracing, 3.10/EL7).
TRACEFS_SINCE = (4, 1)
#: the oldest kernel bpftrace supports at all (its INSTALL.md: 4.9; kprobes 4.1,
#: tracepoints 4.7, and the helpers it needs came by 4.9).
BPFTRACE_KERNEL_MIN = (4, 9)
#: Before this version a read that faults inside a kprobe's handler (caught by the handler's
#: own exception fixup) also counts as a missed hit of that kprobe: kprobe_fault_handler
#: increments nmissed for KPROBE_HIT_ACTIVE, and a SystemTap probe reading through a NULL
#: pointer faults. Measured in the lab: EL7's 3.10 counts every such read, 5.10 and 6.1 none.
#: 5.8 is where x86's copy_from_kernel_nofault began to refuse user-range addresses (NULL
#: plus an offset) without a fault; kernels between 3.10 and 5.10 are not measured.
KPROBE_FAULTS_COUNTED_MISSED_BEFORE = (5, 8)
#: /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF); some distribution kernels
#: from 4.18 ship it backported (RHEL 8).
BTF_SINCE = (5, 2)

#: Trace systems whose static tracepoints see packets or sockets; the tracepoint
#: fallback of the ftrace and bpf backends uses events from these.
NET_TRACE_SYSTEMS = ("net", "skb", "sock", "tcp", "udp", "icmp", "napi", "qdisc")

# A README has a kprobe section when it lists the kprobe_events file; the
# fetcharg/type lines that follow are shared with uprobe_events, so on a kernel
# without CONFIG_KPROBE_EVENTS (this development machine's 6.18) they describe
# uprobes only and must not count.
_KPROBE_SECTION = re.compile(r"^\s*kprobe_events\s", re.M)
_TYPE_WORD = r"(?:type:|,)\s*{}\s*(?:,|$)"
_README_MARKS = collections.OrderedDict([
    ("comm", re.compile(r"\$comm\b")),
    ("x-types", re.compile(r"\bx8/16/32/64\b")),
    ("maxactive", re.compile(r"\br\[maxactive\]")),
    ("argN", re.compile(r"\$arg<N>")),
    ("symbol", re.compile(_TYPE_WORD.format("symbol"), re.M)),
    ("array", re.compile(r"<type>\\?\[<array-size>\\?\]")),
    ("user-memory", re.compile(r"\[u\]<offset>|\bustring\b")),
    ("sym%return", re.compile(r"place \(kretprobe\):.*%return")),
    ("char", re.compile(_TYPE_WORD.format("char"), re.M)),
    ("btf-args", re.compile(r"<argname>")),
])


def readme_kprobe_syntax(readme):
    """The `KPROBE_SYNTAX` names that a tracing/README text advertises for kprobes.

    Pure. Returns [] for a README without a kprobe section (3.10-4.8, or a
    kernel built without CONFIG_KPROBE_EVENTS): baseline syntax only.
    """
    if not readme or not _KPROBE_SECTION.search(readme):
        return []
    return [name for name, mark in _README_MARKS.items() if mark.search(readme)]


def kprobe_syntax_for(version):
    """The kprobe syntax upstream `version` (major, minor[, patch]) accepts, for constructed facts."""
    return [name for name, since in KPROBE_SYNTAX_SINCE.items() if tuple(version[:2]) >= since]
