#!/usr/bin/env python3
"""Host-side driver of the kernel lab: boots Debian's kernel under QEMU and runs tests/lab in it.

    labctl.py setup                 install and cache everything, boot only if the System.map is new
    labctl.py run [PYTEST ARGS]     setup, host phase (pytest -m host), one boot for the guest phase
    labctl.py capture [NAMES]       setup, one boot running capture.py (writes tests/data/)
    labctl.py bench [--cpus N] [--icount] [-- ARGS]
                                    setup, bench/lab.py host, one boot running bench/lab.py guest ARGS
    labctl.py shell                 an interactive shell in the lab guest, for debugging

How it works, what it downloads and how long it takes: tests/lab/README.md.
Needs root on the host (apt-get, /boot/System.map-RELEASE) and Python 3.6+.
"""
import argparse
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

CHECKOUT = Path(__file__).resolve().parents[2]
LAB_DIR = CHECKOUT / "tests" / "lab"
RESULTS_COPY = CHECKOUT / "lab-results"
VNG_VERSION = "1.42"
PACKAGES = (
    "qemu-system-x86", "kmod", "busybox-static",     # virtme-ng: QEMU, depmod, its initramfs
    "systemtap", "systemtap-runtime", "gcc", "make",  # stap modules, built on the host
    "bpftrace", "dwarves",                           # bpftrace; pahole reads the guest's BTF
    "iproute2", "iputils-ping", "tcpdump", "curl",   # traffic and ground truth in the guest
)
# 9p instead of virtiofs: Debian's virtiofsd does not take virtme-ng's options (8 s lost per boot).
BOOT_OPTIONS = ("--force-9p", "--disable-kvm", "--memory", "2G", "--cpus", "2",
                "--append", "nokaslr", "--verbose")
#: One host thread for every vCPU: with QEMU's default of a thread per vCPU (MTTCG), a guest
#: hung twice in ~25 full runs while bpftrace placed kprobes (a soft lockup of bpftrace in
#: handle_softirqs, the other CPU in asm_exc_int3, then an RCU stall: console-stalled.log of
#: run 20261122-034917), the int3 patching of live code that MTTCG runs across threads.
TCG_OPTIONS = "-accel tcg,thread=single"
APT_MAX_AGE = 24 * 3600
KEEP_RUNS = 5
#: A guest whose followed output has not grown for this long is stalled (see TCG_OPTIONS;
#: a hung test looks the same); the boot is killed and,
#: for the guest phase, retried once. The slowest lab test takes ~200 s under TCG.
STALL_SECONDS = int(os.environ.get("LEGACYTRACE_LAB_STALL", "600"))
PRUNE_AGE = 3 * 3600
STAP_RUNTIME = Path("/usr/share/systemtap/runtime")


class StallError(Exception):
    """The guest stopped making progress; `console` is its console log."""

    def __init__(self, message: str, console: Path):
        super().__init__(message)
        self.console = console


class LabError(Exception):
    """Why the lab cannot run; `console` names a guest console log worth showing."""

    def __init__(self, message: str, console: Optional[Path] = None):
        super().__init__(message)
        self.console = console


@dataclass
class Lab:
    """Everything a run needs, all of it under the cache."""

    cache: Path
    release: str
    vmlinuz: Path
    vng: Path
    runtime: Path


def log(message: str) -> None:
    """Progress on stderr, so the guest's pytest output stays readable on stdout."""
    print("lab: " + message, file=sys.stderr, flush=True)


def run(argv: Sequence[str], **kwargs) -> str:
    """Run a host command; on failure raise with the command and the end of its output."""
    proc = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, **kwargs)
    if proc.returncode != 0:
        raise LabError("`{}` failed ({}): {}".format(
            " ".join(map(str, argv)), proc.returncode, proc.stdout.strip()[-800:]))
    return proc.stdout


def cache_dir() -> Path:
    """Outside the checkout so clones share it; LEGACYTRACE_LAB_CACHE overrides."""
    default = Path.home() / ".cache" / "legacytrace-lab"
    return Path(os.environ.get("LEGACYTRACE_LAB_CACHE", str(default))).resolve()


# --- Debian packages ------------------------------------------------------------

def missing_packages(names: Sequence[str]) -> List[str]:
    """Packages dpkg does not list as installed."""
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"] + list(names),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    installed = {f[0] for f in map(str.split, proc.stdout.splitlines()) if f[1:2] == ["ii"]}
    return [n for n in names if n not in installed]


def apt_get(*args: str, cwd: Optional[str] = None) -> str:
    """Non-interactive apt-get that waits for a concurrent apt instead of failing."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return run(["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=600"] + list(args), env=env, cwd=cwd)


def apt_update_if_stale(cache: Path, force: bool = False) -> None:
    """apt-get update at most once a day, so a new Debian kernel is noticed without slowing every run."""
    stamp = cache / "apt-updated"
    if not force and stamp.exists() and time.time() - stamp.stat().st_mtime < APT_MAX_AGE:
        return
    log("apt-get update")
    apt_get("update")
    stamp.touch()


def ensure_packages(cache: Path, names: Sequence[str]) -> None:
    """Install what is missing; quick when everything is there."""
    missing = missing_packages(names)
    if not missing:
        return
    apt_update_if_stale(cache, force=True)
    log("installing " + " ".join(missing))
    apt_get("install", "--no-install-recommends", *missing)


def resolve_release(cache: Path) -> str:
    """Debian's current kernel release, from the linux-image-amd64 metapackage."""
    apt_update_if_stale(cache)
    out = run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends: linux-image-(\d+\.\d+\.\d+-\d+-amd64)$", out, re.M)
    if not m:
        raise LabError("cannot resolve Debian's kernel from `apt-cache depends linux-image-amd64`: "
                       "run `apt-get update` and retry")
    return m.group(1)


# --- cached pieces ---------------------------------------------------------------

def ensure_vng(cache: Path) -> Path:
    """virtme-ng from PyPI in a venv of its own, pinned so every run boots the same way."""
    venv = cache / "tools" / ("virtme-ng-" + VNG_VERSION)
    vng = venv / "bin" / "vng"
    if not vng.exists():
        log("installing virtme-ng {} into {}".format(VNG_VERSION, venv))
        shutil.rmtree(str(venv), ignore_errors=True)
        run([sys.executable, "-m", "venv", venv])
        run([venv / "bin" / "python", "-m", "pip", "install", "-q", "virtme-ng==" + VNG_VERSION])
    return vng


def ensure_kernel(cache: Path, release: str) -> Path:
    """The kernel package unpacked into the cache, never into /boot (vng would skip its initramfs)."""
    kdir = cache / "kernels" / release
    vmlinuz = kdir / "boot" / ("vmlinuz-" + release)
    if vmlinuz.exists():
        return vmlinuz
    log("downloading linux-image-" + release)
    kdir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(kdir.parent)) as tmp:
        os.chmod(tmp, 0o755)  # apt-get download drops privileges to _apt when it can
        apt_get("download", "linux-image-" + release, cwd=tmp)
        deb = next(Path(tmp).glob("*.deb"))
        run(["dpkg-deb", "-x", deb, Path(tmp) / "root"])
        shutil.rmtree(str(kdir), ignore_errors=True)
        os.rename(str(Path(tmp) / "root"), str(kdir))
    return vmlinuz


def kernel_has_task_work_cancel_func(release: str) -> bool:
    """6.1.1xx backported task_work_cancel_func; systemtap 4.8's runtime predates it."""
    for tree in ("source", "build"):
        header = Path("/lib/modules", release, tree, "include/linux/task_work.h")
        if header.exists() and "task_work_cancel_func" in header.read_text():
            return True
    return False


def patch_task_work(runtime: Path) -> None:
    """Make the runtime call task_work_cancel_func, which has the old task_work_cancel's signature."""
    path = runtime / "stp_task_work.c"
    text = path.read_text()
    edits = (("typedef typeof(&task_work_cancel) ", "typedef typeof(&task_work_cancel_func) "),
             ('kallsyms_lookup_name("task_work_cancel")', 'kallsyms_lookup_name("task_work_cancel_func")'))
    for old, new in edits:
        if text.count(old) != 1:
            raise LabError("{} changed upstream: cannot find {!r}; update patch_task_work".format(path, old))
        text = text.replace(old, new)
    path.write_text(text)


def stap_version() -> str:
    """e.g. 4.8-0.188, for naming the runtime copy."""
    out = run(["stap", "-V"])
    m = re.search(r"version ([\w.]+)/([\w.]+)", out)
    return "{}-{}".format(*m.groups()) if m else "unknown"


def ensure_runtime(cache: Path, release: str) -> Path:
    """A copy of SystemTap's runtime for this kernel (patched if needed); the system copy stays untouched."""
    dest = cache / "stap-runtime" / "{}-{}".format(stap_version(), release)
    if (dest / ".complete").exists():
        return dest
    log("copying the SystemTap runtime to " + str(dest))
    shutil.rmtree(str(dest), ignore_errors=True)
    shutil.copytree(str(STAP_RUNTIME), str(dest))
    if kernel_has_task_work_cancel_func(release):
        patch_task_work(dest)
    (dest / ".complete").touch()
    return dest


def ensure_system_map(lab: Lab) -> None:
    """Debian's /boot/System.map is a placeholder: save the nokaslr kallsyms once, install it for stap."""
    real = lab.cache / "kernels" / lab.release / "System.map"
    if not real.exists():
        log("first boot of {}: saving /proc/kallsyms as its System.map".format(lab.release))
        run_dir = new_run_dir(lab.cache, "system-map")
        dump = run_dir / "kallsyms"
        rc = boot(lab, run_dir, ["awk 'NF == 3' /proc/kallsyms > {}".format(shlex.quote(str(dump)))],
                  timeout=600)
        lines = dump.read_text().splitlines() if dump.exists() else []
        if rc != 0 or len(lines) < 10000 or not any(" T _stext" in line[16:] for line in lines):
            raise LabError("the guest gave no usable /proc/kallsyms (rc {}, {} lines)".format(rc, len(lines)),
                           run_dir / "console.log")
        lines.sort(key=lambda line: int(line.split()[0], 16))
        write_atomic(real, "\n".join(lines) + "\n")
    target = Path("/boot/System.map-" + lab.release)
    if not target.exists() or target.read_bytes() != real.read_bytes():
        log("installing the real System.map as " + str(target))
        target.parent.mkdir(exist_ok=True)
        write_atomic(target, real.read_text())


def write_atomic(path: Path, text: str) -> None:
    """Readers (a concurrent stap) never see half a file."""
    tmp = path.with_name(path.name + ".tmp{}".format(os.getpid()))
    tmp.write_text(text)
    os.replace(str(tmp), str(path))


def setup(cache: Path) -> Lab:
    """Everything the lab needs, idempotent; a lock keeps concurrent runs from racing."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root on the host (apt-get, /boot/System.map): run it as root")
    cache.mkdir(parents=True, exist_ok=True)
    with open(str(cache / "setup.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_packages(cache, PACKAGES)
        release = resolve_release(cache)
        ensure_packages(cache, ["linux-headers-" + release])
        lab = Lab(cache, release, ensure_kernel(cache, release), ensure_vng(cache),
                  ensure_runtime(cache, release))
        ensure_system_map(lab)
    return lab


# --- booting -----------------------------------------------------------------------

def new_run_dir(cache: Path, kind: str) -> Path:
    """A fresh directory per run (concurrent runs must not share one); the last few are kept."""
    runs = cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_RUNS]:
        if time.time() - old.stat().st_mtime > PRUNE_AGE:  # never a run still going
            shutil.rmtree(str(old), ignore_errors=True)
    run_dir = Path(tempfile.mkdtemp(prefix="{}-{}-".format(time.strftime("%Y%m%d-%H%M%S"), kind),
                                    dir=str(runs)))
    for sub in ("shared", "results"):
        (run_dir / sub).mkdir()
    return run_dir


def boot_options(cpus: int = 2, icount: bool = False) -> List[str]:
    """BOOT_OPTIONS and TCG_OPTIONS, with another CPU count and, for instruction-counted
    timing, QEMU's icount: shift=0 makes every guest clock advance 1 ns per instruction,
    sleep=off jumps over idle time, so guest timings repeat whatever the host's load."""
    options = list(BOOT_OPTIONS)
    options[options.index("--cpus") + 1] = str(cpus)
    qemu = TCG_OPTIONS + (" -icount shift=0,sleep=off" if icount else "")
    options.append("--qemu-opts=" + qemu)
    return options


def vng_argv(lab: Lab, rw: Sequence[Path] = (), ro: Sequence[Path] = (),
             options: Optional[Sequence[str]] = None) -> List[str]:
    """The vng command line; the cache is always shared writable (results come back through it)."""
    argv = [str(lab.vng), "--run", str(lab.vmlinuz)] + list(options or boot_options())
    argv += ["--rwdir=" + str(p) for p in [lab.cache] + list(rw)]
    argv += ["--rodir=" + str(p) for p in ro]
    return argv


def vng_env(lab: Lab) -> Dict[str, str]:
    """vng runs its helpers (virtme-run) from PATH."""
    return dict(os.environ, PATH="{}:{}".format(lab.vng.parent, os.environ.get("PATH", "")))


def stream_new(path: Optional[Path], pos: int) -> int:
    """Print what the guest appended to path since pos (live progress); returns the new position."""
    if path is None or not path.exists():
        return pos
    with open(str(path), "rb") as f:
        f.seek(pos)
        data = f.read()
    sys.stdout.write(data.decode("utf-8", "replace"))
    sys.stdout.flush()
    return pos + len(data)


@contextlib.contextmanager
def boot_lock(cache: Path) -> Iterator[None]:
    """One guest at a time: two TCG guests on this 2-CPU machine starve each other."""
    with open(str(cache / "boot.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another lab boot to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def kill_group(proc: subprocess.Popen) -> None:
    """QEMU and vng's helpers share the boot's process group."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def boot(lab: Lab, run_dir: Path, commands: Sequence[str], rw: Sequence[Path] = (),
         ro: Sequence[Path] = (), timeout: int = 2400, follow: Optional[Path] = None,
         options: Optional[Sequence[str]] = None) -> int:
    """Boot once, run the shell commands as root, return their exit code (read from the shared dir).

    follow: a file the commands write in the shared cache, printed as it grows.
    options: vng's machine options (boot_options()).
    """
    rc_file = run_dir / "results" / "guest-rc"
    script = run_dir / "guest.sh"
    body = "\n".join(commands)
    script.write_text("#!/bin/sh\n{}\necho $? > {}\n".format(body, shlex.quote(str(rc_file))))
    console = run_dir / "console.log"
    argv = vng_argv(lab, rw, ro, options) + ["--exec", "sh " + shlex.quote(str(script))]
    with boot_lock(lab.cache), open(str(console), "w") as out:
        started = time.monotonic()
        out.write("$ {}\n".format(" ".join(map(shlex.quote, argv))))
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=vng_env(lab), start_new_session=True, cwd=str(CHECKOUT))
        pos, progressed = 0, started
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                kill_group(proc)
                raise LabError("the guest did not finish within {} s (LEGACYTRACE_LAB_TIMEOUT)".format(
                    timeout), console)
            if follow is not None and now - progressed > STALL_SECONDS:
                kill_group(proc)
                raise StallError("the guest wrote nothing to {} for {} s (LEGACYTRACE_LAB_STALL)"
                                 .format(follow.name, STALL_SECONDS), console)
            time.sleep(2)
            new_pos = stream_new(follow, pos)
            if new_pos != pos:
                pos, progressed = new_pos, time.monotonic()
        stream_new(follow, pos)
    log("guest ran for {:.0f} s".format(time.monotonic() - started))
    if not rc_file.exists():
        raise LabError("the guest wrote no exit code: it did not boot, panicked or could not start "
                       "the command (vng exit {})".format(proc.returncode), console)
    return int(rc_file.read_text().strip())


# --- test phases ---------------------------------------------------------------------

def lab_env(lab: Lab, run_dir: Path, phase: str) -> Dict[str, str]:
    """What tests learn about the lab, in both phases (see tests/lab/README.md)."""
    env = {
        "LEGACYTRACE_LAB_PHASE": phase,
        "LEGACYTRACE_LAB_RELEASE": lab.release,
        "LEGACYTRACE_LAB_CACHE": str(lab.cache),
        "LEGACYTRACE_LAB_STAP_RUNTIME": str(lab.runtime),
        "LEGACYTRACE_LAB_SHARED": str(run_dir / "shared"),
        "LEGACYTRACE_LAB_STRICT": os.environ.get("LEGACYTRACE_LAB_STRICT", "1"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",  # progress reaches the host as it happens (the stall watchdog)
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # importing plugins (hypothesis) costs a minute under TCG
    }
    if phase == "guest":
        env["LEGACYTRACE_LAB"] = "1"
        # The guest's /tmp overlays the host's, whose files appear in it while tests run
        # (a host test's bpf script folder looked like a leftover); /var/tmp is the guest's.
        env["TMPDIR"] = "/var/tmp"
    return env


def pytest_argv(venv: Path, run_dir: Path, phase: str, args: Sequence[str]) -> List[str]:
    """pytest over tests/lab for one phase; the console script keeps the checkout off sys.path."""
    marker = "host" if phase == "host" else "not host"
    paths = [] if any(a.startswith("tests/lab") for a in args) else ["tests/lab"]
    # one broken module must not hide the other lab results of an expensive boot
    return [str(venv / "bin" / "pytest"), "-p", "no:cacheprovider", "-ra", "-m", marker,
            "--continue-on-collection-errors",
            "--junitxml=" + str(run_dir / "results" / (phase + "-junit.xml"))] + paths + list(args)


def host_phase(lab: Lab, run_dir: Path, venv: Path, args: Sequence[str]) -> int:
    """Build artifacts (stap modules) on the host, where compiling is fast."""
    log("host phase: pytest -m host")
    env = dict(os.environ, **lab_env(lab, run_dir, "host"))
    rc = subprocess.run(pytest_argv(venv, run_dir, "host", args), cwd=str(CHECKOUT), env=env).returncode
    return 0 if rc == 5 else rc  # 5: no host test selected


def guest_phase(lab: Lab, run_dir: Path, venv: Path, args: Sequence[str], timeout: int) -> int:
    """One boot runs every selected guest test; output and JUnit XML come back through the cache."""
    log("guest phase: booting {} (TCG)".format(lab.release))
    exports = " ".join("{}={}".format(k, shlex.quote(v)) for k, v in lab_env(lab, run_dir, "guest").items())
    output = run_dir / "results" / "guest-pytest.log"
    commands = [
        "cd {} || exit 97".format(shlex.quote(str(CHECKOUT))),
        "export " + exports,
        "{} > {} 2>&1".format(" ".join(map(shlex.quote, pytest_argv(venv, run_dir, "guest", args))),
                              shlex.quote(str(output))),
        "rc=$?",
        "dmesg > {}".format(shlex.quote(str(run_dir / "results" / "dmesg.txt"))),
        "(exit $rc)",
    ]
    try:
        return boot(lab, run_dir, commands, ro=[CHECKOUT], timeout=timeout, follow=output)
    except StallError as e:
        log("{}: retrying the guest phase once".format(e))
        shutil.copy(str(e.console), str(run_dir / "console-stalled.log"))
        if output.exists():
            output.rename(run_dir / "results" / "guest-pytest-stalled.log")
    try:
        return boot(lab, run_dir, commands, ro=[CHECKOUT], timeout=timeout, follow=output)
    except StallError as e:
        raise LabError("{}, twice".format(e), e.console)


def keep_results(run_dir: Path) -> None:
    """Copy results next to the checkout (lab-results/, ignored by git) for CI logs and humans."""
    shutil.rmtree(str(RESULTS_COPY), ignore_errors=True)
    shutil.copytree(str(run_dir / "results"), str(RESULTS_COPY))
    console = run_dir / "console.log"
    if console.exists():
        shutil.copy(str(console), str(RESULTS_COPY / "console.log"))


def check_venv(venv: Path) -> None:
    """The project's venv runs the tests in both phases."""
    if not (venv / "bin" / "pytest").exists():
        raise LabError("no pytest in {}: run `make venv` (or set LEGACYTRACE_LAB_VENV)".format(venv))


# --- commands ---------------------------------------------------------------------------

def cmd_setup(args: argparse.Namespace) -> int:
    """Prepare without running tests."""
    lab = setup(cache_dir())
    log("ready: {} in {}".format(lab.release, lab.cache))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole lab: setup, host phase, guest phase; non-zero if anything failed or skipped."""
    venv = Path(args.venv).resolve()
    check_venv(venv)
    lab = setup(cache_dir())
    run_dir = new_run_dir(lab.cache, "run")
    host_rc = host_phase(lab, run_dir, venv, args.pytest_args)
    guest_rc = guest_phase(lab, run_dir, venv, args.pytest_args, args.timeout)
    keep_results(run_dir)
    if guest_rc == 5:
        log("the guest phase selected no test")
    if host_rc or guest_rc:
        log("FAILED: host phase exit {}, guest phase exit {}; results in {} and {}".format(
            host_rc, guest_rc, RESULTS_COPY, run_dir))
        return 1
    log("passed: results in {}".format(RESULTS_COPY))
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """Record raw backend output in the guest into tests/data/ (the checkout is shared writable)."""
    venv = Path(args.venv).resolve()
    check_venv(venv)
    lab = setup(cache_dir())
    run_dir = new_run_dir(lab.cache, "capture")
    output = run_dir / "results" / "capture.log"
    capture = [str(venv / "bin" / "python"), str(LAB_DIR / "capture.py")] + args.names
    commands = ["cd {} || exit 97".format(shlex.quote(str(CHECKOUT))),
                "{} > {} 2>&1".format(" ".join(map(shlex.quote, capture)), shlex.quote(str(output)))]
    return boot(lab, run_dir, commands, rw=[CHECKOUT], timeout=args.timeout, follow=output)


def cmd_bench(args: argparse.Namespace) -> int:
    """bench/lab.py: its host step (stap modules) here, then one boot running its guest step."""
    venv = Path(args.venv).resolve()
    check_venv(venv)
    lab = setup(cache_dir())
    run_dir = new_run_dir(lab.cache, "bench")
    results = run_dir / "results"
    bench = [str(venv / "bin" / "python"), str(CHECKOUT / "bench" / "lab.py")]
    shared = str(run_dir / "shared")
    log("bench host step: bench/lab.py host")
    host_env = dict(os.environ, **lab_env(lab, run_dir, "host"))
    host_rc = subprocess.run(bench + ["host", shared, "--json", str(results / "bench-host.json")],
                             cwd=str(CHECKOUT), env=host_env).returncode
    if host_rc:
        raise LabError("bench/lab.py host failed (exit {})".format(host_rc))
    options = boot_options(args.cpus, args.icount)
    exports = dict(lab_env(lab, run_dir, "guest"),
                   LEGACYTRACE_LAB_ACCEL="tcg, -icount shift=0,sleep=off" if args.icount else "tcg")
    output = results / "bench.log"
    guest = bench + ["guest", shared, "--json", str(results / "bench.json")] + args.bench_args
    commands = [
        "cd {} || exit 97".format(shlex.quote(str(CHECKOUT))),
        "export " + " ".join("{}={}".format(k, shlex.quote(v)) for k, v in exports.items()),
        "{} > {} 2>&1".format(" ".join(map(shlex.quote, guest)), shlex.quote(str(output))),
    ]
    log("bench guest step: booting {} ({})".format(lab.release, " ".join(options)))
    try:
        rc = boot(lab, run_dir, commands, ro=[CHECKOUT], timeout=args.timeout, follow=output,
                  options=options)
    finally:
        keep_results(run_dir)
    log("bench {}: figures in {}".format("done" if rc == 0 else "FAILED (exit {})".format(rc),
                                          RESULTS_COPY / "bench.log"))
    return 1 if rc else 0


def cmd_shell(args: argparse.Namespace) -> int:
    """An interactive root shell in the lab guest with the checkout and the cache shared."""
    lab = setup(cache_dir())
    return subprocess.run(vng_argv(lab, rw=[CHECKOUT]), env=vng_env(lab), cwd=str(CHECKOUT)).returncode


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default=os.environ.get("LEGACYTRACE_LAB_VENV", str(CHECKOUT / ".venv")),
                        help="the project's venv, whose pytest and python run the tests")
    parser.add_argument("--timeout", type=int, default=int(os.environ.get("LEGACYTRACE_LAB_TIMEOUT", "3000")),
                        help="hard limit in seconds for one guest boot")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup").set_defaults(func=cmd_setup)
    sub.add_parser("run", usage="labctl.py run [PYTEST ARGS]  (passed to pytest in both phases)"
                   ).set_defaults(func=cmd_run)
    p_cap = sub.add_parser("capture")
    p_cap.add_argument("names", nargs="*", help="captures to make (default: all)")
    p_cap.set_defaults(func=cmd_capture)
    p_bench = sub.add_parser("bench", usage="labctl.py bench [--cpus N] [--icount] [-- BENCH ARGS]"
                             "  (bench/lab.py guest's options)")
    p_bench.add_argument("--cpus", type=int, default=2, help="guest CPUs (vng --cpus)")
    p_bench.add_argument("--icount", action="store_true",
                         help="QEMU -icount shift=0,sleep=off: guest clocks count instructions")
    p_bench.set_defaults(func=cmd_bench)
    sub.add_parser("shell").set_defaults(func=cmd_shell)
    if "bench" in argv:
        cut = list(argv).index("--") if "--" in argv else len(argv)
        args = parser.parse_args(argv[:cut])
        args.bench_args = list(argv[cut + 1:])
        return args
    if "run" not in argv:
        return parser.parse_args(argv)
    cut = list(argv).index("run") + 1  # everything after `run` is pytest's, options included
    args = parser.parse_args(argv[:cut])
    rest = list(argv[cut:])
    args.pytest_args = rest[1:] if rest[:1] == ["--"] else rest
    return args


def show_console_tail(console: Path, lines: int = 40) -> None:
    """The last console lines usually show why a guest failed (panic, missing tool)."""
    if console.exists():
        tail = console.read_text(errors="replace").splitlines()[-lines:]
        print("lab: last {} lines of {}:".format(len(tail), console), file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        return args.func(args)
    except LabError as e:
        log("ERROR: {}".format(e))
        if e.console:
            show_console_tail(e.console)
        return 2
    finally:
        log("{} took {:.0f} s".format(args.command, time.monotonic() - started))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
