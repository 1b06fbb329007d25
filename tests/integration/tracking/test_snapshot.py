"""pipeline.tracking.snapshot and pipeline.queries.mirror: the core tables read through MLflow's
client equal the database's own, and the views built on the local copy equal the views built by SQL
on the database. Runs on a copy of the SQLite store of tests/integration/fake_store.py with a logged
model added (MlflowClient reads it the way it reads a server, call by call)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.tracking import MlflowClient

from pipeline import views
from pipeline.queries import mirror, tables
from pipeline.tracking import snapshot

pytestmark = pytest.mark.integration

# What identifies a row of each table (MLflow's primary keys, without the workspace column).
ROW_KEYS = {
    "experiments": ["experiment_id"],
    "experiment_tags": ["experiment_id", "key"],
    "runs": ["run_uuid"],
    "params": ["run_uuid", "key"],
    "metrics": ["run_uuid", "key", "step", "timestamp", "value"],
    "latest_metrics": ["run_uuid", "key"],
    "tags": ["run_uuid", "key"],
    "logged_models": ["model_id"],
    "logged_model_metrics": ["model_id", "metric_name", "metric_step", "run_id"],
    "logged_model_params": ["model_id", "param_key"],
    "logged_model_tags": ["model_id", "tag_key"],
    "registered_models": ["name"],
    "registered_model_tags": ["name", "key"],
    "model_versions": ["name", "version"],
    "model_version_tags": ["name", "version", "key"],
    "registered_model_aliases": ["name", "alias"],
}
# Columns the API does not carry (database-internal), or carries in another form.
NOT_IN_THE_API = {
    "runs": {"deleted_time", "source_type", "source_name", "entry_point_name", "source_version"},
    "model_versions": {"storage_location"},
    "logged_model_metrics": {"dataset_uuid"},
}


@pytest.fixture(scope="module")
def store_uri(results_store, tmp_path_factory) -> str:
    """The results store plus a logged model with a param, a tag and a metric on the test part."""
    folder = tmp_path_factory.mktemp("snapshot")
    shutil.copy(results_store.uri.removeprefix("sqlite:///"), folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = results_store.optimize_run_ids[-1]
    model = client.create_logged_model(
        results_store.experiment_id, name="model", source_run_id=run_id, params={"C": "1.0"}, tags={"k": "v"}
    )
    client.finalize_logged_model(model.model_id, "READY")
    metric = Metric(
        "test_roc_auc", 0.81, 1_700_000_000_000, 0, model.model_id, "german_credit-test", "abc123"
    )
    client.log_batch(run_id, metrics=[metric])
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    return uri


@pytest.fixture(scope="module")
def both(store_uri, tmp_path_factory):
    """The store read by SQL, and read through the client into a local copy."""
    database = tables.open_store(store_uri)
    frames = snapshot.read_tables(store_uri)
    copy = tables.open_store(mirror.write_copy(frames, tmp_path_factory.mktemp("copy") / "tables.db"))
    yield database, frames, copy
    database.close()
    copy.close()


def normalised(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    columns = [c for c in snapshot.COLUMNS[name] if c not in NOT_IN_THE_API.get(name, set()) | {"workspace"}]
    frame = frame.reindex(columns=columns).astype(object)
    frame = frame.where(frame.notna(), None).map(lambda v: str(v) if v is not None else None)
    return frame.sort_values(ROW_KEYS[name]).reset_index(drop=True)


@pytest.mark.parametrize("name", sorted(ROW_KEYS))
def test_each_core_table_read_through_the_api_equals_the_database(both, name):
    database, frames, _ = both
    expected = normalised(tables.load_table(database, name), name)
    assert len(expected) > 0 or name in {"experiment_tags", "registered_model_tags"}, name
    pd.testing.assert_frame_equal(normalised(frames[name], name), expected)


def test_datasets_and_inputs_match_by_what_identifies_them(both):
    database, frames, _ = both
    by_sql = tables.load_table(database, "datasets")
    columns = ["experiment_id", "name", "digest", "dataset_source_type", "dataset_source", "dataset_schema"]
    assert normalised_rows(frames["datasets"], columns) == normalised_rows(by_sql, columns)
    # An input links a dataset to a run: the same links, whatever the uuids.
    links = ["source_type", "destination_type", "destination_id"]
    assert normalised_rows(frames["inputs"], links) == normalised_rows(
        tables.load_table(database, "inputs"), links
    )
    assert sorted(frames["input_tags"]["value"]) == sorted(tables.load_table(database, "input_tags")["value"])
    # The uuids are derived from what identifies the row, so one snapshot is like the next.
    assert frames["datasets"]["dataset_uuid"].is_unique


def normalised_rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return sorted(tuple(str(row[c]) for c in columns) for _, row in frame.iterrows())


# Built from records this store has no example of (no gate, alias move, baseline or monitor run).
EMPTY_IN_THIS_STORE = ["alias_history", "baseline", "comparison", "confusion", "monitor_results"]


def test_the_views_on_the_copy_equal_the_views_by_sql(both, store_uri):
    database, _, copy = both
    experiment = tables.experiment_id(database, "loan-default")
    assert tables.experiment_id(copy, "loan-default") == experiment
    by_sql = views.build_views(database, store_uri, experiment, "loan-default-classifier")
    by_api = views.build_views(copy, store_uri, experiment, "loan-default-classifier")
    frames = by_sql.frames()
    empty = sorted(name for name, frame in frames.items() if frame.empty)
    assert empty == sorted(EMPTY_IN_THIS_STORE)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(by_api.frames()[name], frame, check_dtype=False, obj=name)


def test_latest_metrics_follow_mlflows_rule():
    history = pd.DataFrame(
        {
            "key": ["auc"] * 4,
            "value": [0.5, 0.7, 0.6, 0.9],
            "timestamp": [1, 2, 5, 3],
            "run_uuid": ["r"] * 4,
            "step": [0, 2, 2, 1],
            "is_nan": [False] * 4,
        }
    )
    # Highest step first, then the newest: step 2 logged at t=5.
    assert snapshot.latest_metrics(history)[["value", "step", "timestamp"]].values.tolist() == [[0.6, 2, 5]]


def test_derived_ids_are_stable_and_distinct():
    assert snapshot.derived_id("1", "train", "abc") == snapshot.derived_id("1", "train", "abc")
    assert snapshot.derived_id("1", "train", "abc") != snapshot.derived_id("1", "test", "abc")
    assert len(snapshot.derived_id("x")) == 32
