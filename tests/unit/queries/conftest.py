"""A miniature MLflow-shaped SQLite database for the SQL tests."""

import sqlite3

import pytest

from pipeline.queries import tables
from pipeline.tracking import keys
from tests.unit.queries.mini_store import CORE_SCHEMA, MS


@pytest.fixture
def store(tmp_path):
    """A miniature MLflow-shaped database: two stage runs, one candidate, an odd extra table."""
    path = tmp_path / "mini.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            CORE_SCHEMA
            + """
            CREATE TABLE metrics (key TEXT, value REAL, timestamp INTEGER, run_uuid TEXT, step INTEGER,
                is_nan INTEGER);
            CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT, PRIMARY KEY (key, run_uuid));
            CREATE TABLE "odd ""name"" table" (x INTEGER);
            """
        )
        db.execute(
            "INSERT INTO experiments VALUES (1, 'loan-default', "
            "'s3://bucket/x?u=postgresql://bob:hunter2@db:5432/m', 'active')"
        )
        db.execute("INSERT INTO experiments VALUES (2, 'other', '/tmp', 'active')")
        runs = [
            ("r1", "research-1", "FINISHED", MS, MS + 10_000, 1),
            ("c1", "lr", "FINISHED", MS + 1, MS + 2_000, 1),
            ("c2", "dummy", "FINISHED", MS + 2, MS + 1_000, 1),
            ("r0", "research-0", "FAILED", MS - 50_000, MS - 20_000, 1),
            ("x1", "elsewhere", "FINISHED", MS + 5, MS + 6, 2),
        ]
        db.executemany(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, 'active', 'file:///a', ?)",
            runs,
        )
        tags = [
            (keys.TAG_STAGE, "research", "r1"),
            (keys.TAG_ROLE, "stage", "r1"),
            (keys.TAG_STAGE, "research", "r0"),
            (keys.TAG_ROLE, "stage", "r0"),
            (keys.TAG_STAGE, "research", "x1"),
            (keys.TAG_ROLE, "stage", "x1"),
            (keys.TAG_DATASET_DIGEST, "abc", "r1"),
            (keys.TAG_BEST_CANDIDATE, "lr", "r1"),
        ]
        for child, family in (("c1", "logistic_regression"), ("c2", "dummy")):
            tags += [
                (keys.TAG_PARENT_RUN, "r1", child),
                (keys.TAG_ROLE, "candidate", child),
                (keys.TAG_FAMILY, family, child),
                (keys.TAG_CANDIDATE, child + "-" + family, child),
            ]
        db.executemany("INSERT INTO tags VALUES (?, ?, ?)", tags)
        metrics = [
            ("cv_roc_auc_mean", 0.75, "c1"),
            ("cv_roc_auc_mean", 0.5, "c2"),
            ("cv_roc_auc_std", 0.03, "c1"),
        ]
        db.executemany("INSERT INTO latest_metrics VALUES (?, ?, 0, 0, 0, ?)", metrics)
        metric_history = [(f"loss_{k % 2}", float(k), k, "c1", k, 0) for k in range(10)]
        db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", metric_history)
    opened = tables.open_store(f"sqlite:///{path}")
    yield opened
    opened.close()
