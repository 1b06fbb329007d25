"""Locks shared by every process that uses one store: PostgreSQL advisory locks or SQLite file locks.

Kept apart from the tracking module so that tuning (which has no MLflow) can take them too.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import report


def sqlite_lock_path(database: Path, key: str) -> Path:
    """The lock file for ``key`` beside ``database``: readable, and distinct for every key."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", key)[:40]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return database.with_name(f"{database.name}.{slug}-{digest}.lock")


@contextmanager
def cross_process_lock(uri: str, key: str) -> Iterator[bool]:
    """Hold a lock named ``key`` shared by every process using the store at ``uri``.

    PostgreSQL: a transaction-level advisory lock (:func:`pipeline.report.advisory_lock`).
    SQLite: an exclusive ``flock`` on a file next to the database, one file per key. A remote
    tracking server offers no lock; yields False so the caller can say what it relies on instead.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme in ("postgresql", "postgres"):
        with report.advisory_lock(uri, key):
            yield True
        return
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        lock_path = sqlite_lock_path(Path(uri.removeprefix("sqlite:///")), key)
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    yield False
