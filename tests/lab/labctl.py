#!/usr/bin/env python3
"""Host-side driver of the kernel lab: boots a real kernel under QEMU and runs tests/lab in it.

    labctl.py [--kernel K] setup                 install and cache everything, boot only for a new System.map
    labctl.py [--kernel K] run [PYTEST ARGS]     setup, host phase (pytest -m host), one boot for the guest phase
    labctl.py [--kernel K] capture [NAMES]       setup, one boot running capture.py (writes tests/data/)
    labctl.py [--kernel K] bench [--cpus N] [--icount] [-- ARGS]
                                                 setup, bench/lab.py host, one boot running bench/lab.py guest ARGS
    labctl.py [--kernel K] shell                 an interactive shell in the lab guest, for debugging
    labctl.py [--kernel K] exec COMMAND          one shell command in the guest, its output printed

K is a lab kernel (labkernels.KERNELS: 6.1, 5.10, el7; default $LAB_KERNEL or 6.1); `run` also
takes a comma-separated list or `all`, one boot per kernel. How it works, what it downloads and
how long it takes: tests/lab/README.md. Needs root on the host (apt-get, /boot/System.map-RELEASE,
/lib/modules/RELEASE/build).
"""
import argparse
import base64
import contextlib
import fcntl
import gzip
import hashlib
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

import labkernels
from labkernels import LabError, Prepared, ensure_packages, log, run, write_atomic

CHECKOUT = labkernels.CHECKOUT
LAB_DIR = CHECKOUT / "tests" / "lab"
RESULTS_COPY = CHECKOUT / "lab-results"
GUEST_INIT = LAB_DIR / "guest-init"
PACKAGES = (
    "qemu-system-x86", "busybox-static", "cpio",      # the guest: QEMU, its initramfs
    "systemtap", "systemtap-runtime", "gcc", "make",  # stap modules, built on the host
    "bpftrace", "dwarves",                           # bpftrace; pahole reads the guest's BTF
    "iproute2", "iputils-ping", "tcpdump", "curl",   # traffic and ground truth in the guest
)
MEMORY_MB = 2048
#: One host thread for every vCPU: with QEMU's default of a thread per vCPU (MTTCG), a guest
#: hung twice in ~25 full runs while bpftrace placed kprobes (a soft lockup of bpftrace in
#: handle_softirqs, the other CPU in asm_exc_int3, then an RCU stall), the int3 patching of
#: live code that MTTCG runs across threads.
TCG_OPTIONS = ("-accel", "tcg,thread=single")
#: icount: every guest clock advances 1 ns per instruction, sleep=off jumps over idle time, so
#: guest timings repeat whatever the host's load (bench --icount).
ICOUNT_OPTIONS = ("-icount", "shift=0,sleep=off")
KEEP_RUNS = 5
#: A guest whose followed output has not grown for this long is stalled (see TCG_OPTIONS;
#: a hung test looks the same); the boot is killed and, for the guest phase, retried once.
STALL_SECONDS = int(os.environ.get("LEGACYTRACE_LAB_STALL", "600"))
PRUNE_AGE = 3 * 3600
STAP_RUNTIME = Path("/usr/share/systemtap/runtime")


class StallError(LabError):
    """The guest stopped making progress; `console` is its console log."""


@dataclass
class Lab:
    """Everything a run on one kernel needs, all of it under the cache."""

    cache: Path
    kernel: Prepared
    initrd: Path
    runtime: Path

    @property
    def name(self) -> str:
        return self.kernel.name

    @property
    def release(self) -> str:
        return self.kernel.release


def cache_dir() -> Path:
    """Outside the checkout so clones share it; LEGACYTRACE_LAB_CACHE overrides."""
    default = Path.home() / ".cache" / "legacytrace-lab"
    return Path(os.environ.get("LEGACYTRACE_LAB_CACHE", str(default))).resolve()


# --- cached pieces ---------------------------------------------------------------

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


def ensure_initrd(cache: Path, kernel: Prepared) -> Path:
    """The guest's initramfs: busybox, tests/lab/guest-init and the modules the kernel needs for
    its 9p root, cached by what goes into it."""
    busybox = Path("/bin/busybox")
    parts = [GUEST_INIT.read_bytes(), busybox.read_bytes()] + [m.read_bytes() for m in kernel.modules]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    initrd = cache / "initrd" / "{}-{}.cpio.gz".format(kernel.release, key)
    if initrd.exists():
        return initrd
    log("making the guest initramfs " + initrd.name)
    initrd.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(initrd.parent)) as tmp:
        root = Path(tmp) / "root"
        for sub in ("bin", "proc", "sys", "dev", "host", "modules"):
            (root / sub).mkdir(parents=True)
        shutil.copy(str(busybox), str(root / "bin" / "busybox"))
        shutil.copy(str(GUEST_INIT), str(root / "init"))
        (root / "init").chmod(0o755)
        names = []
        for module in kernel.modules:
            name = module.name.split(".ko")[0]
            shutil.copy(str(module), str(root / "modules" / (name + ".ko")))
            names.append(name)
        if names:
            (root / "modules" / "order").write_text("\n".join(names) + "\n")
        files = subprocess.run(["find", "."], cwd=str(root), stdout=subprocess.PIPE, check=True).stdout
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=str(root), input=files,
                                 stdout=subprocess.PIPE, check=True).stdout
        Path(tmp, "initrd").write_bytes(gzip.compress(archive))
        os.replace(str(Path(tmp, "initrd")), str(initrd))
    return initrd


def ensure_system_map(lab: Lab) -> None:
    """stap -r RELEASE reads /boot/System.map-RELEASE. A Debian kernel ships a placeholder: boot it
    once with nokaslr (every lab boot uses it) and keep /proc/kallsyms as the real one."""
    real = lab.cache / "kernels" / lab.release / "System.map"
    if lab.kernel.system_map is not None:
        real = lab.kernel.system_map
    elif not real.exists():
        log("first boot of {}: saving /proc/kallsyms as its System.map".format(lab.release))
        run_dir = new_run_dir(lab.cache, "system-map")
        dump = run_dir / "results" / "kallsyms"
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
        write_atomic(target, real.read_text())


def setup(cache: Path, name: str) -> Lab:
    """Everything the lab needs for kernel `name`, idempotent; a lock keeps concurrent runs from racing."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root on the host (apt-get, /boot/System.map): run it as root")
    kind = labkernels.kernel(name)
    cache.mkdir(parents=True, exist_ok=True)
    with open(str(cache / "setup.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_packages(cache, PACKAGES + tuple(kind.packages()))
        kernel = kind.prepare(cache)
        lab = Lab(cache, kernel, ensure_initrd(cache, kernel), ensure_runtime(cache, kernel.release))
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


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def qemu_argv(lab: Lab, script: Path, rw: Sequence[Path] = (), ro: Sequence[Path] = (),
              cpus: int = 2, icount: bool = False) -> List[str]:
    """QEMU booting the lab kernel with tests/lab/guest-init, which runs `script` as root with the
    host's root filesystem read-only, the cache and `rw` paths writable, `ro` read-only, and the
    kernel's own modules (if it has any) at /lib/modules/RELEASE."""
    shares = [(p, "rw", p) for p in [lab.cache] + list(rw)] + [(p, "ro", p) for p in ro]
    if lab.kernel.modules_dir is not None:
        shares.append((lab.kernel.modules_dir, "ro", Path("/lib/modules", lab.release)))
    argv = ["qemu-system-x86_64"] + list(TCG_OPTIONS) + (list(ICOUNT_OPTIONS) if icount else []) + [
        "-m", str(MEMORY_MB), "-smp", str(cpus), "-nographic", "-no-reboot",
        "-kernel", str(lab.kernel.image), "-initrd", str(lab.initrd),
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
    lines = []
    for index, (path, mode, where) in enumerate(shares):
        tag = "share{}".format(index)
        argv += ["-virtfs", "local,path={},mount_tag={},security_model=none,multidevs=remap{}".format(
            path, tag, ",readonly=on" if mode == "ro" else "")]
        lines.append("{} {} {}".format(tag, mode, where))
    append = "console=ttyS0 panic=-1 nokaslr lab.shares={} lab.script={}".format(
        _b64("\n".join(lines)), _b64(str(script)))
    return argv + ["-append", append]


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
    """QEMU runs in the boot's own process group."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def boot(lab: Lab, run_dir: Path, commands: Sequence[str], rw: Sequence[Path] = (),
         ro: Sequence[Path] = (), timeout: int = 2400, follow: Optional[Path] = None,
         cpus: int = 2, icount: bool = False) -> int:
    """Boot once, run the shell commands as root, return their exit code (read from the shared dir).

    follow: a file the commands write in the shared cache, printed as it grows.
    """
    rc_file = run_dir / "results" / "guest-rc"
    script = run_dir / "guest.sh"
    body = "\n".join(commands)
    script.write_text("#!/bin/sh\n{}\necho $? > {}\n".format(body, shlex.quote(str(rc_file))))
    console = run_dir / "console.log"
    argv = qemu_argv(lab, script, rw, ro, cpus, icount)
    with boot_lock(lab.cache), open(str(console), "w") as out:
        started = time.monotonic()
        out.write("$ {}\n".format(" ".join(map(shlex.quote, argv))))
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(CHECKOUT))
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
                       "the command (QEMU exit {})".format(proc.returncode), console)
    return int(rc_file.read_text().strip())


# --- test phases ---------------------------------------------------------------------

def lab_env(lab: Lab, run_dir: Path, phase: str) -> Dict[str, str]:
    """What tests learn about the lab, in both phases (see tests/lab/README.md)."""
    env = {
        "LEGACYTRACE_LAB_PHASE": phase,
        "LEGACYTRACE_LAB_KERNEL": lab.name,
        "LEGACYTRACE_LAB_RELEASE": lab.release,
        "LEGACYTRACE_LAB_CACHE": str(lab.cache),
        "LEGACYTRACE_LAB_STAP_RUNTIME": str(lab.runtime),
        "LEGACYTRACE_LAB_SHARED": str(run_dir / "shared"),
        "LEGACYTRACE_LAB_STRICT": os.environ.get("LEGACYTRACE_LAB_STRICT", "1"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",  # progress reaches the host as it happens (the stall watchdog)
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # importing plugins (hypothesis) costs time under TCG
    }
    if phase == "guest":
        env["LEGACYTRACE_LAB"] = "1"
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
    log("host phase ({}): pytest -m host".format(lab.name))
    env = lab.kernel.build_env(dict(os.environ, **lab_env(lab, run_dir, "host")))
    rc = subprocess.run(pytest_argv(venv, run_dir, "host", args), cwd=str(CHECKOUT), env=env).returncode
    return 0 if rc == 5 else rc  # 5: no host test selected


def guest_commands(lab: Lab, run_dir: Path, exports: Dict[str, str], argv: Sequence[str],
                   output: Path) -> List[str]:
    """Shell lines for the guest: in the checkout, with `exports`, argv's output to `output`."""
    return [
        "cd {} || exit 97".format(shlex.quote(str(CHECKOUT))),
        "export " + " ".join("{}={}".format(k, shlex.quote(v)) for k, v in exports.items()),
        "{} > {} 2>&1".format(" ".join(map(shlex.quote, argv)), shlex.quote(str(output))),
        "rc=$?",
        "dmesg > {}".format(shlex.quote(str(run_dir / "results" / "dmesg.txt"))),
        "(exit $rc)",
    ]


def guest_phase(lab: Lab, run_dir: Path, venv: Path, args: Sequence[str], timeout: int) -> int:
    """One boot runs every selected guest test; output and JUnit XML come back through the cache."""
    log("guest phase: booting {} (TCG)".format(lab.release))
    output = run_dir / "results" / "guest-pytest.log"
    commands = guest_commands(lab, run_dir, lab_env(lab, run_dir, "guest"),
                              pytest_argv(venv, run_dir, "guest", args), output)
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


def keep_results(lab: Lab, run_dir: Path) -> Path:
    """Copy results next to the checkout (lab-results/KERNEL/, ignored by git) for CI logs and humans."""
    dest = RESULTS_COPY / lab.name
    shutil.rmtree(str(dest), ignore_errors=True)
    shutil.copytree(str(run_dir / "results"), str(dest))
    console = run_dir / "console.log"
    if console.exists():
        shutil.copy(str(console), str(dest / "console.log"))
    return dest


def check_venv(venv: Path) -> None:
    """The project's venv runs the tests in both phases."""
    if not (venv / "bin" / "pytest").exists():
        raise LabError("no pytest in {}: run `make venv` (or set LEGACYTRACE_LAB_VENV)".format(venv))


# --- commands ---------------------------------------------------------------------------

def kernel_names(text: str) -> List[str]:
    """`all`, one name or a comma-separated list, each a labkernels.KERNELS name."""
    names = list(labkernels.KERNELS) if text == "all" else [n for n in text.split(",") if n]
    for name in names:
        labkernels.kernel(name)  # LabError for an unknown name
    return names


def one_kernel(args: argparse.Namespace) -> str:
    names = kernel_names(args.kernel)
    if len(names) != 1:
        raise LabError("{} takes one lab kernel, not {!r}".format(args.command, args.kernel))
    return names[0]


def cmd_setup(args: argparse.Namespace) -> int:
    """Prepare without running tests."""
    for name in kernel_names(args.kernel):
        lab = setup(cache_dir(), name)
        log("ready: {} ({}) in {}".format(lab.name, lab.release, lab.cache))
    return 0


def run_kernel(name: str, venv: Path, args: argparse.Namespace) -> int:
    """Setup, host phase and guest phase on one kernel; the exit status of both phases."""
    started = time.monotonic()
    lab = setup(cache_dir(), name)
    run_dir = new_run_dir(lab.cache, "run-" + name)
    host_rc = host_phase(lab, run_dir, venv, args.pytest_args)
    guest_rc = guest_phase(lab, run_dir, venv, args.pytest_args, args.timeout)
    dest = keep_results(lab, run_dir)
    if guest_rc == 5:
        log("the guest phase selected no test")
    outcome = "passed" if not (host_rc or guest_rc) else \
        "FAILED: host phase exit {}, guest phase exit {}".format(host_rc, guest_rc)
    log("{} ({}) {} in {:.0f} s: results in {} and {}".format(
        name, lab.release, outcome, time.monotonic() - started, dest, run_dir))
    return 1 if host_rc or guest_rc else 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole lab on each kernel asked for; non-zero if anything failed or skipped on any."""
    venv = Path(args.venv).resolve()
    check_venv(venv)
    failed = []
    for name in kernel_names(args.kernel):
        try:
            if run_kernel(name, venv, args):
                failed.append(name)
        except LabError as e:   # the next kernel's results are still worth having
            log("ERROR on {}: {}".format(name, e))
            if e.console:
                show_console_tail(e.console)
            failed.append(name)
    if failed:
        log("FAILED on: " + ", ".join(failed))
        return 1
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """Record raw backend output in the guest into tests/data/ (the checkout is shared writable)."""
    venv = Path(args.venv).resolve()
    check_venv(venv)
    lab = setup(cache_dir(), one_kernel(args))
    run_dir = new_run_dir(lab.cache, "capture")
    output = run_dir / "results" / "capture.log"
    capture = [str(venv / "bin" / "python"), str(LAB_DIR / "capture.py")] + args.names
    commands = guest_commands(lab, run_dir, lab_env(lab, run_dir, "guest"), capture, output)
    return boot(lab, run_dir, commands, rw=[CHECKOUT], timeout=args.timeout, follow=output)


def cmd_bench(args: argparse.Namespace) -> int:
    """bench/lab.py: its host step (stap modules) here, then one boot running its guest step."""
    venv = Path(args.venv).resolve()
    check_venv(venv)
    lab = setup(cache_dir(), one_kernel(args))
    run_dir = new_run_dir(lab.cache, "bench")
    results = run_dir / "results"
    bench = [str(venv / "bin" / "python"), str(CHECKOUT / "bench" / "lab.py")]
    shared = str(run_dir / "shared")
    log("bench host step: bench/lab.py host")
    host_env = lab.kernel.build_env(dict(os.environ, **lab_env(lab, run_dir, "host")))
    host_rc = subprocess.run(bench + ["host", shared, "--json", str(results / "bench-host.json")],
                             cwd=str(CHECKOUT), env=host_env).returncode
    if host_rc:
        raise LabError("bench/lab.py host failed (exit {})".format(host_rc))
    exports = dict(lab_env(lab, run_dir, "guest"),
                   LEGACYTRACE_LAB_ACCEL="tcg, -icount shift=0,sleep=off" if args.icount else "tcg")
    output = results / "bench.log"
    guest = bench + ["guest", shared, "--json", str(results / "bench.json")] + args.bench_args
    log("bench guest step: booting {} ({} CPUs{})".format(lab.release, args.cpus,
                                                          ", icount" if args.icount else ""))
    try:
        rc = boot(lab, run_dir, guest_commands(lab, run_dir, exports, guest, output), ro=[CHECKOUT],
                  timeout=args.timeout, follow=output, cpus=args.cpus, icount=args.icount)
    finally:
        dest = keep_results(lab, run_dir)
    log("bench {}: figures in {}".format("done" if rc == 0 else "FAILED (exit {})".format(rc),
                                          dest / "bench.log"))
    return 1 if rc else 0


def cmd_exec(args: argparse.Namespace) -> int:
    """One shell command in the guest, with the lab's environment and the checkout writable; its
    output is printed as it comes (for debugging and one-off recordings)."""
    lab = setup(cache_dir(), one_kernel(args))
    run_dir = new_run_dir(lab.cache, "exec")
    output = run_dir / "results" / "exec.log"
    commands = guest_commands(lab, run_dir, lab_env(lab, run_dir, "guest"),
                              ["sh", "-c", args.shell_command], output)
    try:
        return boot(lab, run_dir, commands, rw=[CHECKOUT], timeout=args.timeout, follow=output)
    finally:
        keep_results(lab, run_dir)


def cmd_shell(args: argparse.Namespace) -> int:
    """An interactive root shell in the lab guest with the checkout writable."""
    lab = setup(cache_dir(), one_kernel(args))
    run_dir = new_run_dir(lab.cache, "shell")
    script = run_dir / "guest.sh"
    script.write_text("#!/bin/sh\ncd {}\nexec /bin/bash -i\n".format(shlex.quote(str(CHECKOUT))))
    return subprocess.run(qemu_argv(lab, script, rw=[CHECKOUT]), cwd=str(CHECKOUT)).returncode


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default=os.environ.get("LEGACYTRACE_LAB_VENV", str(CHECKOUT / ".venv")),
                        help="the project's venv, whose pytest and python run the tests")
    parser.add_argument("--kernel", default=os.environ.get("LAB_KERNEL") or labkernels.DEFAULT,
                        help="lab kernel: {} (run and setup: also a comma-separated list, or all)"
                        .format(", ".join(labkernels.KERNELS)))
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
    p_bench.add_argument("--cpus", type=int, default=2, help="guest CPUs")
    p_bench.add_argument("--icount", action="store_true",
                         help="QEMU -icount shift=0,sleep=off: guest clocks count instructions")
    p_bench.set_defaults(func=cmd_bench)
    sub.add_parser("shell").set_defaults(func=cmd_shell)
    p_exec = sub.add_parser("exec")
    p_exec.add_argument("shell_command", metavar="COMMAND", help="a shell command to run in the guest")
    p_exec.set_defaults(func=cmd_exec)
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
