"""Errors a user sees: one line that names the problem and what to do, never a traceback;
and warnings: one line about what goes on without a part of what was asked."""
import sys


class LegacytraceError(Exception):
    """A failure the user can act on; the CLI prints its message and exits with `exit_code`."""

    exit_code = 1


class UsageError(LegacytraceError):
    """Bad input on the command line or in a manifest (exit 2, as for any usage error)."""

    exit_code = 2


class BackendUnavailable(LegacytraceError):
    """The chosen backend cannot run here; the message says why and what would fix it."""


def warn(message):
    """One warning line on stderr, as every part of legacytrace words it."""
    sys.stderr.write("legacytrace: warning: {}\n".format(message))
