"""pipeline.queries.tables on a tiny hand-made SQLite schema."""

import sqlite3

import pandas as pd
import pytest

from pipeline.errors import TrackingUnavailableError
from pipeline.queries import history, tables
from pipeline.tracking import keys
from tests.unit.queries.mini_store import CORE_SCHEMA


def test_table_counts_use_introspected_quoted_names(store):
    counts = tables.table_counts(store).set_index("table")
    assert counts.loc['odd "name" table', "rows"] == 0
    assert counts.loc["runs", "rows"] == 5
    assert counts.loc["metrics", "rows"] == 10
    assert bool(counts.loc["runs", "loaded"]) and not bool(counts.loc['odd "name" table', "loaded"])


def test_unknown_table_is_refused(store):
    with pytest.raises(KeyError):
        store.quoted("runs; DROP TABLE runs")
    assert tables.load_table(store, "model_versions").empty


def test_load_table_redacts_passwords(store):
    experiments = tables.load_table(store, "experiments")
    text = experiments.to_csv()
    assert "hunter2" not in text and "bob:***@db" in text


def test_iter_table_streams_in_chunks(store):
    chunks = list(tables.iter_table(store, "metrics", chunk_rows=3))
    assert [len(chunk) for chunk in chunks] == [3, 3, 3, 1]
    assert pd.concat(chunks)["value"].tolist() == sorted(float(k) for k in range(10))


def test_open_store_rejects_a_server_uri_without_leaking():
    with pytest.raises(TrackingUnavailableError, match="not a database URL") as caught:
        tables.open_store("http://alice:s3cret@mlflow.example:5000")
    assert "s3cret" not in str(caught.value)


def test_open_store_rejects_a_database_without_mlflow_schema(tmp_path):
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(TrackingUnavailableError, match="no MLflow tracking schema"):
        tables.open_store(f"sqlite:///{tmp_path / 'empty.db'}")


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
                (keys.TAG_STAGE, "research"),
                (keys.TAG_ROLE, "stage"),
                (keys.TAG_BEST_CANDIDATE, HOSTILE),
            ],
        )
    store = tables.open_store(f"sqlite:///{path}")
    try:
        assert tables.experiment_id(store, HOSTILE) == "7"
        assert tables.experiment_id(store, "O'Brien") == "8"
        assert history.leaderboard(store, tables.experiment_id(store, HOSTILE)).empty  # no candidates
        counts = tables.table_counts(store).set_index("table")["rows"].to_dict()
        assert counts["runs"] == 1  # the table is still there
    finally:
        store.close()
