"""The module cache: `stap -g -p4` compiles each distinct program once, and the module is
kept where no other user can change it, because root loads it into the kernel.

Modules are kept by content hash (script, release, runtime, stap version, options) in
`$LEGACYTRACE_STAP_CACHE`, else `$XDG_CACHE_HOME/legacytrace/stap`, else
`~/.cache/legacytrace/stap`, made 0700 with modules 0600. A cache, a cached module or a
SystemTap runtime that another user could change is refused (legacytrace.trust's rule).
"""
import collections
import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile

from legacytrace import trust, validate
from legacytrace.backends.stap.build import BUILT_NAME_RE
from legacytrace.backends.stap.parse import PROTOCOL
from legacytrace.errors import LegacytraceError, UsageError, warn

CACHE_ENV = "LEGACYTRACE_STAP_CACHE"
RUNTIME_ENV = "LEGACYTRACE_STAP_RUNTIME"
#: -D options baked into every module. A tracer must not stop itself: stap's overload
#: guard (STP_NO_OVERLOAD) would end a busy trace, and after MAXSKIPPED skipped probes
#: (default 100) the module exits; skipped probes are counted as lost events instead.
STAP_DEFINES = ("-DSTP_NO_OVERLOAD", "-DMAXSKIPPED=100000000")


def errors(lines):
    """stap's ERROR lines (else its last lines), as one line for a LegacytraceError."""
    errors = ([line for line in lines if ": error:" in line][:3]
              or [line for line in lines if "ERROR" in line or "error" in line] or lines[-3:])
    return " | ".join(line.strip() for line in errors)


def cache_dir(create=True):
    """Where compiled modules live: $LEGACYTRACE_STAP_CACHE, else ~/.cache/legacytrace/stap.

    `create` makes the missing folders 0700, after checking the folders above them, and
    refuses (trust.Untrusted) a cache another user could change: root loads its modules.
    """
    path = os.path.abspath(os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "legacytrace", "stap"))
    if create:
        missing, existing = [], path
        while not os.path.isdir(existing):
            missing.append(existing)
            existing = os.path.dirname(existing)
        unsafe = trust.problem(existing, own_below=path)
        for folder in reversed(missing if unsafe is None else ()):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        unsafe = unsafe or trust.problem(path, own_below=path)
        if unsafe:
            raise trust.Untrusted("refusing the stap module cache {}: {}: {}".format(
                path, unsafe, _CACHE_ADVICE))
    return path
#: What to do about a cache another user could change.
_CACHE_ADVICE = ("root would load kernel modules another user could have put there; fix its "
                 "permissions or set {} to a folder only you can write".format(CACHE_ENV))


def _unsafe_module(module):
    """Why the cached `module` must not be loaded, or None (its folder and it are ours)."""
    unsafe = trust.problem(module, own_below=cache_dir(create=False))
    return unsafe and "refusing the cached stap module {}: {}: {}".format(
        module, unsafe, _CACHE_ADVICE)


def cached_modules(release):
    """Paths of the cached modules compiled for `release` (KEY/NAME.ko beside NAME.stp, whose
    header names the target kernel): what this host can run without a compiler."""
    found = []
    root = cache_dir(create=False)
    wanted = " * Target kernel: {}\n".format(release)
    for key in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        folder = os.path.join(root, key)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            module = os.path.join(folder, name[:-4] + ".ko")
            if name.endswith(".stp") and os.path.isfile(module) and _script_targets(
                    os.path.join(folder, name), wanted) and not _unsafe_module(module):
                found.append(module)
    return found


def _script_targets(path, wanted):
    try:
        with open(path) as handle:
            return wanted in [next(handle, "") for _ in range(4)]
    except (IOError, OSError, UnicodeError):
        return False


def _stap_command(program, release, runtime):
    """stap's arguments (without -m and the script): -g -p4, -r, -R and the -D options."""
    release = release or program.part.release
    explicit, runtime = runtime, runtime or os.environ.get(RUNTIME_ENV)
    command = ["stap", "-g", "-p4"] + list(STAP_DEFINES)
    if release:
        command += ["-r", release if os.path.isabs(release) else validate.release(release)]
    if runtime:
        if not os.path.isdir(runtime):
            raise UsageError("SystemTap runtime {} is not a directory (stap -R)".format(runtime))
        _check_runtime(runtime, named=runtime == explicit)
        command += ["-R", os.path.abspath(runtime)]
    return command


def _check_runtime(runtime, named):
    """The runtime's C becomes the module: refuse one from the environment that another user
    could change; warn about one named with -R."""
    unsafe = _runtime_problem(runtime)
    if unsafe and named:
        warn("stap: -R {}: {}: whoever can change it writes the module's code".format(
            runtime, unsafe))
    elif unsafe:
        raise trust.Untrusted("refusing the SystemTap runtime {} of {}: {}: root would compile "
                              "code another user could have changed into a kernel module"
                              .format(runtime, RUNTIME_ENV, unsafe))


def _digest(command, text, version):
    key = json.dumps({"protocol": PROTOCOL, "command": command, "stap": version,
                      "script": text}, sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def _stap_version():
    result = call(["stap", "-V"])
    if result.returncode != 0:
        raise LegacytraceError("stap -V failed: {}: install systemtap".format(
            result.output.strip()[:200]))
    return result.output.splitlines()[0] if result.output else ""


def _compile_into(target, name, command, text):
    """stap -m NAME in a scratch directory, then move it, NAME.ko and NAME.stp, to target."""
    parent = os.path.dirname(target)
    scratch = tempfile.mkdtemp(prefix=".{}.".format(name), dir=parent)
    try:
        script = os.path.join(scratch, name + ".stp")
        with open(script, "w") as handle:
            handle.write(text)
        result = call(command + ["-m", name, script], cwd=scratch)
        if result.returncode != 0 or not os.path.isfile(os.path.join(scratch, name + ".ko")):
            raise LegacytraceError("stap could not compile the program: {}".format(
                errors(result.output.splitlines()) or "exit status {}".format(result.returncode)))
        for leftover in os.listdir(scratch):
            if leftover not in (name + ".ko", name + ".stp"):
                os.remove(os.path.join(scratch, leftover))
            else:
                os.chmod(os.path.join(scratch, leftover), 0o600)
        os.rename(scratch, target)  # atomic; a concurrent build of the same key may win
    except OSError:
        if not os.path.isdir(target):
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
_Result = collections.namedtuple("_Result", "returncode output")


def call(argv, cwd=None):
    """Run argv, stdout and stderr together; a missing program is status 127."""
    try:
        proc = subprocess.Popen([trust.program(argv[0])] + argv[1:], cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        return _Result(127, str(exc))
    output = proc.communicate()[0]
    return _Result(proc.returncode, output.decode("utf-8", "replace"))


def compile(program, release=None, runtime=None, out=None):
    """Return the path of the module for `program`, compiling it unless cached.

    `release` (a `uname -r` or a build tree, default the program's target) and
    `runtime` (a SystemTap runtime directory, default $LEGACYTRACE_STAP_RUNTIME)
    pass through as `stap -r` / `stap -R`. `out` (lt_NAME.ko) builds the module under
    that name, for `legacytrace build`, and copies it there.
    """
    name = None
    if out:
        name = os.path.basename(out)[:-3] if out.endswith(".ko") else ""
        if not BUILT_NAME_RE.fullmatch(name):
            raise UsageError("{}: name the module lt_NAME.ko, NAME of lower-case letters, "
                             "digits and _ (at most 40): SystemTap module names are C "
                             "identifiers and `legacytrace cleanup` knows ours by lt_"
                             .format(out))
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            raise UsageError("{}: there is no folder {}: create it, or write the module "
                             "elsewhere".format(out, folder))
    target = release or program.part.release or "this kernel"
    module, command = module_path(program, release, runtime, name)
    name = os.path.basename(module)[:-3]
    if not os.path.isfile(module):
        try:
            _compile_into(os.path.dirname(module), name, command, program.text)
        except LegacytraceError as exc:
            raise LegacytraceError(
                "{}; this program's module is not in the cache ({}): compile it where "
                "stap, gcc and the kernel headers for {} are, with `legacytrace build -r "
                "{} -o lt_NAME.ko`, and run it here with `trace --stap-module lt_NAME.ko`"
                .format(exc, cache_dir(), target, target))
    unsafe = _unsafe_module(module)
    if unsafe:
        raise trust.Untrusted(unsafe)
    if out:
        try:
            shutil.copyfile(module, out)
        except OSError as exc:
            raise LegacytraceError("cannot write the module to {}: {} (it is built, in {})"
                                   .format(out, exc.strerror or exc, module))
        return out
    return module


def module_path(program, release=None, runtime=None, name=None):
    """(where `program`'s module is or will be in the cache, the stap command)."""
    command = _stap_command(program, release, runtime)
    key = _digest(command + [name or ""], program.text, _stap_version())[:16]
    return os.path.join(cache_dir(), key, (name or "lt_" + key) + ".ko"), command


def ready(program, host):
    """None when this host can run `program`: a prebuilt or cached module, or headers and
    a compiler to build one; else why not."""
    if program.part.module or (host.kernel_build and host.cc):
        return None
    try:
        module = module_path(program)[0]
    except trust.Untrusted as exc:
        return str(exc)
    if os.path.isfile(module):
        return _unsafe_module(module)
    return ("this trace's module is not in the cache, and without kernel headers and a C "
            "compiler for {0} none can be compiled here: build it where they are with "
            "`legacytrace build -r {0} -o lt_NAME.ko` and run it with `trace --stap-module "
            "lt_NAME.ko`".format(host.release))


def _runtime_problem(folder):
    """Why another user could change the SystemTap runtime `folder` (its C becomes the
    module), or None: trust.problem() of it, else of the first file or folder in it that fails."""
    found = trust.problem(folder)
    if found:
        return found
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(parent, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                return "cannot check {}: {}".format(path, exc.strerror)
            if st.st_uid not in (os.geteuid(), 0):
                return "{} is owned by uid {}".format(path, st.st_uid)
            if st.st_mode & trust.WRITABLE and not stat.S_ISLNK(st.st_mode):
                return "{} is writable by group or others (mode {:04o})".format(
                    path, stat.S_IMODE(st.st_mode))
    return None
