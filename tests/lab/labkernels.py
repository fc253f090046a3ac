"""The kernels the lab boots, and what building and booting for each of them needs (host side).

    6.1   Debian 12's current kernel (linux-image-amd64 of bookworm), its headers from apt
    5.10  Debian 11's current kernel (bullseye), fetched with a private apt state in the cache
    el7   CentOS 7.9's 3.10.0-1160.el7, built for the lab (LEGACYTRACE_LAB_KERNELS/el7-3.10.0-1160)

Each `prepare()` returns a `Prepared`: the release, the kernel image, the modules the guest's
initramfs must load before it can mount the host's root over 9p, and the environment under which
SystemTap builds modules for that kernel on the host. How they boot is the same for all three
(labctl.boot: QEMU -kernel with tests/lab/guest-init). Needs root: it installs Debian packages,
links /lib/modules/RELEASE/build and writes /boot/System.map-RELEASE, as kernel-devel would.
"""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

CHECKOUT = Path(__file__).resolve().parents[2]
APT_MAX_AGE = 24 * 3600
#: Modules a Debian kernel needs for the 9p root (the rest of their dependencies from modules.dep).
NINEP_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class LabError(Exception):
    """Why the lab cannot run; `console` names a guest console log worth showing."""

    def __init__(self, message: str, console: Optional[Path] = None):
        super().__init__(message)
        self.console = console


def log(message: str) -> None:
    """Progress on stderr, so the guest's pytest output stays readable on stdout."""
    print("lab: " + message, file=sys.stderr, flush=True)


def run(argv: Sequence[object], **kwargs) -> str:
    """Run a host command; on failure raise with the command and the end of its output."""
    proc = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, **kwargs)
    if proc.returncode != 0:
        raise LabError("`{}` failed ({}): {}".format(
            " ".join(map(str, argv)), proc.returncode, proc.stdout.strip()[-800:]))
    return proc.stdout


def write_atomic(path: Path, text: str) -> None:
    """Readers (a concurrent stap) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp{}".format(os.getpid()))
    tmp.write_text(text)
    os.replace(str(tmp), str(path))


def link(path: Path, target: Path) -> None:
    """Make `path` a symbolic link to `target` (replacing another link there)."""
    if path.is_symlink() and os.readlink(str(path)) == str(target):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        raise LabError("{} exists and is not a link: the lab will not replace it".format(path))
    path.symlink_to(target)


# --- Debian packages -------------------------------------------------------------------

class Apt(object):
    """apt-get and apt-cache, either the host's own (its sources) or a private state in the cache
    (a sources list of another suite): then nothing of the host's apt state changes."""

    def __init__(self, cache: Path, suite: Optional[str] = None):
        self.cache = cache
        self.suite = suite
        self.options: List[str] = []
        if suite:
            state = cache / "apt" / suite
            self.options = ["-o", "Dir::Etc::sourcelist=" + str(state / "sources.list"),
                            "-o", "Dir::Etc::sourceparts=-",
                            "-o", "Dir::State::Lists=" + str(state / "lists"),
                            "-o", "Dir::Cache=" + str(state / "cache"),
                            "-o", "APT::Get::List-Cleanup=0"]
            (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
            (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            (state / "sources.list").write_text("".join(
                "deb [signed-by={}] http://deb.debian.org/{} {} main\n".format(DEBIAN_KEYRING, archive, name)
                for archive, name in (("debian", suite), ("debian-security", suite + "-security"))))

    def get(self, *args: str, cwd: Optional[str] = None) -> str:
        """Non-interactive apt-get that waits for a concurrent apt instead of failing."""
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        return run(["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=600"] + self.options + list(args),
                   env=env, cwd=cwd)

    def update_if_stale(self, force: bool = False) -> None:
        """apt-get update at most once a day, so a new kernel is noticed without slowing every run."""
        stamp = self.cache / "apt-updated{}".format("-" + self.suite if self.suite else "")
        if not force and stamp.exists() and time.time() - stamp.stat().st_mtime < APT_MAX_AGE:
            return
        log("apt-get update" + (" ({})".format(self.suite) if self.suite else ""))
        self.get("update")
        stamp.touch()

    def depends(self, package: str) -> str:
        return run(["apt-cache"] + self.options + ["depends", package])

    def unpack(self, packages: Sequence[str], dest: Path) -> None:
        """apt-get download the packages and dpkg-deb -x them into dest (made fresh, atomically)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=str(dest.parent)) as tmp:
            os.chmod(tmp, 0o755)  # apt-get download drops privileges to _apt when it can
            self.get("download", *packages, cwd=tmp)
            for deb in sorted(Path(tmp).glob("*.deb")):
                run(["dpkg-deb", "-x", deb, Path(tmp) / "root"])
            shutil.rmtree(str(dest), ignore_errors=True)
            os.rename(str(Path(tmp) / "root"), str(dest))


def missing_packages(names: Sequence[str]) -> List[str]:
    """Packages dpkg does not list as installed."""
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"] + list(names),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    installed = {f[0] for f in map(str.split, proc.stdout.splitlines()) if f[1:2] == ["ii"]}
    return [n for n in names if n not in installed]


def ensure_packages(cache: Path, names: Sequence[str]) -> None:
    """Install what is missing on the host; quick when everything is there."""
    missing = missing_packages(names)
    if not missing:
        return
    apt = Apt(cache)
    apt.update_if_stale(force=True)
    log("installing " + " ".join(missing))
    apt.get("install", "--no-install-recommends", *missing)


# --- what a prepared kernel gives the harness ----------------------------------------------

@dataclass
class Prepared:
    """A kernel ready to boot and to build SystemTap modules for."""

    name: str
    release: str
    image: Path
    #: module files the initramfs loads, in load order (none for a kernel with 9p built in)
    modules: List[Path] = field(default_factory=list)
    #: the kernel's /lib/modules/RELEASE, shared there into the guest (None: built without modules)
    modules_dir: Optional[Path] = None
    #: where the real System.map of this kernel must come from: a file, or None (boot and save
    #: /proc/kallsyms, as for Debian kernels, which ship a placeholder)
    system_map: Optional[Path] = None
    #: directories put first in PATH when building modules for it (compiler wrappers)
    build_path: List[Path] = field(default_factory=list)

    def build_env(self, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """`env` (default os.environ) with this kernel's compiler wrappers first in PATH."""
        env = dict(os.environ if env is None else env)
        if self.build_path:
            env["PATH"] = os.pathsep.join([str(p) for p in self.build_path] + [env.get("PATH", "")])
        return env


def load_order(modules_dir: Path, wanted: Sequence[str]) -> List[Path]:
    """The .ko files of `wanted` and their dependencies (modules.dep), each after what it needs."""
    deps: Dict[str, List[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        name, _, needs = line.partition(":")
        deps[name] = needs.split()
    by_name = {Path(path).name.split(".ko")[0].replace("-", "_"): path for path in deps}
    order: List[str] = []

    def visit(path: str) -> None:
        for need in reversed(deps[path]):
            visit(need)
        if path not in order:
            order.append(path)
    for name in wanted:
        if name not in by_name:
            raise LabError("{} has no module {} (modules.dep)".format(modules_dir, name))
        visit(by_name[name])
    return [modules_dir / path for path in order]


def compiler_wrapper(cache: Path, name: str, command: str, flags: str) -> Path:
    """A folder holding an executable `name` that runs `command flags "$@"`: what a kernel's
    Makefile calls its compiler, mapped to one this host has."""
    folder = cache / "tools" / "cc-{}-{}".format(name, command)
    script = "#!/bin/sh\nexec {} {} \"$@\"\n".format(command, flags)
    path = folder / name
    if not path.exists() or path.read_text() != script:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, script)
        path.chmod(0o755)
    return folder


# --- the kernels --------------------------------------------------------------------------------

class DebianKernel(object):
    """A Debian distribution kernel: the current linux-image-amd64 of a suite, unpacked into the
    cache (never into /boot), with its headers for SystemTap."""

    def __init__(self, name: str, suite: Optional[str], compiler: Optional[str] = None):
        self.name = name
        self.suite = suite              # None: the host's own suite (bookworm) through its apt
        self.compiler = compiler        # the compiler its headers name, if the host lacks it

    def packages(self) -> List[str]:
        return ["kmod"]       # depmod

    def prepare(self, cache: Path) -> Prepared:
        apt = Apt(cache, self.suite)
        apt.update_if_stale()
        out = apt.depends("linux-image-amd64")
        m = re.search(r"Depends: linux-image-(\d+\.\d+\.\d+-\d+-amd64)$", out, re.M)
        if not m:
            raise LabError("cannot resolve Debian's kernel from `apt-cache depends linux-image-amd64`"
                           "{}: run `apt-get update` and retry".format(" (" + self.suite + ")" if self.suite else ""))
        release = m.group(1)
        kdir = cache / "kernels" / release
        image = kdir / "boot" / ("vmlinuz-" + release)
        if not image.exists():
            log("downloading linux-image-" + release)
            apt.unpack(["linux-image-" + release], kdir)
        if not (kdir / "lib" / "modules" / release / "modules.dep").exists():
            run(["depmod", "-b", kdir, release])   # the package's postinst would
        self.headers(cache, apt, release)
        modules_dir = kdir / "lib" / "modules" / release
        build_path = []
        if self.compiler:
            build_path.append(compiler_wrapper(cache, self.compiler, "gcc-12", ""))
        return Prepared(self.name, release, image, load_order(modules_dir, NINEP_MODULES),
                        modules_dir, None, build_path)

    def headers(self, cache: Path, apt: Apt, release: str) -> None:
        """linux-headers-RELEASE where `stap -r RELEASE` looks: /lib/modules/RELEASE/build."""
        if self.suite is None:
            ensure_packages(cache, ["linux-headers-" + release])
            return
        # Another suite's headers are unpacked into the cache, not installed; their Makefile
        # includes the common half by its absolute /usr/src path, which is pointed there.
        root = cache / "headers" / release
        arch = root / "usr" / "src" / ("linux-headers-" + release)
        common = root / "usr" / "src" / ("linux-headers-" + release.rsplit("-", 1)[0] + "-common")
        if not (arch / ".lab-complete").exists():
            log("downloading linux-headers-" + release)
            version = ".".join(release.split(".")[:2])
            apt.unpack(["linux-headers-" + release, common.name, "linux-kbuild-" + version], root)
            makefile = arch / "Makefile"
            makefile.write_text(makefile.read_text().replace(
                "/usr/src/" + common.name, str(common)))
            (arch / ".lab-complete").touch()
        link(Path("/lib/modules", release, "build"), arch)
        link(Path("/lib/modules", release, "source"), common)


class SharedKernel(object):
    """A kernel built for the lab and kept beside the checkout (not downloadable): its bzImage,
    System.map and a kernel-devel-like build tree (build-tree.tar.xz, unpacked into the cache).

    `compiler` is what its build tree was made with, run through a wrapper named gcc with the
    flags that build needs."""

    def __init__(self, name: str, folder: str, release: str, compiler: str, flags: str):
        self.name = name
        self.folder = folder
        self.release = release
        self.compiler = compiler
        self.flags = flags

    def packages(self) -> List[str]:
        return [self.compiler]

    def source(self) -> Path:
        """LEGACYTRACE_LAB_KERNELS/FOLDER, by default ../shared/lab-kernels beside the checkout."""
        root = Path(os.environ.get("LEGACYTRACE_LAB_KERNELS",
                                   str(CHECKOUT.parent / "shared" / "lab-kernels")))
        folder = root / self.folder
        if not (folder / "bzImage").exists():
            raise LabError("no lab kernel {} at {}: set LEGACYTRACE_LAB_KERNELS to the folder that "
                           "holds {}/".format(self.name, folder, self.folder))
        return folder

    def prepare(self, cache: Path) -> Prepared:
        source = self.source()
        kdir = cache / "kernels" / self.release
        stamp = kdir / ".lab-complete"
        wanted = "{} {}\n".format(source, (source / "build-tree.tar.xz").stat().st_mtime)
        if not stamp.exists() or stamp.read_text() != wanted:
            log("unpacking the {} kernel and its build tree into {}".format(self.name, kdir))
            shutil.rmtree(str(kdir), ignore_errors=True)
            kdir.mkdir(parents=True)
            for name in ("bzImage", "System.map", "config"):
                shutil.copy(str(source / name), str(kdir / name))
            with tarfile.open(str(source / "build-tree.tar.xz")) as tar:
                tar.extractall(str(kdir))
            stamp.write_text(wanted)
        link(Path("/lib/modules", self.release, "build"), kdir / "build")
        wrapper = compiler_wrapper(cache, "gcc", self.compiler, self.flags)
        return Prepared(self.name, self.release, kdir / "bzImage", [], None, kdir / "System.map",
                        [wrapper])


#: The lab's kernels by the name LAB_KERNEL / --kernel takes; 6.1 is the default.
KERNELS: Dict[str, Callable[[], object]] = {
    "6.1": lambda: DebianKernel("6.1", None),
    # Debian 11 builds 5.10 and names gcc-10 in its headers; bookworm has none: gcc-12 builds
    # modules that load and run there (checked in the lab).
    "5.10": lambda: DebianKernel("5.10", "bullseye", compiler="gcc-10"),
    # Built with gcc 11 (gcc 12 cannot build 3.10); DWARF 4 as gcc 4.8.5 writes, no PIE.
    "el7": lambda: SharedKernel("el7", "el7-3.10.0-1160", "3.10.0-1160.el7.x86_64", "gcc-11",
                                "-fno-pie -Wno-error -gdwarf-4"),
}
DEFAULT = "6.1"


def kernel(name: str):
    """The kernel kind called `name`, or LabError listing the names."""
    if name not in KERNELS:
        raise LabError("unknown lab kernel {!r}: choose one of {}".format(name, ", ".join(KERNELS)))
    return KERNELS[name]()
