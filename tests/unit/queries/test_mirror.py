"""pipeline.queries.mirror: the local copy holds MLflow's table and column names, numeric experiment
ids as integers, and answers the queries of pipeline.queries like MLflow's own database."""

import pandas as pd
import sqlalchemy as sa

from pipeline.queries import mirror, tables
from pipeline.tracking import keys


def frames(experiment_id: str) -> dict[str, pd.DataFrame]:
    runs = pd.DataFrame(
        {
            "run_uuid": ["a", "b"],
            "name": ["research-1", "candidate"],
            "status": ["FINISHED", "FINISHED"],
            "start_time": [1_000, 2_000],
            "end_time": [5_000, None],
            "lifecycle_stage": ["active", "active"],
            "experiment_id": [experiment_id, experiment_id],
        }
    )
    tags = pd.DataFrame(
        {
            "key": [keys.TAG_STAGE, keys.TAG_ROLE, keys.TAG_STAGE, keys.TAG_ROLE],
            "value": ["research", "stage", "research", "candidate"],
            "run_uuid": ["a", "a", "b", "b"],
        }
    )
    experiments = pd.DataFrame(
        {"experiment_id": [experiment_id], "name": ["loan-default"], "lifecycle_stage": ["active"]}
    )
    latest = pd.DataFrame({"key": ["auc"], "value": [0.8], "run_uuid": ["a"]})
    return {"experiments": experiments, "runs": runs, "tags": tags, "latest_metrics": latest}


def test_numeric_experiment_ids_become_integers_and_the_queries_work(tmp_path):
    store = tables.open_store(mirror.write_copy(frames("7"), tmp_path / "copy.db"))
    try:
        assert isinstance(store.table("runs").c.experiment_id.type, sa.Integer)
        assert tables.experiment_id(store, "loan-default") == "7"
        parents = tables.stage_runs(store, "7", keys.STAGE_RESEARCH, metric_keys=("auc",))
        assert parents["run_id"].tolist() == ["a"] and parents["auc"].tolist() == [0.8]
        indexes = {index["name"] for index in sa.inspect(store.engine).get_indexes("tags")}
        assert indexes == {"ix_tags_0"}
    finally:
        store.close()


def test_text_experiment_ids_stay_text(tmp_path):
    guid = "5f0a3c9e-1b2d-4e8f-9a7b-3c2d1e0f9a8b"  # Azure ML's experiment ids are not numbers
    store = tables.open_store(mirror.write_copy(frames(guid), tmp_path / "copy.db"))
    try:
        assert not isinstance(store.table("runs").c.experiment_id.type, sa.Integer)
        assert tables.stage_runs(store, guid, keys.STAGE_RESEARCH)["run_id"].tolist() == ["a"]
    finally:
        store.close()
