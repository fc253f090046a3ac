"""Errors a user sees: one line that names the problem and what to do, never a traceback."""


class LegacytraceError(Exception):
    """A failure the user can act on; the CLI prints its message and exits with `exit_code`."""

    exit_code = 1


class UsageError(LegacytraceError):
    """Bad input on the command line or in a manifest (exit 2, as for any usage error)."""

    exit_code = 2


class BackendUnavailable(LegacytraceError):
    """The chosen backend cannot run here; the message says why and what would fix it."""
