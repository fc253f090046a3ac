"""`legacytrace doctor`: what this host supports, what each backend needs, and the pick.

Both functions are pure given `HostFacts`; the CLI probes the host and prints:

    host = legacytrace.kernel.host.probe_host()
    click.echo(format_doctor(host))                 # for people
    click.echo(json.dumps(doctor_json(host)))       # --json, for scripts
"""
from legacytrace import select
from legacytrace.backends import checks
from legacytrace.errors import BackendUnavailable
from legacytrace.model import BUFFER_KB


def _yes_no(value, yes="yes", no="no", unknown="unknown"):
    return unknown if value is None else (yes if value else no)


def _host_lines(host):
    """(label, text) rows of the host summary."""
    if host.kprobe_events:
        kprobe_events = "yes, syntax: {}".format(", ".join(host.kprobe_syntax) or "baseline only")
    else:
        kprobe_events = "{}: {}".format(_yes_no(host.kprobe_events), checks.kprobe_events_why(host))
    if host.tracefs:
        tracefs = "{} (instances: {})".format(host.tracefs, _yes_no(host.instances))
    else:
        tracefs = "not mounted" + (" (mountable)" if host.tracefs_mountable else "")
    systems = sorted(set(name.split(":")[0] for name in host.tracepoints))
    bpftrace = host.bpftrace and "{} ({})".format(host.bpftrace, {
        True: "loads programs", None: "load not tried: not root"}.get(
            host.bpftrace_loads, "cannot load: {}".format(host.bpftrace_error)))
    stap = host.stap and "{}{}".format(host.stap, ", staprun " + host.staprun if host.staprun else "")
    config = "{}: {}".format(host.kernel_config_source, " ".join(
        "{}={}".format(k[len("CONFIG_"):], v) for k, v in sorted(host.kernel_config.items()))
    ) if host.kernel_config else "not readable (/proc/config.gz, /boot/config-{})".format(
        host.release)
    return [
        ("kernel", "{} ({})".format(host.release, host.arch)),
        ("distribution", host.distro or "unknown"),
        ("root", _yes_no(host.root, no="no (tracing needs root or CAP_SYS_ADMIN)")),
        ("kernel config", config),
        ("tracefs", tracefs),
        ("kprobe_events", kprobe_events),
        ("kprobes", _yes_no(host.kprobes)),
        ("tracepoints", "{} in {}".format(len(host.tracepoints), ", ".join(systems))
         if host.tracepoints else "none seen"),
        ("BTF", host.btf or "no"),
        ("bpftrace", bpftrace or "not installed"),
        ("stap", stap or "not installed"),
        ("kernel headers", host.kernel_build or "none for " + host.release),
        ("cc", host.cc or "none"),
        ("modules", _yes_no(host.modules)),
        ("lockdown", host.lockdown or "not reported"),
    ]


def _pick(host, check):
    """(name or None, reason, assessed)."""
    check = select.backend_checks() if check is None else check
    try:
        return select.choose(host, check=check)
    except BackendUnavailable as exc:
        return None, str(exc), select.assess(host, check)


def format_doctor(host, check=None, cpus=None):
    """The human report: host summary, one line per backend, the pick, what a trace's buffer
    costs on `cpus` CPUs, notes.

    `check` is as for `legacytrace.select.assess` (default: each backend's own check).
    """
    name, reason, assessed = _pick(host, check)
    _, why = select.preference(host)
    lines = ["host"]
    lines.extend("  {:<15} {}".format(label, text) for label, text in _host_lines(host))
    lines.append("backends (in preference order: {})".format(why))
    lines.extend("  {:<7} {:<4} {}".format(backend, _yes_no(availability.available),
                                          availability.reason)
                 for backend, availability in assessed)
    lines.append(buffer_cost(cpus))
    if name:
        lines.append("trace would use: {} ({})".format(name, dict(assessed)[name].reason))
    else:
        lines.append("trace would use: nothing; " + reason)
    lines.extend("note: " + note for note in host.notes)
    return "\n".join(lines)


def buffer_cost(cpus=None):
    """What the default --buffer-size pins in kernel memory while a trace runs."""
    text = "buffer: {} KiB per CPU (--buffer-size)".format(BUFFER_KB)
    if cpus:
        text += ", {} MiB on this host's {} CPUs, while a trace runs".format(
            BUFFER_KB * cpus // 1024, cpus)
    return text


def doctor_json(host, check=None):
    """The report as a JSON-ready dict: host facts, each backend's availability, the pick.

    `check` is as for `format_doctor`.
    """
    name, reason, assessed = _pick(host, check)
    order, why = select.preference(host)
    return {
        "host": host.to_dict(),
        "preference": {"order": list(order), "why": why},
        "backends": [{"name": backend, "available": availability.available,
                      "reason": availability.reason} for backend, availability in assessed],
        "pick": {"name": name, "reason": reason},
    }
