"""Whether a host can run SystemTap: stap, kprobes, modules, root; and to compile, the
kernel's headers and a C compiler. Pure given the host's facts."""
from legacytrace.backends.base import Availability
from legacytrace.backends.checks import answer, install_hint


def check(host, cached=0):
    """SystemTap: stap, kprobes, modules, root; and to compile, the kernel's headers and a C compiler.

    `cached` counts the modules already compiled for this release (the stap backend's
    module cache): without headers or compiler here, stap still runs those, and modules
    built elsewhere with `legacytrace build` (`trace --stap-module`) need staprun alone.
    """
    missing = []
    if not host.stap:
        missing.append("stap not installed ({})".format(install_hint(host, "systemtap")))
    kernel = []             # what no package or module built elsewhere can change
    if host.kprobes is False:
        kernel.append("kernel built without CONFIG_KPROBES")
    if host.modules is False:
        kernel.append("kernel cannot load modules (built without CONFIG_MODULES)")
    if host.lockdown in ("integrity", "confidentiality"):
        kernel.append("kernel lockdown ({}) refuses unsigned modules".format(host.lockdown))
    if kernel:
        return Availability.no("; ".join(missing + kernel))
    if not host.root:
        missing.append("loading a module needs root (run with sudo)")
    compiler = []
    if not host.kernel_build:
        compiler.append("no kernel headers for {} ({})".format(
            host.release, install_hint(host, "headers")))
    if not host.cc:
        compiler.append("no C compiler ({})".format(install_hint(host, "gcc")))
    if compiler and cached and not missing:
        return Availability.yes("stap {} runs the {} module(s) compiled before for {}, and modules "
                                "built elsewhere (--stap-module); it cannot compile new ones: {}"
                                .format(host.stap, cached, host.release, "; ".join(compiler)))
    if compiler and not missing:
        compiler.append("or build the module on a host that has them (`legacytrace build -r {} "
                        "-o lt_NAME.ko`) and run it here with `trace --stap-module lt_NAME.ko`"
                        .format(host.release))
    return answer(missing + compiler, "stap {} builds against {} with {}".format(
        host.stap, host.kernel_build, host.cc))
