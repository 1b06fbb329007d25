"""The logged model through MLflow's own loader: raw applicants in, the batch command's answer out."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml
from mlflow.exceptions import MlflowException
from sklearn.preprocessing import FunctionTransformer

from pipeline import scoring
from pipeline.data import load_dataset
from pipeline.errors import ModelSecurityError
from pipeline.models import build_estimator
from pipeline.stages import predict
from pipeline.tracking import keys, model_io, runs
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

GERMAN = PROJECT_ROOT / "data" / "german_credit.csv"


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch):
    """MLflow puts a loaded model's code folder first on sys.path for good: undo it after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_pyfunc_scores_the_raw_table_exactly_as_the_batch_command(use_champion_store, tmp_path):
    store = use_champion_store
    raw = pd.read_csv(GERMAN)  # integers as integers, text, and the target as an extra column
    served = mlflow.pyfunc.load_model(store.version_uri).predict(raw)
    assert list(served.columns[:3]) == list(scoring.OUTPUT_COLUMNS)  # then the reason codes
    assert served.index.equals(raw.index)

    source = tmp_path / "applicants.csv"
    raw.to_csv(source, index=False)
    result = predict.run(store.config, store.version_uri, source, tmp_path / "scored.csv")
    batch = pd.read_csv(tmp_path / "scored.csv", keep_default_na=False)
    assert [c for c in batch.columns if c in served.columns] == list(served.columns)
    reason_columns = [c for c in served.columns if c.startswith("reason_")]
    assert reason_columns
    assert served[reason_columns].astype(str).equals(batch[reason_columns].astype(str))
    np.testing.assert_allclose(served["default_probability"], batch["default_probability"], rtol=0, atol=1e-9)
    assert (served["decision"] == batch["decision"]).all()
    assert (served["threshold"] == result.threshold).all()
    assert set(served["decision"]) == {"accept", "reject"}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda f: f.drop(columns=["age"]), "age"),
        (lambda f: f.assign(age="forty"), "age"),
        (lambda f: f.head(0), "no rows to score"),
    ],
)
def test_pyfunc_refuses_bad_input_with_a_parameter_error_naming_it(use_champion_store, change, named):
    model = mlflow.pyfunc.load_model(use_champion_store.version_uri)
    with pytest.raises(MlflowException) as raised:
        model.predict(change(pd.read_csv(GERMAN).head(3)))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400 from a scoring server
    assert named in raised.value.message


def test_columns_with_missing_values_are_optional_and_accept_gaps(sqlite_store, small_config):
    dataset = load_dataset(small_config)
    features = dataset.features.copy()
    features.loc[::7, "age"] = np.nan  # a whole-number column with gaps
    features.loc[::5, "telephone"] = np.nan
    model = build_estimator("logistic_regression", {}, dataset.categorical, dataset.numeric, 0, 1)
    model.fit(features, dataset.target)
    session = runs.connect(small_config)
    run = session.client.create_run(session.experiment_id)
    info = model_io.log_model(session, run.info.run_id, model, features, {"threshold": 0.3})
    session.client.set_terminated(run.info.run_id)

    inputs = {s.name: (s.type.name, s.required) for s in info.signature.inputs.inputs}
    assert inputs["age"] == ("double", False)
    assert inputs["telephone"] == ("string", False)
    assert inputs["duration_months"] == ("long", True)

    raw = pd.read_csv(GERMAN).drop(columns=["default"]).head(20)
    raw["age"] = raw["age"].astype(float)
    raw.loc[[0, 3], "age"] = np.nan
    raw["telephone"] = raw["telephone"].astype(object)
    raw.loc[[1, 3], "telephone"] = None
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    batch = scoring.score(model_io.load_model(info.model_uri).scorer, raw).output
    pd.testing.assert_frame_equal(loaded.predict(raw), batch)
    # An optional column left out altogether is missing in every row.
    without = raw.drop(columns=["telephone"])
    expected = scoring.score(model_io.load_model(info.model_uri).scorer, without).output
    pd.testing.assert_frame_equal(loaded.predict(without), expected)


def test_tampered_model_is_refused_by_mlflows_own_loader(use_champion_store, tmp_path):
    folder = Path(mlflow.artifacts.download_artifacts(use_champion_store.version_uri, dst_path=str(tmp_path)))
    description = yaml.safe_load((folder / "MLmodel").read_text())
    estimator = (
        folder / description["flavors"]["python_function"]["artifacts"][keys.MODEL_ARTIFACT_ESTIMATOR]["path"]
    )
    skops.io.dump(FunctionTransformer(func=shutil.rmtree), estimator)
    with pytest.raises(ModelSecurityError, match="outside the trusted list"):
        mlflow.pyfunc.load_model(str(folder))
