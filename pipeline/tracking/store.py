"""The tracking store as a database or a server: what a URI is, engines, reachability, the schema
revision, cross-process locks, and what a lost connection looks like.

Every decision that depends on the kind of store is made here, so the rest of the pipeline never
parses a URI scheme or creates an engine of its own. No MLflow import at module level: tuning and
data loading use this module without paying for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.errors import (
    AuthenticationFailedError,
    PermissionDeniedError,
    PipelineError,
    SchemaOutdatedError,
    TrackingUnavailableError,
    first_line,
)
from pipeline.settings import (
    TRACKING_PASSWORD_ENV,
    TRACKING_TOKEN_ENV,
    TRACKING_USERNAME_ENV,
    redact,
    redact_uri,
    tracking_token_set,
    tracking_username,
)

logger = logging.getLogger(__name__)

DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "postgres", "mysql", "mssql"})
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
# Stores MLflow reaches over HTTP: a tracking server, Databricks, Azure ML.
SERVER_SCHEMES = frozenset({"http", "https", "databricks", "azureml"})
UI_MODEL_TRAINING_VIEW = "workflowType=machine_learning"
CONNECT_TIMEOUT_SECONDS = 5
LOCK_TIMEOUT_SECONDS = 120.0

# Messages of a store that went away (PostgreSQL/psycopg2, SQLAlchemy, an HTTP server).
_CONNECTION_LOST = re.compile(
    r"server closed the connection|connection refused|terminating connection|could not connect"
    r"|connection (?:is |was |already )?closed|no connection to the server|connection reset"
    r"|the database system is (?:shutting down|starting up|in recovery mode)|ssl connection has been closed"
    r"|max retries exceeded|failed to establish a new connection|connection timed out",
    re.IGNORECASE,
)
# "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200": the call refused.
_REFUSED_ENDPOINT = re.compile(r"endpoint /\S*?/mlflow/(?P<call>\S+) failed with error code (?P<code>\d{3})")
_SCHEMA_OUTDATED = re.compile(r"found version (?P<found>\S+), but expected (?P<expected>[^\s).]+)")


# --- What a URI is ----------------------------------------------------------------------------------


def scheme(uri: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql``; ``http://...`` -> ``http``."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower()


def is_database(uri: str) -> bool:
    """A database URL that SQLAlchemy (and MLflow's SQL store) opens directly."""
    return scheme(uri) in DATABASE_SCHEMES


def is_postgres(uri: str) -> bool:
    return scheme(uri) in POSTGRES_SCHEMES


def is_server(uri: str) -> bool:
    """A store MLflow talks to over HTTP (its REST API), never a database we may open."""
    return scheme(uri) in SERVER_SCHEMES


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """A page of MLflow's UI on a tracking server (None for other stores), without credentials.

    MLflow 3.17's UI opens an experiment in its GenAI view unless the link asks for the model
    training view (``workflowType=machine_learning``); the experiment's kind tag alone does not.
    """
    if scheme(uri) not in {"http", "https"}:
        return None
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    base = urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/{page}?{UI_MODEL_TRAINING_VIEW}"


def is_local_location(location: str) -> bool:
    """An artifact location on this machine's disk (a path or a ``file:`` URI)."""
    return urllib.parse.urlsplit(location).scheme in {"", "file"}


def sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI; None for any other URI or an in-memory database."""
    if scheme(uri) != "sqlite" or not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        return None
    return Path(uri.removeprefix("sqlite:///"))


def sqlalchemy_url(uri: str) -> str:
    """The SQLAlchemy URL of a database URI (``postgresql://`` gets the psycopg2 driver)."""
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri.removeprefix(prefix)
    return uri


def engine_options(uri: str, **options: Any) -> dict[str, Any]:
    """Keyword arguments for ``create_engine``: the one connect timeout, merged with ``options``."""
    connect_args = dict(options.pop("connect_args", {}))
    if is_postgres(uri):
        connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    return {"connect_args": connect_args, **options}


def engine(uri: str, **options: Any) -> sa.engine.Engine:
    """A SQLAlchemy engine for a database URI; the caller disposes of it."""
    return sa.create_engine(sqlalchemy_url(uri), **engine_options(uri, **options))


# --- Reachability -----------------------------------------------------------------------------------


def _probe_database(uri: str) -> None:
    folder = sqlite_file(uri)
    if folder is not None and not folder.parent.is_dir():
        raise OSError(f"folder {folder.parent} does not exist")
    probe = engine(uri)
    try:
        with probe.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    finally:
        probe.dispose()


def _probe_server(uri: str) -> None:
    if scheme(uri) not in {"http", "https"}:
        return  # Databricks and Azure ML URIs name a workspace, not a host: the first call tells
    with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=CONNECT_TIMEOUT_SECONDS):
        pass  # MLflow serves /health without authentication


def wait_until_reachable(uri: str, retries: int, backoff_seconds: float) -> None:
    """Connect to the store, retrying with exponential back-off; raise a one-line error."""
    probe = _probe_database if is_database(uri) else _probe_server
    for attempt in range(retries + 1):
        try:
            probe(uri)
            return
        except Exception as error:  # any driver's connection error
            reason = first_line(error)
            if attempt == retries:
                raise TrackingUnavailableError(
                    f"cannot reach {redact_uri(uri)} after {retries + 1} attempt(s): {redact(reason)}"
                ) from None
            delay = backoff_seconds * 2**attempt
            logger.info("tracking store not reachable (%s); retrying in %.1f s", redact(reason), delay)
            time.sleep(delay)


# --- Schema revision --------------------------------------------------------------------------------


def expected_schema_revision() -> str:
    """The alembic revision this MLflow's tracking schema is at."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def schema_revision(uri: str) -> str | None:
    """The revision a tracking database is at; None for a new, empty database or a server.

    Reads alembic's bookkeeping without creating MLflow's tables, so a check of an empty or
    out-of-date database leaves it as it was.
    """
    from mlflow.store.db.utils import _get_schema_version

    if not is_database(uri):
        return None
    reader = engine(uri)
    try:
        return _get_schema_version(reader)
    except sa.exc.SQLAlchemyError as error:
        if (lost := connection_lost_error(error, uri)) is not None:
            raise lost from error
        raise
    finally:
        reader.dispose()


def schema_revisions(uri: str) -> tuple[str | None, str]:
    """``(revision the database is at, revision this MLflow needs)``; the first is None for a server."""
    return schema_revision(uri), expected_schema_revision()


def check_schema_revision(uri: str) -> None:
    """Refuse a tracking database at another schema revision than this MLflow's, before MLflow opens it.

    MLflow itself migrates an existing database silently when a newer revision added
    tables, with no backup; checking first makes every upgrade go through ``db-upgrade``.
    A new, empty database (no revision yet) is left to MLflow to create.
    """
    import mlflow
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    current = schema_revision(uri)
    if current is None:
        return
    script = ScriptDirectory.from_config(_get_alembic_config(""))
    (head,) = script.get_heads()
    if current == head:
        return
    known = {revision.revision for revision in script.walk_revisions()}
    if current not in known:
        raise SchemaOutdatedError(
            f"tracking database {redact_uri(uri)} schema is at revision {current}, unknown to this "
            f"MLflow {mlflow.__version__} (it needs {head}): a newer MLflow migrated it; upgrade MLflow"
        )
    raise SchemaOutdatedError(
        f"tracking database {redact_uri(uri)} schema is at revision {current}, "
        f"this MLflow needs {head}: back up and run `python -m pipeline db-upgrade`"
    )


def migrate_schema(uri: str) -> None:
    """MLflow's own migration (``mlflow db upgrade``) on the full URI, password included."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    # Not mlflow.store.db.utils._upgrade_db(engine): it rebuilds the URL from str(engine.url),
    # which SQLAlchemy 2 renders with the password masked.
    config = _get_alembic_config(uri)
    migrator = engine(uri)
    try:
        with migrator.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "heads")
    finally:
        migrator.dispose()


def raise_if_schema_outdated(error: BaseException, uri: str) -> None:
    """Turn MLflow's out-of-date schema error into a one-line :class:`SchemaOutdatedError`."""
    match = _SCHEMA_OUTDATED.search(str(error))
    if match is None:
        return
    raise SchemaOutdatedError(
        f"tracking database {redact_uri(uri)} schema is at revision {match['found']}, "
        f"this MLflow needs {match['expected']}: back up and run `python -m pipeline db-upgrade`"
    ) from None


# --- Cross-process locks ----------------------------------------------------------------------------


def sqlite_lock_path(database: Path, key: str) -> Path:
    """The lock file for ``key`` beside ``database``: readable, and distinct for every key."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", key)[:40]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return database.with_name(f"{database.name}.{slug}-{digest}.lock")


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (Python's ``hash`` differs between processes)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(uri: str, key: str, timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold a PostgreSQL transaction-level advisory lock on ``key`` for the ``with`` block.

    ``pg_advisory_xact_lock`` waits for the lock and frees it when the transaction ends:
    on leaving the block, or when the process dies and its connection drops, so a crash
    never leaves the lock held. Raises TrackingUnavailableError after ``timeout_seconds``.
    """
    holder = engine(uri, poolclass=sa.pool.NullPool)
    try:
        with holder.connect() as connection, connection.begin():
            connection.execute(
                sa.text("SELECT set_config('lock_timeout', :ms, true)"),
                {"ms": str(int(timeout_seconds * 1000))},
            )
            try:
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(key)})
            except sa.exc.OperationalError as error:
                reason = redact(first_line(error))
                raise TrackingUnavailableError(
                    f"could not take the lock {key!r} within {timeout_seconds:g} s: {reason}"
                ) from None
            yield
    finally:
        holder.dispose()


@contextmanager
def cross_process_lock(uri: str, key: str) -> Iterator[bool]:
    """Hold a lock named ``key`` shared by every process using the store at ``uri``.

    PostgreSQL: a transaction-level advisory lock. SQLite: an exclusive ``flock`` on a file next
    to the database, one file per key. Any other store (a tracking server) offers no lock: yields
    False, so the caller can say what it relies on instead.
    """
    if is_postgres(uri):
        with advisory_lock(uri, key):
            yield True
        return
    database = sqlite_file(uri)
    if database is not None:
        with sqlite_lock_path(database, key).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    yield False


# --- A lost connection ------------------------------------------------------------------------------


def _error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _store_error(error: BaseException) -> bool:
    if isinstance(error, (sa.exc.SQLAlchemyError, ConnectionError)):
        return True
    if type(error).__module__.split(".")[0] in {"psycopg2", "psycopg", "requests", "urllib3"}:
        return True
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return False
    return isinstance(error, MlflowException)


def is_connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) says the tracking store's connection went away."""
    for link in _error_chain(error):
        if isinstance(link, sa.exc.DBAPIError) and link.connection_invalidated:
            return True
        if _store_error(link) and _CONNECTION_LOST.search(str(link)):
            return True
    return False


def connection_lost_error(
    error: BaseException, uri: str = "", run_id: str | None = None, marked: bool = False
) -> TrackingUnavailableError | None:
    """The one-line error for a lost store connection, or None when ``error`` is something else."""
    if not is_connection_lost(error):
        return None
    messages = (str(link).strip() for link in _error_chain(error))
    cause = next((m for m in messages if _CONNECTION_LOST.search(m)), str(error))
    line = next((part.strip() for part in cause.splitlines() if _CONNECTION_LOST.search(part)), cause)
    line = re.sub(r"^\([\w.]+\)\s*", "", line)  # "(psycopg2.OperationalError) ..." -> the message
    store = f" {redact_uri(uri)}" if uri else ""
    return TrackingUnavailableError(
        f"lost the tracking store{store}: {redact(line)[:300]}{_run_outcome(run_id, marked)}"
    )


# --- A refused request ------------------------------------------------------------------------------


def _who() -> str:
    if tracking_token_set():
        return f"the token in {TRACKING_TOKEN_ENV}"
    user = tracking_username()
    return f"user {user!r}" if user else "an anonymous client"


def _run_outcome(run_id: str | None, marked: bool) -> str:
    if run_id is None:
        return ""
    return (
        f"; run {run_id} marked FAILED"
        if marked
        else f"; run {run_id} left RUNNING, the next start marks it FAILED"
    )


def access_error(
    error: BaseException, uri: str = "", run_id: str | None = None, marked: bool = False
) -> PipelineError | None:
    """The one-line error for a tracking server that refused the credentials (401) or the operation
    (403), or None when ``error`` is something else. Names the user, never the password or token."""
    for link in _error_chain(error):
        code = getattr(link, "error_code", "")
        match = _REFUSED_ENDPOINT.search(str(link))
        status = match["code"] if match else ""
        store = redact_uri(uri) if uri else "the tracking server"
        if code == "UNAUTHENTICATED" or status == "401":
            if tracking_token_set() or tracking_username():
                reason = f"{store} refused the credentials of {_who()}"
            else:
                reason = (
                    f"{store} asks for credentials: set {TRACKING_USERNAME_ENV} and {TRACKING_PASSWORD_ENV} "
                    f"(or {TRACKING_TOKEN_ENV})"
                )
            return AuthenticationFailedError(reason + _run_outcome(run_id, marked))
        if code == "PERMISSION_DENIED" or status == "403":
            call = f"call {match['call']}" if match else redact(first_line(link))
            return PermissionDeniedError(
                f"{_who()} may not {call} on {store}; ask its admin for the permission"
                + _run_outcome(run_id, marked)
            )
    return None


def store_error(
    error: BaseException, uri: str = "", run_id: str | None = None, marked: bool = False
) -> PipelineError | None:
    """The one-line error for a store that went away or refused us; None for any other error."""
    return connection_lost_error(error, uri, run_id, marked) or access_error(error, uri, run_id, marked)
