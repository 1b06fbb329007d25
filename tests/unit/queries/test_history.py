"""pipeline.queries.history on a tiny hand-made SQLite schema."""

import pytest

from pipeline.queries import history, tables
from tests.unit.queries.mini_store import CORE_SCHEMA


def test_leaderboard_takes_latest_finished_research_run(store):
    board = history.leaderboard(store, tables.experiment_id(store, "loan-default"))
    assert board["name"].tolist() == ["c1-logistic_regression", "c2-dummy"]
    assert board["cv_roc_auc"].tolist() == [0.75, 0.5]
    assert set(board["parent_run_id"]) == {"r1"}
    assert board["test_roc_auc"].isna().all()  # no optimization run in this store


def test_run_durations_are_aggregated_per_stage(store):
    durations = history.run_durations(store, "1").set_index("stage")
    assert durations.loc["research", "runs"] == 2
    assert durations.loc["research", "finished"] == 1 and durations.loc["research", "failed"] == 1
    assert durations.loc["research", "max_seconds"] == pytest.approx(30.0)
    assert durations.loc["research", "mean_seconds"] == pytest.approx(20.0)


def test_metric_summary_aggregates_in_sql(store):
    summary = history.metric_summary(store).set_index("key")
    assert summary.loc["loss_0", "rows"] == 5 and summary.loc["loss_0", "runs"] == 1
    assert summary.loc["loss_1", "max"] == 9.0 and summary.loc["loss_0", "mean"] == pytest.approx(4.0)


def test_lineage_without_later_stages(store):
    lineage = history.lineage(store, "1")
    assert lineage["step"].tolist() == ["dataset", "research"]
    assert lineage.loc[1, "run_id"] == "r1" and lineage.loc[0, "dataset_digest"] == "abc"


def test_views_are_empty_when_registry_tables_are_absent(store):
    assert history.champion_history(store, "loan-default-classifier").empty
    assert history.trials(store, "1").empty
    assert history.gate_decisions(store, "1").empty


def test_alias_history_reads_the_moves_recorded_as_registered_model_tags(tmp_path):
    import sqlite3

    from pipeline.tracking import keys
    from pipeline.tracking.alias_history import AliasMove

    moves = [
        AliasMove("2026-01-01T00:00:00+00:00", "champion", None, "1", "register", "promoted", "c1"),
        AliasMove("2026-01-02T00:00:00+00:00", "production", None, "1", "deploy", "smoke test passed", "c2"),
    ]
    rows = [(*move.tag(), "m") for move in moves]
    rows += [
        (*AliasMove("2026-01-03T00:00:00+00:00", "champion", None, "4", "register", "x", "c").tag(), "other"),
        ("owner", "team", "m"),
        # "_" is a LIKE wildcard: a look-alike key must not be read as a move.
        (keys.RMTAG_ALIAS_MOVE_PREFIX.replace("_", "X") + "20260101", moves[0].tag()[1], "m"),
    ]
    path = tmp_path / "registry.db"
    with sqlite3.connect(path) as db:
        db.executescript(CORE_SCHEMA)
        db.execute(
            "CREATE TABLE registered_model_tags (key TEXT, value TEXT, name TEXT, PRIMARY KEY (key, name))"
        )
        db.executemany("INSERT INTO registered_model_tags VALUES (?, ?, ?)", rows)
    store = tables.open_store(f"sqlite:///{path}")
    try:
        frame = history.alias_history(store, "m")
        everything = history.alias_history(store, None)
    finally:
        store.close()
    assert frame["alias"].tolist() == ["production", "champion"]  # newest first
    assert frame["actor"].tolist() == ["deploy", "register"]
    assert set(frame["name"]) == {"m"}
    assert frame.loc[0, "time"].year == 2026
    assert sorted(everything["name"].unique()) == ["m", "other"]
    assert len(everything) == 3


def test_monitor_results_keep_the_latest_run_per_version(store):
    import sqlite3

    from pipeline.tracking import keys
    from tests.unit.queries.mini_store import MS

    path = store.safe_uri.removeprefix("sqlite:///")
    assert history.monitor_results(store, "1").empty
    with sqlite3.connect(path) as db:
        for run_id, version, reading, psi, start in (
            ("m1", "1", "stable", 0.02, 100),
            ("m2", "1", "shifted", 0.31, 200),  # the latest for version 1
            ("m3", "2", "watch", 0.12, 150),
        ):
            db.execute("INSERT INTO runs VALUES (?, ?, 'FINISHED', ?, ?, 'active', 'file:///a', 1)",
                       (run_id, run_id, MS + start, MS + start + 5))  # fmt: skip
            db.executemany(
                "INSERT INTO tags VALUES (?, ?, ?)",
                [
                    (keys.TAG_STAGE, keys.STAGE_MONITOR, run_id),
                    (keys.TAG_ROLE, "stage", run_id),
                    (keys.TAG_MONITOR_MODEL_NAME, "loan-default-classifier", run_id),
                    (keys.TAG_MONITOR_VERSION, version, run_id),
                    (keys.TAG_MONITOR_STATUS, reading, run_id),
                ],
            )
            db.execute(
                "INSERT INTO latest_metrics VALUES (?, ?, 0, 0, 0, ?)", (keys.METRIC_SCORE_PSI, psi, run_id)
            )
    latest = history.monitor_results(store, "1")
    assert latest[["version", "population", "run_id"]].values.tolist() == [
        ["1", "shifted", "m2"],
        ["2", "watch", "m3"],
    ]
    assert latest[keys.METRIC_SCORE_PSI].tolist() == [0.31, 0.12]
