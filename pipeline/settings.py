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
# The tracking server's own database, for the results stage to read by SQL instead of the server's API.
STORE_DB_URL_ENV = "PIPELINE_STORE_DB_URL"
# MLflow reads these itself to authenticate to a tracking server; we only name and mask them.
TRACKING_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
TRACKING_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
TRACKING_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
SECRET_ENVS = (TRACKING_PASSWORD_ENV, TRACKING_TOKEN_ENV)
# A secret shorter than this is not masked inside other text (it would mask ordinary words).
_MIN_MASKED_SECRET = 4

DEFAULT_SQLITE_NAME = "mlflow.db"

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]+:)(?P<secret>[^@\s]+)(?P<tail>@)")
# An HTTP Authorization header as a log or an error may echo it: "Authorization: Basic dXNlcjpwdw==".
_AUTHORIZATION = re.compile(
    r"(?P<head>\bauthorization['\"]?\s*[:=]\s*['\"]?(?:basic|bearer)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE
)


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store under ``root``."""
    uri = os.environ.get(TRACKING_URI_ENV, "").strip()
    return uri or f"sqlite:///{(root / DEFAULT_SQLITE_NAME).resolve()}"


def artifact_root_override() -> str | None:
    return os.environ.get(ARTIFACT_ROOT_ENV, "").strip() or None


def data_url() -> str | None:
    return os.environ.get(DATA_URL_ENV, "").strip() or None


def optuna_url() -> str | None:
    """Where Optuna keeps its studies when not beside the tracking store."""
    return os.environ.get(OPTUNA_URL_ENV, "").strip() or None


def store_db_url() -> str | None:
    """The database behind a tracking server, when the results stage may read it directly."""
    return os.environ.get(STORE_DB_URL_ENV, "").strip() or None


def tracking_username() -> str | None:
    return os.environ.get(TRACKING_USERNAME_ENV, "").strip() or None


def tracking_token_set() -> bool:
    return bool(os.environ.get(TRACKING_TOKEN_ENV, "").strip())


def run_user() -> str:
    """Who runs the pipeline, as runs record it: the tracking server's user, the CI actor or the login."""
    import getpass

    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        login = "unknown"
    return tracking_username() or os.environ.get("GITHUB_ACTOR", "").strip() or login


def ci_run_url() -> str | None:
    """The page of the GitHub Actions run this process belongs to, if any."""
    server, repository, run_id = (
        os.environ.get(name, "").strip()
        for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    )
    if not (server and repository and run_id):
        return None
    attempt = os.environ.get("GITHUB_RUN_ATTEMPT", "").strip()
    return f"{server}/{repository}/actions/runs/{run_id}" + (f"/attempts/{attempt}" if attempt else "")


def ci_repository_url() -> str | None:
    server, repository = (
        os.environ.get(name, "").strip() for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY")
    )
    return f"{server}/{repository}" if server and repository else None


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
    """Mask the password of every URL inside ``text`` (shown as three asterisks after the user), an
    HTTP ``Basic``/``Bearer`` credential, and the tracking server's password or token wherever they appear."""
    text = _AUTHORIZATION.sub(r"\g<head>***", _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", text))
    for name in SECRET_ENVS:
        secret = os.environ.get(name, "")
        if len(secret) >= _MIN_MASKED_SECRET and secret in text:
            text = text.replace(secret, "***")
    return text


def redact_uri(uri: str) -> str:
    """A URI safe to print or log."""
    try:
        url = make_url(uri)
    except Exception:  # not an SQLAlchemy URL (http://, file:, ...)
        return redact(uri)
    return url.render_as_string(hide_password=True) if url.password else uri
