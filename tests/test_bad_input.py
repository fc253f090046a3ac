"""The bad-input matrix (README.md, "Bad input"): each case runs the real `legacytrace` command
and must end with one line naming the problem, a non-zero exit code, no traceback, and
nothing of the run left attached (no tracefs instance or kprobe group of its pid, no
bpftrace script folder, no tracer process).

Cases that need the environment to be broken (not root, no tracefs, read-only tracefs,
no stap or bpftrace) break it for the child only: another user id (setpriv), another
mount namespace (unshare -m) or a PATH without the tool. They need root and skip without
it; the kernel's own refusal of a probe is proved in the lab (tests/lab/test_lifecycle.py).
"""
import glob
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
LEGACYTRACE = str(Path(sys.executable).parent / "legacytrace")
EL7_FACTS = str(HERE / "data" / "hosts" / "el7-3.10.json")
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="breaks the environment of a child: needs root")


def leftovers_of(pid):
    """Everything named after run `lt<pid>` that is still there: instances, kprobes, folders,
    processes."""
    name = "legacytrace_lt{}".format(pid)
    found = []
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(root, "instances", name)):
            found.append("instance " + name)
        try:
            with open(os.path.join(root, "kprobe_events")) as handle:
                found.extend(line for line in handle if name + "/" in line)
        except OSError:
            pass
    found.extend(glob.glob("/tmp/{}_*".format(name)))
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as handle:
                if name.encode() in handle.read():
                    found.append(cmdline)
        except OSError:
            pass
    return found


class Result(object):
    def __init__(self, proc, out, err):
        self.code = proc.returncode
        self.out = out
        self.err = err
        self.last = err.strip().splitlines()[-1] if err.strip() else ""
        self.leftovers = leftovers_of(proc.pid)


def run(args, prefix=(), env=None, timeout=120):
    """`legacytrace ARGS` (behind `prefix`, e.g. setpriv or unshare), in its own process."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen(list(prefix) + [LEGACYTRACE] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full_env, universal_newlines=True)
    out, err = proc.communicate(timeout=timeout)
    return Result(proc, out, err)


def check(result, code, *words):
    """One error line with `words`, exit `code`, no traceback, nothing left attached."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    assert result.last.startswith("Error: "), result.err
    for word in words:
        assert word in result.last, (word, result.last)
    assert result.leftovers == [], result.leftovers


def in_namespace(shell):
    """A prefix that runs legacytrace after `shell` in a private mount namespace."""
    return ["unshare", "-m", "sh", "-c", shell + ' && exec "$0" "$@"']


@pytest.fixture
def manifest(tmp_path):
    def write(text):
        path = tmp_path / "m.yaml"
        path.write_text(textwrap.dedent(text))
        return str(path)
    return write


# --- manifests -------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("functions: [\n", ["invalid YAML", "line 2"]),
    ("functions:\n  - name: ip_rcv\n    skb_pos: one\n", ["skb_pos must be an integer"]),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 9\n", ["skb_pos must be from 1 to 6"]),
    ("functions: ip_rcv\n", ["'functions' must be a non-empty list"]),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 1\n    colour: red\n", ["unknown key 'colour'"]),
    ("functions:\n  - name: 'ip_rcv; rm -rf /'\n    skb_pos: 1\n", ["is not a kernel function name"]),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 1\n    fields: {len: 'skb->len'}\n",
     ["field len has path 'skb->len'"]),
    ("functions:\n  - name: ip_rcv\n    skb_pos: 1\n    tracepoint: 'net:x/../../enable'\n",
     ["tracepoint 'net:x/../../enable' is not one legacytrace reads packets from"]),
], ids=["malformed-yaml", "wrong-type", "out-of-range", "not-a-list", "unknown-key",
        "hostile-name", "bad-field-path", "unknown-tracepoint"])
def test_manifest_errors(manifest, text, words):
    check(run(["generate", "-b", "ftrace", "-m", manifest(text)]), 2, *words)


def test_a_binary_file_as_manifest():
    check(run(["generate", "-b", "ftrace", "-m", sys.executable]), 2,
          sys.executable + ": not a YAML text file (", " at byte ")


def test_every_manifest_function_missing(manifest):
    path = manifest("""\
        functions:
          - {name: legacytrace_no_such_fn_a, skb_pos: 1}
          - {name: legacytrace_no_such_fn_b, skb_pos: 1}
        """)
    result = run(["generate", "-b", "ftrace", "-m", path])
    check(result, 2, "none of its functions exists on kernel " + os.uname().release)
    assert "2 of 2 functions do not exist" in result.err


def test_unknown_bundled_manifest():
    check(run(["generate", "-b", "ftrace", "-m", "no-such-manifest"]), 2, "not found", "generic")


# --- the flow filter -------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["-s", "10.0.0.300"], ["invalid source address '10.0.0.300'"]),
    (["-d", "10.0.0.0/33"], ["invalid destination address '10.0.0.0/33'"]),
    (["--dport", "70000"], ["invalid destination port '70000'"]),
    (["--sport", "-1"], ["invalid source port '-1'"]),
    (["--dport", "\u00b2"], ["invalid destination port"]),
    (["--proto", "sctpx"], ["invalid protocol 'sctpx'"]),
    (["--proto", "256"], ["invalid protocol '256'"]),
    (["-4", "-d", "::1"], ["mixes IPv4 and IPv6"]),
    (["--proto", "icmp", "--dport", "80"], ["need --proto tcp or udp"]),
    (["-iv", "5"], ["invalid IP version '5'"]),
    (["icmp[icmptype] == icmp-echo"], ["'icmp[icmptype]'", "are not supported",
                                       "supported: host, net, port"]),
    (["ether", "host", "1.2.3.4"], ["'ether' is not supported", "supported: host"]),
    (["tcp port"], ["ends after 'port'", "expected a value"]),
    (["host 10.0.0.1 and"], ["ends after 'and'"]),
    (["-p", "icmp"], ["invalid PID 'icmp'", "--proto icmp or the expression icmp"]),
    (["-p", "web"], ["invalid PID 'web'", "--proto or the filter expression"]),
    (["-p", "0"], ["invalid PID '0'", "from 1 to 4194303"]),
    (["--comm", "a-very-long-process-name"], ["invalid comm", "first 15 characters"]),
    (["--comm", "it's"], ["invalid comm", "at most 15 letters"]),
    (["http1"], ["'http1' is a manifest", "a tcpdump filter expression: use -m http1"]),
], ids=["address", "cidr", "port-high", "port-negative", "port-unicode-digit", "protocol",
        "protocol-number", "family-mix", "ports-on-icmp", "ipversion", "byte-expression",
        "unsupported-word", "missing-value", "dangling-and", "protocol-is-not-p",
        "pid-not-a-number", "pid-zero", "comm-too-long", "comm-with-a-quote",
        "bundled-manifest-positional"])
def test_flow_filter_errors(args, words):
    check(run(["generate", "-b", "ftrace"] + args), 2, *words)


def test_a_pid_that_is_not_running_here():
    check(run(["trace", "-p", "4194000"]), 1, "no process 4194000 is running here")


def test_a_manifest_file_as_the_expression_says_use_m(manifest):
    path = manifest("functions:\n  - {name: ip_rcv, skb_pos: 1}\n")
    check(run(["generate", "-b", "ftrace", path]), 2, "is a manifest", "use -m " + path)


# --- captures --------------------------------------------------------------------------

@pytest.mark.parametrize("backend, capture, words", [
    ("stap", "ftrace/kprobe-6.1-all-traffic.trace",
     ["none of its 131 lines is an event of the stap backend",
      "it looks like a capture of the ftrace backend (--backend ftrace)"]),
    ("bpf", "stap/lab-all-6.1.0-56-amd64.txt",
     ["is an event of the bpf backend", "a capture of the stap backend (--backend stap)"]),
    ("ftrace", "bpf/loopback-6.18.txt",
     ["is an event of the ftrace backend", "a capture of the bpf backend (--backend bpf)"]),
    ("ftrace", sys.executable, ["is an event of the ftrace backend",
                                "it looks like no capture of legacytrace"]),
], ids=["ftrace-as-stap", "stap-as-bpf", "bpf-as-ftrace", "no-capture"])
def test_parse_of_a_file_without_an_event_of_the_backend(backend, capture, words):
    check(run(["parse", "-b", backend, str(HERE / "data" / capture)]), 1, *words)


# --- options ---------------------------------------------------------------------------

def test_unknown_program_format():
    check(run(["generate", "-b", "bpf", "-f", "xml"]), 2, "backend bpf has no format 'xml'")


@pytest.mark.parametrize("size", ["3", "2097152", "4k"])
def test_a_buffer_size_out_of_bounds(size):
    words = ["--buffer-size", size] + (["from 4 to 1048576"] if size.isdigit() else
                                       ["is not a valid integer"])
    check(run(["generate", "-b", "ftrace", "--buffer-size", size]), 2, *words)


def test_json_and_flows_together():
    check(run(["parse", "-b", "ftrace", "--json", "--flows", os.devnull]), 2,
          "--json and --flows are alternatives")


def test_invalid_regex():
    check(run(["generate", "-b", "ftrace", "-r", "ip_(rcv"]), 2, "invalid", "'ip_(rcv'", "missing )")


# --- limits of the kernel's kprobe_events ------------------------------------------------

def test_more_fetch_args_than_kprobe_events_allows(manifest):
    """A kprobe takes at most 128 fetch args (MAX_TRACE_ARGS): 130 custom fields cannot fit."""
    fields = "".join("      f{}: skb.len\n".format(i) for i in range(130))
    path = manifest("functions:\n  - name: ip_rcv\n    skb_pos: 1\n    fields:\n" + fields)
    check(run(["generate", "-b", "ftrace", "--host-facts", EL7_FACTS, "-m", path]), 2,
          "probe ip_rcv:", "fetch args")


# --- the host cannot run the backend ---------------------------------------------------

@needs_root
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("backend, words", [
    ("ftrace", ["backend ftrace cannot run here", "needs root"]),
    ("bpf", ["backend bpf cannot run here", "root"]),
    ("auto", ["no backend can run here", "root"]),
])
def test_not_root(backend, words):
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if run(["--version"], prefix=nobody).code != 0:
        pytest.skip("this venv's interpreter is not readable by uid 65534 (e.g. under /root)")
    check(run(["trace", "-b", backend, "-T", "1"], prefix=nobody), 1, *words)


@needs_root
def test_no_tracefs():
    """tracefs unmounted and impossible to mount (a tmpfs hides /sys/kernel/tracing)."""
    shell = "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; " \
            "mount -t tmpfs none /sys/kernel"
    check(run(["trace", "-b", "ftrace", "-T", "1"], prefix=in_namespace(shell)), 1,
          "tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")


@needs_root
def test_tracefs_unmounted_is_mounted_for_the_trace():
    """Not an error: trace mounts tracefs itself (it used to refuse ftrace here)."""
    result = run(["trace", "-b", "ftrace", "-T", "1"],
                 prefix=in_namespace("umount /sys/kernel/tracing 2>/dev/null; true"))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert "duration of 1 s reached" in result.err
    assert result.leftovers == []


@needs_root
@pytest.mark.skipif(not os.path.isdir("/sys/kernel/tracing/events"), reason="needs tracefs")
def test_read_only_tracefs():
    """A read-only mount of tracefs: the first write fails, and nothing stays half-done."""
    shell = "mount -o remount,ro,bind /sys/kernel/tracing"
    result = run(["trace", "-b", "ftrace", "-T", "1"], prefix=in_namespace(shell))
    check(result, 1, "Read-only file system")


@pytest.fixture
def path_without(tmp_path):
    """A PATH holding every command of this system except `hidden` (links in one folder)."""
    def make(*hidden):
        folder = tmp_path / "bin"
        folder.mkdir()
        for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                          "/sbin", "/bin"):
            for entry in sorted(glob.glob(directory + "/*")):
                link = folder / os.path.basename(entry)
                if link.name not in hidden and not os.path.lexists(str(link)):
                    link.symlink_to(entry)
        return {"PATH": str(folder)}
    return make


@needs_root
def test_stap_missing(path_without):
    result = run(["trace", "-b", "stap", "-T", "1"], env=path_without("stap", "staprun"))
    check(result, 1, "backend stap cannot run here", "stap not installed")


@needs_root
def test_bpftrace_missing(path_without):
    result = run(["trace", "-b", "bpf", "-T", "1"], env=path_without("bpftrace"))
    check(result, 1, "backend bpf cannot run here", "bpftrace not installed",
          "install bpftrace")


@needs_root
@pytest.mark.skipif(os.path.exists("/lib/modules/{}/build".format(os.uname().release)),
                    reason="this host has the headers of its running kernel")
def test_kernel_headers_not_matching_the_running_kernel():
    """Headers of other kernels (the lab's 6.1), not of the one that runs."""
    if not stap_kernel():
        pytest.skip("this kernel cannot run stap at all (no kprobes or no modules)")
    result = run(["trace", "-b", "stap", "-T", "1"])
    check(result, 1, "backend stap cannot run here",
          "no kernel headers for " + os.uname().release, "install")


@needs_root
def test_a_kernel_without_modules_or_kprobes_is_named_without_packages_to_install():
    """This development machine's 6.18: no package helps, so none is suggested."""
    if stap_kernel():
        pytest.skip("this kernel has kprobes and loads modules")
    result = run(["trace", "-b", "stap", "-T", "1"])
    check(result, 1, "backend stap cannot run here: kernel built without CONFIG_")
    assert "install" not in result.last and "headers" not in result.last


def stap_kernel():
    """Whether the running kernel has what stap needs of a kernel: kprobes and modules."""
    from legacytrace.kernel.host import probe_host
    facts = probe_host(try_bpftrace=False)
    return facts.kprobes is not False and facts.modules is not False


@pytest.mark.skipif(not shutil.which("stap"), reason="needs stap (the cache key holds its version)")
def test_a_stap_module_cache_others_can_write(tmp_path):
    """As under `sudo -E` with a user's XDG_CACHE_HOME: root must not load what is there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = run(["build", "-r", "3.10.0-1160.el7.x86_64", "-o", str(tmp_path / "lt_x.ko"),
                  "icmp"], env={"XDG_CACHE_HOME": str(shared), "LEGACYTRACE_STAP_CACHE": ""})
    check(result, 1, "refusing the stap module cache {}/legacytrace/stap: {} is writable by "
          "group and others (mode 0777)".format(shared, shared))
    assert not (shared / "legacytrace").exists()


# --- a bug: one line, not a traceback --------------------------------------------------

FAILING_PARSE = '''
from legacytrace import backends
_get = backends.get
def get(name):
    backend = _get(name)
    def parse(*args):
        raise RuntimeError("injected by the test")
    backend.parse = backend.parse_lines = parse
    return backend
backends.get = get
'''


def test_internal_error_is_one_line(tmp_path):
    """An unexpected exception (here from a parser) ends as one line asking for a report;
    LEGACYTRACE_DEBUG=1 shows the traceback."""
    (tmp_path / "sitecustomize.py").write_text(FAILING_PARSE)
    capture = tmp_path / "capture.txt"
    capture.write_text("anything\n")
    env = {"PYTHONPATH": str(tmp_path)}
    result = run(["parse", "-b", "ftrace", str(capture)], env=env)
    check(result, 1, "internal error: RuntimeError: injected by the test", "report")
    debug = run(["parse", "-b", "ftrace", str(capture)], env=dict(env, LEGACYTRACE_DEBUG="1"))
    assert debug.code == 1 and "Traceback" in debug.err and "injected by the test" in debug.err
