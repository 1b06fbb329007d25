"""pipeline.queries.history on a tiny hand-made SQLite schema."""

import pytest

from pipeline.queries import history, tables


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
