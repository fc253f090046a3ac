"""The command line: thin click commands over the pure parts and the trace loop.

Every failure the user can act on is a LegacytraceError: one line on stderr,
a non-zero exit, no traceback. Flags follow bcc, pwru and ipftrace.
"""
import codecs
import collections
import errno
import functools
import json
import os
import sys

import click

from legacytrace import __version__, backends, manifest as manifestmod

from legacytrace.kernel import host as hostmod, skbuff, symbols, tracepoints
from legacytrace.kernel import tracefs as kernel_tracefs
from legacytrace.errors import BackendUnavailable, LegacytraceError, UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.model import BUFFER_KB, Limits, TraceRequest

BACKEND_CHOICES = ("auto",) + tuple(backends.names())
CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def flow_options(command):
    """The filter: tcpdump's expression as the trailing arguments (as tcpdump and pwru take
    it), and flags in bcc/pwru spelling (ipftrace's accepted too) joined to it by `and`."""
    options = [
        click.argument("expression", nargs=-1, metavar="[EXPRESSION]..."),
        click.option("--proto", metavar="PROTO",
                     help="Protocol: tcp, udp, icmp, icmp6 or a number."),
        click.option("-s", "--saddr", metavar="ADDR",
                     help="Source address or CIDR (IPv4 or IPv6)."),
        click.option("-d", "--daddr", metavar="ADDR",
                     help="Destination address or CIDR (IPv4 or IPv6)."),
        click.option("--sport", "-sp", "sport", metavar="PORT", help="Source port."),
        click.option("--dport", "-dp", "dport", metavar="PORT", help="Destination port."),
        click.option("-4", "family", flag_value="4", help="IPv4 only."),
        click.option("-6", "family", flag_value="6", help="IPv6 only."),
        click.option("-iv", "--ipversion", "ipversion", metavar="4|6",
                     help="IP version (ipftrace's spelling of -4/-6)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def process_options(command):
    """The process filter in bcc's spelling: -p/--pid PID and --comm NAME, each repeatable
    (any of them: the packets of any). -p was the protocol before --proto: a protocol
    there fails saying so (legacytrace.validate.pid_text)."""
    for option in reversed([
            click.option("-p", "--pid", "pids", multiple=True, metavar="PID",
                         help="Only this process's packets, the ones it receives included "
                              "(repeatable)."),
            click.option("--comm", "comms", multiple=True, metavar="NAME",
                         help="Only the packets of processes named NAME (the kernel's 15 "
                              "characters; repeatable)."),
    ]):
        command = option(command)
    return command


def _processes(opts, live=False):
    """The ProcessFilter of -p and --comm, or None without them, popping them from `opts`.
    For a live trace each pid must be running here; its threads are named for ftrace,
    which filters by thread."""
    from legacytrace import procfilter, procinfo
    found = procfilter.ProcessFilter.parse(opts.pop("pids"), opts.pop("comms"))
    if found.is_empty():
        return None
    if live:
        found = procfilter.ProcessFilter(found.pids, found.comms,
                                         procinfo.threads_of(found.pids))
    return found


#: The manifest option of the commands that probe functions.
manifest_option = click.option(
    "-m", "--manifest", metavar="NAME|FILE",
    help="Functions to probe: a bundled manifest ({}) or a YAML file in ipftrace's format; "
         "default: generic.".format(", ".join(manifestmod.bundled_names())))


def _flow(opts):
    """Build the FlowFilter from the expression and the flags, popping them from `opts`."""
    family = opts.pop("family")
    ipversion = opts.pop("ipversion")
    if family and ipversion and family != ipversion.lstrip("ipv"):
        raise UsageError("-{} and --ipversion {} disagree".format(family, ipversion))
    words = opts.pop("expression")
    for word in words:
        _not_a_manifest(word)
    return FlowFilter.parse(family=family or ipversion, proto=opts.pop("proto"),
                            saddr=opts.pop("saddr"), daddr=opts.pop("daddr"),
                            sport=opts.pop("sport"), dport=opts.pop("dport"),
                            expression=" ".join(words) or None)


def _not_a_manifest(word):
    """Refuse a trailing argument that names a manifest (ipftrace's positional MANIFEST):
    read as an expression it would be an error far from the cause, or a different trace."""
    if word in manifestmod.bundled_names() or (
            word.endswith((".yaml", ".yml")) and os.path.isfile(word)):
        raise UsageError("{!r} is a manifest, and the trailing arguments are a tcpdump filter "
                         "expression: use -m {}".format(word, word))


#: Set to 1 to see the traceback of an internal error instead of its one-line report.
DEBUG_ENV = "LEGACYTRACE_DEBUG"
#: How a command that ended because its reader left says so.
PIPE_CLOSED = "the output pipe closed"


def handle_errors(func):
    """Turn a LegacytraceError into one line on stderr and its exit code.

    Any other exception is a bug: by the time it gets here the trace session has detached
    (Session.__exit__), so it becomes one line asking for a report, exit 1; with
    LEGACYTRACE_DEBUG=1 the traceback shows instead. click's own exits pass through. A
    closed output pipe (`legacytrace ... | head`) ends every command alike: one line that
    says so, exit 0 (`trace` and `parse` add their summary).
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LegacytraceError as exc:
            if exc.exit_code == 2:
                raise click.UsageError(str(exc))
            raise click.ClickException(str(exc))
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:
            if getattr(exc, "errno", None) == errno.EPIPE:
                _discard(sys.stdout)
                click.echo("legacytrace: {}".format(PIPE_CLOSED), err=True)
                return None
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            raise click.ClickException(
                "internal error: {}: {} (a bug in legacytrace: please report it with the command "
                "line; {}=1 shows the traceback)".format(type(exc).__name__, exc, DEBUG_ENV))
    return wrapper


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version")
def cli():
    """Trace packet flows through kernel networking functions and attribute them to
    processes, on CentOS 7's 3.10 kernel and every kernel after it.

    \b
    Backends: stap (SystemTap, first choice on 3.10), ftrace (raw kprobe_events or
    tracepoints, nothing to install), bpf (bpftrace, where the kernel has BTF).
    `legacytrace doctor` says which one this host can run, and why.

    \b
    Examples:
      legacytrace doctor
      sudo legacytrace trace icmp
      sudo legacytrace trace -m http1 --json 'tcp port 80'
      legacytrace generate --backend ftrace --format sh 'udp and port 53' > trace.sh
    """


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object for scripts.")
@handle_errors
def doctor(as_json):
    """Show what this host supports, each backend's verdict, and the pick.

    \b
    Examples:
      legacytrace doctor
      legacytrace doctor --json | jq .pick
    """
    from legacytrace import doctor as doctormod
    facts = hostmod.probe_host()
    if as_json:
        click.echo(json.dumps(doctormod.doctor_json(facts), indent=2, sort_keys=True))
    else:
        click.echo(doctormod.format_doctor(facts, cpus=os.cpu_count()))


def _manifest_probes(spec, host, regex, functions=None, live=False):
    """Load and resolve a manifest for `host`; warn once about functions the kernel lacks.

    On the running host (`live`) with BTF, each sk_buff position is checked
    against the function's prototype.
    """
    from legacytrace import discover
    manifest = manifestmod.load(spec or "generic")
    if regex:
        pattern = discover.compile_regex(regex)
        kept = tuple(f for f in manifest.functions
                     if any(pattern.search(name) for name in manifestmod.names(f)))
        if not kept:
            raise UsageError("--regex {!r} matches no function of {}".format(
                regex, manifest.source))
        manifest = manifest._replace(functions=kept)
    exists = functions.__contains__ if functions is not None and functions.known else None
    skb_position = _btf_skb_position(host) if live else None
    result = manifestmod.resolve(manifest, host.kernel, exists=exists, skb_position=skb_position)
    if result.missing:
        click.echo("legacytrace: warning: {} of {} functions do not exist on kernel {} and "
                   "are skipped: {}".format(len(result.missing), len(manifest.functions),
                                            host.release, ", ".join(result.missing)), err=True)
    for text in result.unread:
        click.echo("legacytrace: warning: {}; events come without it".format(text), err=True)
    if not result.probes:
        raise UsageError("{}: none of its functions exists on kernel {}".format(
            manifest.source, host.release))
    return manifest, result.probes


def _btf_skb_position(host):
    """skb_position(name) from the host's BTF, or None without BTF (EL7)."""
    from legacytrace.kernel import btf
    if not host.btf:
        return None
    try:
        types = btf.load(host.btf)
    except (IOError, OSError, LegacytraceError):
        return None

    def skb_position(name):
        try:
            return types.skb_position(name)
        except LegacytraceError:
            return None  # not in BTF (a .isra clone, or no BTF for it): nothing to check
    return skb_position


def _backend(name, facts, without=None, verbose=False):
    """The backend to use: `name`, or the auto pick; fail with the reason if it can't run.
    `without`: {name: why} of backends that cannot run this trace (Backend.ready). The
    pick is one short line; the reasons for it with `verbose`."""
    from legacytrace import select
    check = select.backend_checks()
    for other, why in (without or {}).items():
        check[other] = select.unavailable(why)
    chosen, reason, _ = select.choose(facts, None if name == "auto" else name, check)
    if name == "auto" and verbose:
        click.echo("legacytrace: using {}: {}".format(chosen, reason), err=True)
    chosen = backends.get(chosen)
    if name == "auto" and not verbose:
        mode = chosen.mode(facts)
        click.echo("legacytrace: using {}{} (-v or `legacytrace doctor` says why)".format(
            chosen.name, " in {} mode".format(mode) if mode else ""), err=True)
    return chosen


buffer_option = click.option(
    "--buffer-size", "buffer_kb", type=int, default=BUFFER_KB, show_default=True,
    metavar="KB", help="Buffer per CPU between the probes and legacytrace: ftrace's ring "
                       "buffer, bpftrace's perf ring (rounded up to a power of two pages), "
                       "staprun's -b (rounded up to MiB). Bursts beyond it are lost, counted.")

verbose_option = click.option(
    "-v", "--verbose", is_flag=True,
    help="Say why the backend was picked, and name every function a warning is about.")


def output_options(command):
    for option in reversed([
            click.option("--json", "as_json", is_flag=True,
                         help="JSON Lines: one object per event, the summary last "
                              "(schema in README)."),
            click.option("--flows", is_flag=True,
                         help="Group by packet, ipftrace style: one block per packet journey."),
            click.option("-l", "--length", type=click.IntRange(1, None), metavar="N",
                         help="With --flows: show at most N functions per block."),
            click.option("--color", type=click.Choice(["auto", "always", "never"]),
                         default="auto", show_default=True, help="Colour the output."),
    ]):
        command = option(command)
    return command


def _output(opts, probes, stream, flow, replay=False, processes=None):
    """The sink for events, from the output flags; colour only on a terminal; `flow` the
    filter that --flows names in its header, with `processes` (a ProcessFilter or None).

    A replay (`parse`) shows no command lines: the processes of a capture are not here.
    """
    from legacytrace import render
    as_json, flows, length = opts.pop("as_json"), opts.pop("flows"), opts.pop("length")
    color = opts.pop("color")
    if as_json and flows:
        raise UsageError("--json and --flows are alternatives: choose one")
    if length and not flows:
        raise UsageError("--length caps the blocks of --flows: add --flows")
    use_color = color == "always" or (color == "auto" and stream.isatty())
    if as_json:
        return render.JsonRenderer(stream, summary=True)
    if flows:
        egress = skbuff.FREE_FUNCTIONS.union(tracepoints.FREEING, *(
            tracepoints.names(p.name, p.tracepoint) for p in probes if p.egress))
        return render.FlowsRenderer(stream, color=use_color, egress=egress,
                                    cmdline=not replay, max_functions=length,
                                    title="packets of: " + flow.describe() + (
                                        "; processes: " + processes.describe()
                                        if processes else ""))
    return render.LiveRenderer(stream, color=use_color, cmdline=not replay)


@cli.command(context_settings=CONTEXT)
@flow_options
@process_options
@manifest_option
@click.option("-b", "--backend", type=click.Choice(BACKEND_CHOICES), default="auto",
              show_default=True, help="Tracing mechanism; auto picks as `doctor` shows.")
@output_options
@click.option("-c", "--count", type=click.IntRange(1, None), metavar="N",
              help="Stop after N events.")
@click.option("-T", "--duration", type=click.FloatRange(0.001, None), metavar="SECONDS",
              help="Stop after this many seconds.")
@click.option("--rate-limit", type=click.IntRange(1, None), metavar="N",
              help="Show at most N events per second; the rest are counted as lost.")
@click.option("-r", "--regex", metavar="REGEX",
              help="Probe only the manifest functions whose names match.")
@click.option("--stap-module", type=click.Path(exists=True, dir_okay=False), metavar="FILE.ko",
              help="Run a module made by `legacytrace build` (needs only staprun here).")
@buffer_option
@verbose_option
@handle_errors
def trace(manifest, backend, count, duration, rate_limit, regex, stap_module, buffer_kb, verbose,
          **opts):
    """Trace the packets EXPRESSION keeps through the functions of a manifest.

    EXPRESSION is tcpdump's filter language at IP level (host, net, port, portrange, proto,
    src, dst, ip, ip6, tcp, udp, sctp, icmp, icmp6, and, or, not); the flags join it with
    `and`. Without either every packet is traced. -p/--pid and --comm keep the packets of
    those processes: the ones they send, and the ones for their sockets. Needs root.

    \b
    Examples:
      sudo legacytrace trace icmp                          # who sends ICMP, live
      sudo legacytrace trace --flows 'tcp port 80 and net 10.0.0.0/8'
      sudo legacytrace trace --json -c 100 'udp and (port 53 or port 853)' > dns.jsonl
      sudo legacytrace trace -p 812 tcp                    # nginx's TCP, received too
      sudo legacytrace trace -b ftrace -m my-manifest.yaml -T 10 'host 10.0.0.5'
      sudo legacytrace trace --stap-module lt_icmp.ko     # built on another host
    """
    flow, processes = _flow(opts), _processes(opts, live=True)
    limits = Limits(count=count, duration=duration, rate=rate_limit)
    facts = _probe_mounted("stap" if stap_module else backend)
    if stap_module:
        chosen, program, probes = _prebuilt(stap_module, backend, manifest or regex, buffer_kb)
    else:
        functions = symbols.KernelFunctions(facts.tracefs)
        manifest_obj, probes = _manifest_probes(manifest, facts, regex, functions, live=True)
        chosen, program = _runnable(backend, _request(
            probes, (flow, processes), facts, manifest_obj, limits, buffer_kb), verbose)
    _run_trace(chosen, program, facts, probes, (flow, limits, processes), opts)


def _request(probes, filters, facts, manifest_obj, limits=None, buffer_kb=BUFFER_KB):
    """The TraceRequest of this run (`filters`: the flow and process filters); its run id
    lt<pid> names what it attaches."""
    flow, processes = filters
    return TraceRequest(probes, flow, facts, limits=limits, run_id="lt{}".format(os.getpid()),
                        manifest=manifest_obj.source, buffer_kb=buffer_kb, processes=processes)


def _prebuilt(path, backend, probes_asked, buffer_kb):
    """(stap backend, Program, no probes) for `trace --stap-module PATH`."""
    if backend not in ("auto", "stap") or probes_asked:
        raise UsageError("--stap-module runs a prebuilt SystemTap module: it takes no "
                         "--manifest, --regex or other --backend")
    chosen = _load_backend("stap")
    return chosen, chosen.module_program(path, buffer_kb), []


def _runnable(name, request, verbose):
    """(backend, program) for `request`: backend `name` (or the auto pick), and when the
    pick cannot run this program here (Backend.ready), the next one that can."""
    facts = request.host
    chosen = _backend(name, facts, verbose=verbose)
    program = _build(chosen, request, verbose)
    why_not = chosen.ready(program, facts)
    if why_not and name != "auto":
        raise BackendUnavailable("backend {} cannot run this trace here: {}".format(
            chosen.name, why_not))
    if why_not:
        click.echo("legacytrace: {} cannot run this trace here: {}".format(
            chosen.name, why_not), err=True)
        chosen = _backend("auto", facts, without={chosen.name: why_not}, verbose=verbose)
        program = _build(chosen, request, verbose)
    return chosen, program


def _run_trace(chosen, program, facts, probes, filters, opts):
    """Run `program` (`filters`: its flow filter, limits and process filter) into the output
    the options ask for; the summary goes to stderr."""
    from legacytrace import enrich, owners, procinfo, summary, trace as tracemod
    flow, limits, processes = filters
    stream = _line_buffered(sys.stdout)
    sink = _output(opts, probes, stream, flow, processes=processes)
    _warn_leftovers(chosen, facts)
    stats = summary.Summary()
    stats.filter = flow.describe()
    stats.processes = processes and processes.describe()
    own = owners.Attribution(owners.Owners(owners.SocketTable()), processes)
    try:
        ended = tracemod.run(chosen, program, flow, limits, sink, stats, own=own,
                             enrich=enrich.Enricher(procinfo.CmdlineCache(), facts.btf),
                             attached=lambda: click.echo(
                                 "legacytrace: tracing with {} ({}); Ctrl-C to stop".format(
                                     chosen.name, flow.describe()), err=True))
        sink.close(stats)
    except BrokenPipeError:
        # `legacytrace trace | head -1`: the probes are already detached on the way out.
        _discard(stream)
        ended = PIPE_CLOSED
    click.echo("legacytrace: {}. {}".format(ended, stats.to_text()), err=True)


def _line_buffered(stream):
    """A live trace's own handle on stdout, flushed at every line so that `| grep` sees
    events as they happen (as `bpftrace -B line`). Streams without a file descriptor
    (tests) are used as they are."""
    try:
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return stream
    return os.fdopen(fd, "w", buffering=1, encoding=stream.encoding or "utf-8",
                     errors="backslashreplace")


def _discard(stream):
    """After the reader of a pipe left: point `stream` at /dev/null so that nothing
    written or flushed later fails again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    os.close(devnull)


#: A warning names at most this many functions unless -v asks for all.
NAMED_MAX = 3


def _build(backend, request, verbose=False):
    """Build the program, and say which probes the backend had to leave out: one line per
    reason, naming the functions when they are few or `verbose` asks."""
    program = backend.build(request)
    warnings = list(program.warnings)
    if "peek" not in backend.features:
        warnings.extend("{}: the {} backend does not read payloads (peek) yet: the event comes "
                        "without them".format(p.name, backend.name)
                        for p in request.probes if p.peek)
    for reason, names in _grouped(warnings):
        named = ", ".join(names) if verbose or len(names) <= NAMED_MAX else \
            "{} of the {} functions (-v names them)".format(len(names), len(request.probes))
        click.echo("legacytrace: warning: {}: {}".format(reason, named), err=True)
    return program


def _grouped(warnings):
    """`NAME: why` warnings as one (why, [NAME, ...]) per reason, in first-seen order."""
    groups = collections.OrderedDict()
    for warning in warnings:
        name, _, why = warning.partition(": ")
        groups.setdefault(why or name, []).append(name if why else "")
    return [(why, [n for n in names if n]) for why, names in groups.items()]


def _probe_mounted(backend):
    """HostFacts read after mounting tracefs where it is not mounted yet (as root): ftrace and
    bpf need it, and probe_host() alone, which mounts nothing, would find no tracepoints.
    A failed mount makes the facts say that tracefs cannot be mounted, which the backend
    checks word. Only the bpf backend and automatic selection (`backend`) need a trial
    bpftrace load."""
    failed = False
    if hostmod.is_root():
        try:
            kernel_tracefs.ensure()
        except LegacytraceError:
            failed = True
    facts = hostmod.probe_host(try_bpftrace=backend in ("auto", "bpf"))
    if failed:
        facts.tracefs_mountable = False
    return facts


def _warn_leftovers(backend, facts):
    found = backend.leftovers(facts)
    if found:
        click.echo("legacytrace: warning: probes of runs that were killed are still attached "
                   "({}): remove them with `legacytrace cleanup`".format(", ".join(found)),
                   err=True)


@cli.command(context_settings=CONTEXT)
@flow_options
@process_options
@manifest_option
@click.option("-b", "--backend", type=click.Choice(BACKEND_CHOICES), default="auto",
              show_default=True, help="Backend whose program to print.")
@click.option("-f", "--format", "fmt", default="text", show_default=True,
              help="Program format: text, or what the backend offers (ftrace: sh).")
@click.option("-r", "--regex", metavar="REGEX",
              help="Only the manifest functions whose names match.")
@click.option("--host-facts", type=click.File("r"), metavar="FILE",
              help="Build for another host: `legacytrace doctor --json` saved there.")
@buffer_option
@verbose_option
@handle_errors
def generate(manifest, backend, fmt, regex, host_facts, buffer_kb, verbose, **opts):
    """Print the program a trace would run, to review, save or take to another host.

    \b
    Examples:
      legacytrace generate -b stap icmp > icmp.stp
      legacytrace generate -b ftrace --format sh 'udp dst port 53' > dns-trace.sh
      legacytrace generate -b bpf -m http1
      legacytrace generate -b ftrace --host-facts el7-doctor.json --format sh > el7.sh
      legacytrace generate -b stap -p 812 'tcp port 80'
    """
    flow = _flow(opts)
    processes = _processes(opts)
    if host_facts is None:
        facts = hostmod.probe_host(try_bpftrace=False)
        functions = symbols.KernelFunctions(facts.tracefs)
    else:
        facts, functions = _recorded_host(host_facts), None
    chosen = (_backend(backend, facts, verbose=verbose) if backend == "auto"
              else _load_backend(backend))
    manifest_obj, probes = _manifest_probes(manifest, facts, regex, functions,
                                             live=host_facts is None)
    request = _request(probes, (flow, processes), facts, manifest_obj, buffer_kb=buffer_kb)
    program = _build(chosen, request, verbose)
    if fmt not in chosen.formats:
        raise UsageError("backend {} has no format {!r}: choose one of {}".format(
            chosen.name, fmt, ", ".join(chosen.formats)))
    click.echo(chosen.export(program, fmt), nl=False)


@cli.command(context_settings=CONTEXT)
@flow_options
@process_options
@manifest_option
@click.option("-b", "--backend", type=click.Choice(["stap"]), default="stap",
              show_default=True, help="Backend that builds a binary program.")
@click.option("-r", "--release", metavar="RELEASE",
              help="Kernel release to build for (its kernel-devel/headers must be here); "
                   "default: the running kernel.")
@click.option("-R", "--runtime", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="SystemTap runtime directory (stap -R).")
@click.option("-o", "--output", required=True, metavar="lt_NAME.ko",
              help="Where to write the module; its name must stay as built.")
@handle_errors
def build(manifest, backend, release, runtime, output, **opts):
    """Build a SystemTap module to run on another host with only staprun.

    The target needs systemtap-runtime and the same kernel release; no compiler, no
    kernel-devel. Run it there with `legacytrace trace --stap-module lt_NAME.ko`.

    \b
    Examples:
      legacytrace build -m icmp-senders -r 3.10.0-1160.el7.x86_64 -o lt_icmp.ko icmp
      scp lt_icmp.ko el7host: && ssh el7host sudo legacytrace trace --stap-module lt_icmp.ko
    """
    from legacytrace.kernel.release import KernelRelease
    flow = _flow(opts)
    processes = _processes(opts)
    if release:
        facts = hostmod.HostFacts(release=KernelRelease.parse(release).raw)
        functions, live = None, False
    else:
        facts = hostmod.probe_host(try_bpftrace=False)
        functions, live = symbols.KernelFunctions(facts.tracefs), True
    chosen = _load_backend(backend)
    manifest_obj, probes = _manifest_probes(manifest, facts, regex=None, functions=functions,
                                            live=live)
    path = chosen.compile(_build(chosen, _request(probes, (flow, processes), facts, manifest_obj)),
                          release=release, runtime=runtime, out=output)
    click.echo("legacytrace: built {} for kernel {}".format(path, facts.release), err=True)


def _recorded_host(handle):
    """HostFacts from a saved `doctor --json` (or a bare facts object)."""
    try:
        data = json.load(handle)
        return hostmod.HostFacts.from_dict(data.get("host", data))
    except (ValueError, AttributeError, TypeError) as exc:
        raise UsageError("{}: not the output of `legacytrace doctor --json` ({})".format(
            handle.name, exc))


def _load_backend(name):
    return backends.get(name)


@cli.command(context_settings=CONTEXT)
@click.argument("capture", type=click.File("r"), metavar="FILE")
@click.option("-b", "--backend", type=click.Choice(BACKEND_CHOICES[1:]), required=True,
              help="Backend that produced FILE.")
@flow_options
@process_options
@output_options
@handle_errors
def parse(capture, backend, **opts):
    """Turn a recorded capture (FILE, or - for stdin) into events.

    \b
    Examples:
      legacytrace parse -b ftrace trace-capture.txt --json
      sh dns-trace.sh; legacytrace parse -b ftrace legacytrace-capture.txt --flows
      legacytrace parse -b stap capture.txt 'tcp and not port 22'
      legacytrace parse -b bpf capture.txt --comm nginx
    """
    from legacytrace import summary
    flow = _flow(opts)
    processes = _processes(opts)
    chosen = _load_backend(backend)
    sink = _output(opts, [], sys.stdout, flow, replay=True, processes=processes)
    stats = summary.Summary()
    stats.filter = flow.describe()
    stats.processes = processes and processes.describe()
    ended = ""
    try:
        _replay(capture, chosen, backend, (flow, processes), sink, stats)
    except BrokenPipeError:
        _discard(sys.stdout)
        ended = PIPE_CLOSED + ". "
    click.echo("legacytrace: {}{}".format(ended, stats.to_text()), err=True)


def _replay(capture, chosen, backend, filters, sink, stats):
    """Parse `capture` into `sink` through `filters` (the flow filter, the process filter or
    None), with a warning counting the lines that are not events; LegacytraceError when no
    line is one (naming the format the file has). Owners come from the capture itself (a
    socket its task-context events used): its processes are not here."""
    from legacytrace import owners
    own = owners.Attribution(owners.Owners(), filters[1])
    parsed = others = 0                 # events, and lines that are none (comments aside)
    sample = []
    for lines in _line_batches(capture):
        events = chosen.parse_lines(lines)
        candidates = [line for line in lines if line.strip() and not _comment(line)]
        parsed += len(events)
        stats.lines_read += len(events)
        others += max(0, len(candidates) - len(events))
        if not parsed and len(sample) < SNIFF_LINES:
            sample.extend(candidates[:SNIFF_LINES])
        events = _kept(events, filters[0], own, stats)
        stats.add_all(events)
        sink.events(events)
    if others and not parsed:
        raise LegacytraceError("{}: none of its {} lines is an event of the {} backend{}".format(
            capture.name, others, backend, _format_of(sample, backend)))
    sink.close(stats)
    if others:
        click.echo("legacytrace: warning: {} line(s) of {} are not events of the {} backend: "
                   "skipped".format(others, capture.name, backend), err=True)


def _kept(events, flow, own, stats):
    """The events the flow filter keeps, with their owners, that the process filter keeps
    (owners.Attribution `own`); the others are counted as filtered."""
    kept = events if flow.is_empty() else [ev for ev in events if flow.matches(ev)]
    kept = own(kept)
    stats.filtered += len(events) - len(kept)
    return kept


#: How many lines of a capture that holds no event of its backend are tried with the others.
SNIFF_LINES = 1000


def _comment(line):
    """A header line of a capture (ftrace's `# tracer: nop`, the sh script's, bpf data's)."""
    return line == "#" or line.startswith("# ")


def _format_of(lines, backend):
    """`: it looks like ... (--backend B)` for the backend that parses some of `lines`, else
    that it looks like no capture."""
    for other in backends.names():
        if other != backend and backends.get(other).parse_lines(lines):
            return ": it looks like a capture of the {0} backend (--backend {0})".format(other)
    return (": it looks like no capture of legacytrace (trace_pipe text for ftrace, the "
            "output of the generated program for stap and bpf)")


def _line_batches(stream, size=1 << 16):
    """The lines of a text stream without their newlines, in lists of about `size` characters.

    A capture holds millions of lines: reading, parsing, counting and writing them a
    batch at a time costs one call per batch where a line at a time costs one per line
    (bench/ingest.py). A batch is what one read returns (`read1`), so that a pipe from a
    live trace_pipe (`cat trace_pipe | legacytrace parse -`) is shown as it comes, not
    after 64 KiB; bytes are decoded as UTF-8, an invalid byte as U+FFFD.
    """
    rest = ""
    for chunk in _chunks(stream, size):
        lines = (rest + chunk).split("\n")
        rest = lines.pop()
        yield lines
    if rest:
        yield [rest]


def _chunks(stream, size):
    """Text as each read returns it; from the binary buffer where there is one (`read1` does
    not wait for `size` bytes), decoded incrementally (a character may span two reads)."""
    raw = getattr(stream, "buffer", None)
    if raw is None or not hasattr(raw, "read1"):      # a StringIO (tests)
        for chunk in iter(functools.partial(stream.read, size), ""):
            yield chunk
        return
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for data in iter(functools.partial(raw.read1, size), b""):
        yield decoder.decode(data)
    yield decoder.decode(b"", final=True)


@cli.command("list-functions", context_settings=CONTEXT)
@click.argument("regex", required=False)
@click.option("--skb", is_flag=True,
              help="Only functions taking a struct sk_buff *, with its position (needs BTF).")
@handle_errors
def list_functions(regex, skb):
    """List the kernel functions that can be probed, like `bpftrace -l`.

    Reads available_filter_functions when readable, /proc/kallsyms otherwise.
    With --skb, the kernel's BTF gives each function's sk_buff (and sock) position.
    On a kernel without kprobes, only the functions a static tracepoint fires in
    (traced at that tracepoint).

    \b
    Examples:
      legacytrace list-functions '^ip_'
      legacytrace list-functions --skb '^tcp_v4_'
    """
    from legacytrace import discover
    pattern = discover.compile_regex(regex)
    facts = hostmod.probe_host(try_bpftrace=False)
    names = set(n for n in _kernel_functions(facts).names() if symbols.is_entry(n))
    if facts.kprobes is False:
        names = set(n for n in names if tracepoints.of(n))
        click.echo("legacytrace: this kernel has no kprobes: only the functions a static "
                   "tracepoint fires in can be traced, at that tracepoint", err=True)
    if not skb:
        for name in sorted(n for n in names if pattern.search(n)):
            click.echo(name)
        return
    for found in discover.skb_functions(discover.load_btf(), pattern.pattern, names):
        click.echo("{:<40} skb_pos={} sk_pos={}  {}".format(
            found.name, found.skb_pos, found.sk_pos or "-", found.prototype))


@cli.command("manifest", context_settings=CONTEXT)
@click.option("--from-btf", "regex", required=True, metavar="REGEX",
              help="Functions whose names match REGEX and take a struct sk_buff *.")
@handle_errors
def manifest_cmd(regex):
    """Write a manifest for this kernel from its BTF (positions read from prototypes).

    \b
    Examples:
      legacytrace manifest --from-btf '^(ip|ip6)_(rcv|output)' > mine.yaml
      sudo legacytrace trace mine.yaml -p tcp
    """
    from legacytrace import discover
    facts = hostmod.probe_host(try_bpftrace=False)
    text = discover.manifest_from_btf(regex, discover.load_btf(), _kernel_functions(facts),
                                      release=facts.release)
    click.echo(text, nl=False)


def _kernel_functions(facts):
    functions = symbols.KernelFunctions(facts.tracefs)
    if not functions.known:
        raise LegacytraceError("cannot read available_filter_functions or /proc/kallsyms: "
                               "run as root")
    return functions


@cli.command(context_settings=CONTEXT)
@click.option("-b", "--backend", type=click.Choice(BACKEND_CHOICES), default="auto",
              show_default=True, help="Only this backend's leftovers (auto: all).")
@handle_errors
def cleanup(backend):
    """Remove what killed runs left attached (only runs whose process is gone).

    A run stopped normally, by Ctrl-C or by SIGTERM cleans up after itself;
    one killed with SIGKILL cannot. Probes of live runs and of other tools stay.

    \b
    Example:
      sudo legacytrace cleanup
    """
    facts = _probe_mounted(backend)
    names = backends.names() if backend == "auto" else [backend]
    removed, failed = [], []
    for name in names:
        try:
            instance = backends.get(name)
        except LegacytraceError:
            if backend != "auto":
                raise
            continue
        try:
            removed.extend(instance.cleanup(facts))
            failed.extend("{}: {} is still there".format(name, what)
                          for what in instance.leftovers(facts))
        except LegacytraceError as exc:
            failed.append("{}: {}".format(name, exc))
    if removed or not failed:
        click.echo("removed {} leftover(s){}".format(
            len(removed), ": " + ", ".join(removed) if removed else ""))
    if failed:
        raise LegacytraceError("{}: {}".format("; ".join(failed), "see the warnings above"
                                               if facts.root else "run as root (sudo)"))


def main():
    """Console-script entry (handle_errors ends a command whose output pipe closed)."""
    cli.main(prog_name="legacytrace")
