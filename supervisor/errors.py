"""Errors a user can act on: one line naming the culprit, and the exit status to use."""

from supervisor.const import EXIT_CONFIG, EXIT_ERROR


class UserError(Exception):
    """An error reported as a single line without a traceback."""

    exit_code = EXIT_ERROR


class ConfigError(UserError):
    exit_code = EXIT_CONFIG


def describe_os_error(exc: OSError) -> str:
    """A file-system failure in one line, naming the file."""
    return f"{exc.filename or 'state_dir'}: {exc.strerror or exc}"
