"""``python -m pipeline db-upgrade``: back up the tracking database, then run MLflow's migration.

PostgreSQL is backed up with ``pg_dump -Fc`` (the password goes through ``PGPASSWORD``,
never the command line); SQLite with the sqlite3 backup API. No migration runs unless
the backup succeeded.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError, PipelineError, first_line
from pipeline.settings import redact, redact_uri, tracking_uri
from pipeline.tracking import store

logger = logging.getLogger(__name__)

DEFAULT_BACKUP_DIR = Path("backups")
_PG_DUMP_SEARCH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/bin", "/usr/lib/postgresql/15/bin"]
)


class MaintenanceError(PipelineError):
    kind = "db-upgrade failed"


@dataclass(frozen=True)
class UpgradeResult:
    uri: str
    from_revision: str | None
    to_revision: str
    backup: Path | None

    def describe(self) -> str:
        if self.backup is None:
            return f"{self.uri}: schema already at revision {self.to_revision}; nothing to do"
        return (
            f"{self.uri}: backed up to {self.backup}, "
            f"schema upgraded from revision {self.from_revision} to {self.to_revision}"
        )


def backup_sqlite(uri: str, destination: Path) -> Path:
    source = store.sqlite_file(uri)
    if source is None or not source.is_file():
        raise MaintenanceError(f"SQLite database file not found: {source or uri}")
    partial = destination.with_name(f".{destination.name}.partial")
    partial.unlink(missing_ok=True)
    with closing(sqlite3.connect(str(source))) as reader, closing(sqlite3.connect(partial)) as writer:
        reader.backup(writer)
    os.replace(partial, destination)
    return destination


def backup_postgres(uri: str, destination: Path) -> Path:
    pg_dump = shutil.which("pg_dump", path=_PG_DUMP_SEARCH)
    if pg_dump is None:
        raise MaintenanceError(
            "pg_dump not found on PATH or in /usr/local/bin; install the PostgreSQL client"
        )
    url = make_url(uri)
    command = [pg_dump, "--format=custom", "--no-password", f"--file={destination.name}.partial"]
    if url.host:
        command.append(f"--host={url.host}")
    if url.port:
        command.append(f"--port={url.port}")
    if url.username:
        command.append(f"--username={url.username}")
    command.append(f"--dbname={url.database}")
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)  # never on the command line, where ps would show it
    partial = destination.with_name(f"{destination.name}.partial")
    try:
        completed = subprocess.run(
            command, cwd=destination.parent, env=env, capture_output=True, text=True, timeout=3600
        )
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise MaintenanceError("pg_dump took more than an hour; no migration was run") from None
    if completed.returncode != 0:
        partial.unlink(missing_ok=True)
        reason = (completed.stderr.strip().splitlines() or ["?"])[-1]
        raise MaintenanceError(f"pg_dump failed, no migration was run: {redact(reason)}")
    os.replace(partial, destination)
    return destination


def backup_database(uri: str, backup_dir: Path) -> Path:
    """Write a backup of the tracking database into ``backup_dir``; returns its path."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    url = make_url(uri)
    name = Path(url.database or "mlflow").stem
    if store.sqlite_file(uri) is not None:
        return backup_sqlite(uri, backup_dir / f"{name}-{stamp}.sqlite")
    if store.is_postgres(uri):
        return backup_postgres(uri, backup_dir / f"{name}-{stamp}.dump")
    raise MaintenanceError(
        f"no backup method for {store.scheme(uri)}; back up by hand, then run `mlflow db upgrade`"
    )


def migrate(uri: str) -> None:
    """MLflow's own migration (``mlflow db upgrade``) on the full URI, password included."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    # Not mlflow.store.db.utils._upgrade_db(engine): it rebuilds the URL from str(engine.url),
    # which SQLAlchemy 2 renders with the password masked.
    config = _get_alembic_config(uri)
    migrator = store.engine(uri)
    try:
        with migrator.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "heads")
    finally:
        migrator.dispose()


def run(config: PipelineConfig, backup_dir: Path | None = None) -> UpgradeResult:
    """Back up the tracking database, then migrate it to the schema this MLflow needs."""
    uri = tracking_uri(config.root)
    if not store.is_database(uri):
        raise ConfigError(f"db-upgrade needs a database tracking URI, not {redact_uri(uri)}")
    store.wait_until_reachable(uri, config.tracking.connect_retries, config.tracking.connect_backoff_seconds)
    current, head = store.schema_revisions(uri)
    if current == head:
        logger.info("schema of %s already at %s", redact_uri(uri), head)
        return UpgradeResult(redact_uri(uri), current, head, None)
    target_dir = config.resolve(backup_dir or DEFAULT_BACKUP_DIR)
    backup = backup_database(uri, target_dir)
    logger.info("backed up %s to %s; migrating from %s to %s", redact_uri(uri), backup, current, head)
    try:
        migrate(uri)
    except Exception as error:
        first = first_line(error, default=type(error).__name__)
        raise MaintenanceError(f"migration failed (backup kept at {backup}): {redact(first)}") from None
    after, _ = store.schema_revisions(uri)
    return UpgradeResult(redact_uri(uri), current, after or head, backup)
