"""``python -m pipeline db-upgrade``: back up the tracking database, then run MLflow's migration.

PostgreSQL is backed up with ``pg_dump -Fc`` (the password goes through ``PGPASSWORD``,
never the command line); SQLite with the sqlite3 backup API. No migration runs unless
the backup succeeded.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from pipeline import pgtools
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError, PipelineError, first_line
from pipeline.settings import redact, redact_uri, tracking_uri
from pipeline.tracking import store

logger = logging.getLogger(__name__)

DEFAULT_BACKUP_DIR = Path("backups")


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
    partial = destination.with_name(f"{destination.name}.partial")
    try:
        pgtools.run("pg_dump", uri, ["--format=custom", f"--file={partial.name}"], cwd=destination.parent)
    except pgtools.PostgresToolError as error:
        partial.unlink(missing_ok=True)
        raise MaintenanceError(f"{error}; no migration was run") from None
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
        store.migrate_schema(uri)
    except Exception as error:
        first = first_line(error, default=type(error).__name__)
        raise MaintenanceError(f"migration failed (backup kept at {backup}): {redact(first)}") from None
    after, _ = store.schema_revisions(uri)
    return UpgradeResult(redact_uri(uri), current, after or head, backup)
