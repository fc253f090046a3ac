"""Phase rules and fixtures of the kernel lab (how it works: tests/lab/README.md).

Two phases, one selection: tests marked `host` run on the host before the boot and build
artifacts into LEGACYTRACE_LAB_SHARED; every other test here runs inside the lab guest.
Outside `make lab` all of them skip; with LEGACYTRACE_LAB_STRICT=1 a skip is a failure,
so CI cannot pass by not running the lab. The one skip strict mode keeps is a test marked
`unsupported(KERNEL, reason=...)` on that lab kernel: it names what the kernel lacks.
"""
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import pytest

import labkit

STRICT = os.environ.get("LEGACYTRACE_LAB_STRICT") == "1"
IN_GUEST = os.environ.get("LEGACYTRACE_LAB") == "1"
IN_HOST_PHASE = os.environ.get("LEGACYTRACE_LAB_PHASE") == "host"
HOW_TO_RUN = "run it with `make lab` (tests/lab/README.md)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "host: lab host phase: runs on the host before the boot and leaves artifacts "
        "(stap modules) in LEGACYTRACE_LAB_SHARED for the guest tests")
    config.addinivalue_line(
        "markers", "unsupported(*kernels, reason): the lab kernels (labkernels.KERNELS names) this "
        "test cannot run on, and why; it is reported skipped there, with the reason, even in strict mode")


def unsupported_here(item: pytest.Item) -> Optional[str]:
    """The reason `item` is marked unsupported on this lab kernel, or None."""
    for mark in item.iter_markers("unsupported"):
        if labkit.lab_kernel() in mark.args:
            reason = mark.kwargs.get("reason")
            if not reason:
                raise pytest.UsageError("{}: unsupported() needs reason=".format(item.nodeid))
            return "unsupported on the {} lab kernel: {}".format(labkit.lab_kernel(), reason)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each test runs only in its own phase, and only on the kernels it supports."""
    if item.get_closest_marker("host"):
        if not IN_HOST_PHASE:
            pytest.skip("lab host-phase test: " + HOW_TO_RUN)
    elif not IN_GUEST:
        pytest.skip("needs the lab guest kernel: " + HOW_TO_RUN)
    reason = unsupported_here(item)
    if reason:
        pytest.skip(reason)


def strict_failure(report: Union[pytest.TestReport, pytest.CollectReport]) -> None:
    """Turn a skip report into a failure that still says why it skipped."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = "LEGACYTRACE_LAB_STRICT=1 makes this skip a failure: {}".format(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Strict: a test that skipped (in any phase of setup, call, teardown) fails instead."""
    report = yield
    if STRICT and report.skipped and not hasattr(report, "wasxfail") and not unsupported_here(item):
        strict_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Strict: a whole module that skipped (importorskip, allow_module_level) fails instead."""
    report = yield
    if STRICT and report.skipped:
        strict_failure(report)
    return report


# --- the lab's environment ----------------------------------------------------

def lab_path(name: str) -> Path:
    """A directory the harness exported; its absence means this is not a lab run."""
    value = os.environ.get(name)
    if not value:
        pytest.fail("{} is not set: {}".format(name, HOW_TO_RUN))
    return Path(value)


@pytest.fixture(scope="session")
def lab_release() -> str:
    """The guest kernel's release, in both phases."""
    release = os.environ.get("LEGACYTRACE_LAB_RELEASE")
    if not release:
        pytest.fail("LEGACYTRACE_LAB_RELEASE is not set: " + HOW_TO_RUN)
    if IN_GUEST and release != labkit.kernel_release():
        pytest.fail("guest runs {} but the harness built for {}".format(labkit.kernel_release(), release))
    return release


@pytest.fixture(scope="session")
def lab_shared() -> Path:
    """Writable from host and guest: host-phase artifacts, guest results."""
    return lab_path("LEGACYTRACE_LAB_SHARED")


@pytest.fixture(scope="session")
def lab_cache() -> Path:
    """The harness's cache (kernel, tools, stap module cache), shared into the guest."""
    return lab_path("LEGACYTRACE_LAB_CACHE")


@pytest.fixture(scope="session")
def stap_runtime() -> Path:
    """SystemTap runtime copy patched for the guest kernel; pass it as `stap -R`."""
    return lab_path("LEGACYTRACE_LAB_STAP_RUNTIME")


# --- host phase: building artifacts ---------------------------------------------

def stap_module_key(name: str, script: str, release: str, runtime: Path, options: Sequence[str]) -> str:
    """Everything that changes the compiled module."""
    version = subprocess.run(["stap", "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True).stdout.splitlines()[0]
    text = "\0".join([name, script, release, str(runtime), version] + list(options))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def compile_stap(name: str, script: str, release: str, runtime: Path, options: Sequence[str],
                 dest: Path) -> None:
    """stap -p4 against the guest kernel's headers (about 30 s), into dest atomically."""
    with tempfile.TemporaryDirectory(prefix="ltlab-stap-") as tmp:
        (Path(tmp) / "script.stp").write_text(script)
        argv = ["stap", "-p4", "-r", release, "-R", str(runtime), "-m", name] + list(options) + ["script.stp"]
        proc = subprocess.run(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail("`{}` failed:\n{}".format(" ".join(argv), proc.stdout[-3000:]), pytrace=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(str(Path(tmp) / (name + ".ko")), str(dest) + ".tmp")
        os.replace(str(dest) + ".tmp", str(dest))


@pytest.fixture
def stap_build(lab_release: str, lab_cache: Path, lab_shared: Path,
               stap_runtime: Path) -> Callable[..., Path]:
    """Host phase: build(name, script, options=("-g",)) compiles once per content hash
    (cache: LEGACYTRACE_LAB_CACHE/stap-modules) and puts NAME.ko in LEGACYTRACE_LAB_SHARED/stap/."""
    def build(name: str, script: str, options: Sequence[str] = ("-g",)) -> Path:
        key = stap_module_key(name, script, lab_release, stap_runtime, options)
        cached = lab_cache / "stap-modules" / key / (name + ".ko")
        if not cached.exists():
            compile_stap(name, script, lab_release, stap_runtime, options, cached)
        shared = lab_shared / "stap" / (name + ".ko")
        shared.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(str(cached), str(shared))
        return shared
    return build


@pytest.fixture
def stap_module(lab_shared: Path) -> Callable[[str], Path]:
    """Guest phase: the NAME.ko that a host-phase test built in this run."""
    def find(name: str) -> Path:
        path = lab_shared / "stap" / (name + ".ko")
        if not path.exists():
            pytest.fail("{} was not built in the host phase: select its host test too "
                        "(e.g. `-k stap`)".format(path), pytrace=False)
        return path
    return find


# --- guest phase: traffic, ground truth, tracefs ----------------------------------

@pytest.fixture(scope="session")
def loopback() -> None:
    """Loopback is down when the guest boots."""
    labkit.loopback_up()


class Traffic:
    """Traffic of a known shape; each call returns the Workload(s) (pid, argv, comm, dport)."""

    ping = staticmethod(labkit.ping)
    udp_closed_port = staticmethod(labkit.udp_closed_port)
    udp_open_port = staticmethod(labkit.udp_open_port)
    http_request = staticmethod(labkit.http_request)
    all = staticmethod(labkit.all_traffic)


@pytest.fixture
def traffic(loopback: None) -> Traffic:
    """Generate traffic at the moment the test chooses (after its tracer is attached)."""
    return Traffic()


@pytest.fixture
def ground_truth(loopback: None) -> Iterator[labkit.Tcpdump]:
    """tcpdump on lo, already listening; call .stop() after the traffic to get its packets."""
    with labkit.Tcpdump("lo") as capture:
        yield capture


@pytest.fixture
def trace_session() -> Iterator[labkit.TraceSession]:
    """An own tracefs instance; own kprobes are removed afterwards, nothing else is touched."""
    with labkit.TraceSession("ltlab") as session:
        yield session


@pytest.fixture(scope="session")
def skb_offsets() -> dict:
    """sk_buff member offsets of the guest kernel: from its BTF (pahole), or on a kernel without
    BTF from the table of known builds, which test_ftrace.py holds to the kernel's headers."""
    members = ["len", "protocol", "network_header", "head", "data"]
    if os.path.exists(labkit.BTF):
        return labkit.btf_offsets("sk_buff", members)
    from legacytrace.kernel import offsets
    layout = offsets.from_table(labkit.kernel_release())
    return {name: layout.field("sk_buff", name).offset for name in members}
