"""pipeline.report and the pure parts of the results stage, on a tiny hand-made SQLite schema."""

import sqlite3

import pandas as pd
import pytest

from pipeline import report
from pipeline.errors import TrackingUnavailableError
from pipeline.stages import results

MS = 1_700_000_000_000

# The MLflow tables the views read, reduced to the columns they use.
CORE_SCHEMA = """
            CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT, artifact_location TEXT,
                lifecycle_stage TEXT);
            CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, name TEXT, status TEXT, start_time INTEGER,
                end_time INTEGER, lifecycle_stage TEXT, artifact_uri TEXT, experiment_id INTEGER);
            CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT, PRIMARY KEY (key, run_uuid));
            CREATE TABLE latest_metrics (key TEXT, value REAL, timestamp INTEGER, step INTEGER,
                is_nan INTEGER, run_uuid TEXT, PRIMARY KEY (key, run_uuid));
"""


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
            ("pipeline.stage", "research", "r1"),
            ("pipeline.role", "stage", "r1"),
            ("pipeline.stage", "research", "r0"),
            ("pipeline.role", "stage", "r0"),
            ("pipeline.stage", "research", "x1"),
            ("pipeline.role", "stage", "x1"),
            ("dataset.digest", "abc", "r1"),
            ("research.best_candidate", "lr", "r1"),
        ]
        for child, family in (("c1", "logistic_regression"), ("c2", "dummy")):
            tags += [
                ("mlflow.parentRunId", "r1", child),
                ("pipeline.role", "candidate", child),
                ("model.family", family, child),
                ("model.candidate", child + "-" + family, child),
            ]
        db.executemany("INSERT INTO tags VALUES (?, ?, ?)", tags)
        metrics = [
            ("cv_roc_auc_mean", 0.75, "c1"),
            ("cv_roc_auc_mean", 0.5, "c2"),
            ("cv_roc_auc_std", 0.03, "c1"),
        ]
        db.executemany("INSERT INTO latest_metrics VALUES (?, ?, 0, 0, 0, ?)", metrics)
        history = [(f"loss_{k % 2}", float(k), k, "c1", k, 0) for k in range(10)]
        db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", history)
    opened = report.open_store(f"sqlite:///{path}")
    yield opened
    opened.close()


def test_table_counts_use_introspected_quoted_names(store):
    counts = report.table_counts(store).set_index("table")
    assert counts.loc['odd "name" table', "rows"] == 0
    assert counts.loc["runs", "rows"] == 5
    assert counts.loc["metrics", "rows"] == 10
    assert bool(counts.loc["runs", "loaded"]) and not bool(counts.loc['odd "name" table', "loaded"])


def test_unknown_table_is_refused(store):
    with pytest.raises(KeyError):
        store.quoted("runs; DROP TABLE runs")
    assert report.load_table(store, "model_versions").empty


def test_load_table_redacts_passwords(store):
    experiments = report.load_table(store, "experiments")
    text = experiments.to_csv()
    assert "hunter2" not in text and "bob:***@db" in text


def test_iter_table_streams_in_chunks(store):
    chunks = list(report.iter_table(store, "metrics", chunk_rows=3))
    assert [len(chunk) for chunk in chunks] == [3, 3, 3, 1]
    assert pd.concat(chunks)["value"].tolist() == sorted(float(k) for k in range(10))


def test_leaderboard_takes_latest_finished_research_run(store):
    board = report.leaderboard(store, report.experiment_id(store, "loan-default"))
    assert board["name"].tolist() == ["c1-logistic_regression", "c2-dummy"]
    assert board["cv_roc_auc"].tolist() == [0.75, 0.5]
    assert set(board["parent_run_id"]) == {"r1"}
    assert board["test_roc_auc"].isna().all()  # no optimization run in this store


def test_run_durations_are_aggregated_per_stage(store):
    durations = report.run_durations(store, "1").set_index("stage")
    assert durations.loc["research", "runs"] == 2
    assert durations.loc["research", "finished"] == 1 and durations.loc["research", "failed"] == 1
    assert durations.loc["research", "max_seconds"] == pytest.approx(30.0)
    assert durations.loc["research", "mean_seconds"] == pytest.approx(20.0)


def test_metric_summary_aggregates_in_sql(store):
    summary = report.metric_summary(store).set_index("key")
    assert summary.loc["loss_0", "rows"] == 5 and summary.loc["loss_0", "runs"] == 1
    assert summary.loc["loss_1", "max"] == 9.0 and summary.loc["loss_0", "mean"] == pytest.approx(4.0)


def test_lineage_without_later_stages(store):
    lineage = report.lineage(store, "1")
    assert lineage["step"].tolist() == ["dataset", "research"]
    assert lineage.loc[1, "run_id"] == "r1" and lineage.loc[0, "dataset_digest"] == "abc"


def test_views_are_empty_when_registry_tables_are_absent(store):
    assert report.champion_history(store, "loan-default-classifier").empty
    assert report.trials(store, "1").empty
    assert report.gate_decisions(store, "1").empty


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_sqlalchemy_url(uri, expected):
    assert report.sqlalchemy_url(uri) == expected


def test_open_store_rejects_a_server_uri_without_leaking():
    with pytest.raises(TrackingUnavailableError, match="not a database URI") as caught:
        report.open_store("http://alice:s3cret@mlflow.example:5000")
    assert "s3cret" not in str(caught.value)


def test_open_store_rejects_a_database_without_mlflow_schema(tmp_path):
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(TrackingUnavailableError, match="no MLflow tracking schema"):
        report.open_store(f"sqlite:///{tmp_path / 'empty.db'}")


def test_champion_of_and_summary_handle_empty_views():
    history = pd.DataFrame(
        {
            "name": ["m", "m"],
            "version": [2, 1],
            "aliases": ["champion", "previous"],
            "test_roc_auc": [0.8, None],
        }
    )
    assert results.champion_of(history)["version"] == 2
    assert results.champion_of(history.assign(aliases="")) is None
    empty = pd.DataFrame()
    views = results.Views(
        leaderboard=pd.DataFrame(columns=report.LEADERBOARD_COLUMNS),
        champion_history=empty,
        gate_decisions=empty,
        run_durations=empty,
        lineage=empty,
        trials=empty,
        metric_summary=empty,
        registered_models=empty,
    )
    counts = pd.DataFrame({"table": ["runs", "spans"], "rows": [0, 0], "loaded": [True, False]})
    text = results.summary_markdown("sqlite:///x", "loan-default", counts, views, None)
    assert "No research run" in text and "No version holds" in text and "No register run" in text
    assert "| runs" in text and "1 other tables" in text


HOSTILE = "O'Brien\\\"; DROP TABLE runs; -- %_*"


def test_hostile_names_and_tag_values_are_bound_not_spliced(tmp_path):
    path = tmp_path / "hostile.db"
    with sqlite3.connect(path) as db:
        db.executescript(CORE_SCHEMA)
        db.execute("INSERT INTO experiments VALUES (7, ?, '/tmp', 'active')", (HOSTILE,))
        db.execute("INSERT INTO experiments VALUES (8, 'O''Brien', '/tmp', 'active')")  # a look-alike decoy
        db.execute(
            "INSERT INTO runs VALUES ('r1', ?, 'FINISHED', 1, 2, 'active', 'file:///a', 7)", (HOSTILE,)
        )
        db.executemany(
            "INSERT INTO tags VALUES (?, ?, 'r1')",
            [
                ("pipeline.stage", "research"),
                ("pipeline.role", "stage"),
                ("research.best_candidate", HOSTILE),
            ],
        )
    store = report.open_store(f"sqlite:///{path}")
    try:
        assert report.experiment_id(store, HOSTILE) == "7"
        assert report.experiment_id(store, "O'Brien") == "8"
        assert report.leaderboard(store, report.experiment_id(store, HOSTILE)).empty  # no candidates
        counts = report.table_counts(store).set_index("table")["rows"].to_dict()
        assert counts["runs"] == 1  # the table is still there
    finally:
        store.close()
