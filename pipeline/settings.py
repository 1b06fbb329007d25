"""Settings that come only from the environment: the tracking URI, data credentials, Optuna's store."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DATA_URL_ENV = "PIPELINE_DATA_URL"
ARTIFACT_ROOT_ENV = "PIPELINE_ARTIFACT_ROOT"
REQUIRE_POSTGRES_ENV = "PIPELINE_REQUIRE_POSTGRES"
OPTUNA_URL_ENV = "PIPELINE_OPTUNA_URL"

DEFAULT_SQLITE_NAME = "mlflow.db"

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]+:)(?P<secret>[^@\s]+)(?P<tail>@)")


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store under ``root``."""
    uri = os.environ.get(TRACKING_URI_ENV, "").strip()
    return uri or f"sqlite:///{(root / DEFAULT_SQLITE_NAME).resolve()}"


def artifact_root_override() -> str | None:
    return os.environ.get(ARTIFACT_ROOT_ENV, "").strip() or None


def data_url() -> str | None:
    return os.environ.get(DATA_URL_ENV, "").strip() or None


def ci_run_url() -> str | None:
    """The CI run this process belongs to (GitHub Actions' run page), when there is one."""
    parts = [
        os.environ.get(name, "").strip()
        for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    ]
    return f"{parts[0]}/{parts[1]}/actions/runs/{parts[2]}" if all(parts) else None


def optuna_url() -> str | None:
    """Where Optuna keeps its studies when not beside the tracking store."""
    return os.environ.get(OPTUNA_URL_ENV, "").strip() or None


@contextmanager
def temporary_environment(**values: str) -> Iterator[None]:
    """Set environment variables for the ``with`` block (child processes inherit them), then restore."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def redact(text: str) -> str:
    """Mask the password of every URL inside ``text`` (shown as three asterisks after the user)."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", text)


def redact_uri(uri: str) -> str:
    """A URI safe to print or log."""
    try:
        url = make_url(uri)
    except Exception:  # not an SQLAlchemy URL (http://, file:, ...)
        return redact(uri)
    return url.render_as_string(hide_password=True) if url.password else uri
