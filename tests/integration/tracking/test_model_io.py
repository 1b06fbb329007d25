"""Models are logged pickle-free and loaded only with the trusted-type list kept in code."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import skops.io
import yaml
from sklearn.preprocessing import FunctionTransformer

from pipeline.data import load_dataset
from pipeline.errors import LookupFailedError, ModelSecurityError
from pipeline.models import build_estimator
from pipeline.tracking import model_io, runs

pytestmark = pytest.mark.integration


@pytest.fixture
def logged(sqlite_store, small_config):
    dataset = load_dataset(small_config)
    model = build_estimator("logistic_regression", {}, dataset.categorical, dataset.numeric, 0, 1)
    model.fit(dataset.features, dataset.target)
    session = runs.connect(small_config)
    run = session.client.create_run(session.experiment_id)
    info = model_io.log_model(
        session, run.info.run_id, model, dataset.features, {"threshold": 0.25, "families": ["x"]}
    )
    session.client.set_terminated(run.info.run_id)
    return session, info, model, dataset


def _local_copy(session, info, tmp_path: Path) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path)))


def test_round_trip_reproduces_scores_and_metadata(logged):
    _session, info, model, dataset = logged
    loaded = model_io.load_model(f"models:/{info.model_id}")
    expected = model.predict_proba(dataset.features)[:, 1]
    np.testing.assert_array_equal(loaded.estimator.predict_proba(dataset.features)[:, 1], expected)
    assert loaded.threshold == 0.25
    assert loaded.signature is not None
    assert set(loaded.signature.inputs.input_names()) == set(dataset.features.columns)


def test_model_asking_for_untrusted_types_is_refused(logged, tmp_path):
    session, info, _, _dataset = logged
    folder = _local_copy(session, info, tmp_path)
    # Swap in a model that needs a type outside the trusted list, and widen the list in MLmodel
    # the way an attacker would: the loader must ignore that list.
    tampered = FunctionTransformer(func=shutil.rmtree)
    skops.io.dump(tampered, folder / "model.skops")
    description = yaml.safe_load((folder / "MLmodel").read_text())
    description["flavors"]["sklearn"]["skops_trusted_types"] = ["shutil.rmtree"]
    (folder / "MLmodel").write_text(yaml.safe_dump(description))
    with pytest.raises(ModelSecurityError, match="outside the trusted list"):
        model_io.load_model(str(folder))


def test_pickled_model_is_refused(logged, tmp_path):
    session, info, _, _ = logged
    folder = _local_copy(session, info, tmp_path)
    description = yaml.safe_load((folder / "MLmodel").read_text())
    description["flavors"]["sklearn"]["serialization_format"] = "cloudpickle"
    (folder / "MLmodel").write_text(yaml.safe_dump(description))
    with pytest.raises(ModelSecurityError, match="only the pickle-free skops format"):
        model_io.load_model(str(folder))


def test_missing_model_is_a_lookup_error(sqlite_store, small_config):
    runs.connect(small_config)
    with pytest.raises(LookupFailedError, match="cannot find model"):
        model_io.load_model("models:/m-doesnotexist")
