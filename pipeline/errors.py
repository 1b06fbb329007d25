"""Errors that end a command with a clear one-line message instead of a traceback."""

from __future__ import annotations


def first_line(error: BaseException, default: str = "?") -> str:
    """The first line of an error's message; the driver's own message when SQLAlchemy wraps one."""
    return (str(getattr(error, "orig", None) or error).strip().splitlines() or [default])[0]


class PipelineError(Exception):
    """A problem the user can fix; the command prints it on one line and exits."""

    exit_code = 2
    kind = "error"

    def __str__(self) -> str:
        # One line, whatever the underlying message held.
        return " ".join(super().__str__().split())


class ConfigError(PipelineError):
    kind = "config error"


class DataError(PipelineError):
    kind = "data error"


class TrackingUnavailableError(PipelineError):
    kind = "tracking store unreachable"


class LookupFailedError(PipelineError):
    """A run, model or version the stage needs is missing or does not match."""

    kind = "lookup error"


class ModelSecurityError(PipelineError):
    kind = "untrusted model"


class SchemaOutdatedError(PipelineError):
    """The tracking database was created by an older MLflow and needs a migration."""

    kind = "tracking schema outdated"


class ServingError(PipelineError):
    """The scoring server did not start, or stopped answering."""

    kind = "scoring server failed"


class DeployError(PipelineError):
    """A version failed its smoke test, or ``@production`` moved under a deploy: nothing was moved."""

    kind = "deploy failed"


class AuthenticationFailedError(PipelineError):
    """The tracking server refused the credentials (HTTP 401)."""

    kind = "authentication failed"


class PermissionDeniedError(PipelineError):
    """The tracking server knows the user but refuses the operation (HTTP 403)."""

    kind = "permission denied"
