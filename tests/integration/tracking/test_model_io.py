"""Models are logged pickle-free as models-from-code and read back trusting only the types listed in code."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import skops.io
import yaml
from sklearn.preprocessing import FunctionTransformer

from pipeline.data import load_dataset
from pipeline.errors import LookupFailedError, ModelSecurityError
from pipeline.models import TRUSTED_TYPES, build_ensemble, build_estimator
from pipeline.tracking import keys, model_io, runs

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


def local_copy(info, folder: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(folder)))


def pyfunc_artifact(folder: Path, name: str) -> Path:
    description = yaml.safe_load((folder / "MLmodel").read_text())
    return folder / description["flavors"]["python_function"]["artifacts"][name]["path"]


def test_round_trip_reproduces_scores_threshold_and_example(logged):
    _session, info, model, dataset = logged
    loaded = model_io.load_model(f"models:/{info.model_id}")
    expected = model.predict_proba(dataset.features)[:, 1]
    np.testing.assert_array_equal(loaded.estimator.predict_proba(dataset.features)[:, 1], expected)
    assert loaded.threshold == 0.25
    assert loaded.metadata["families"] == ["x"]
    assert [c.name for c in loaded.spec.columns] == list(dataset.features.columns)
    assert loaded.example is not None and len(loaded.example) == 5
    assert "dataframe_split" in loaded.serving_example


def test_estimator_file_holds_a_compact_schema_and_loads_as_skops_writes_it(small_config, tmp_path):
    """The schema is written by json's C encoder (no indentation); the file reads back the same model,
    and skops' own writer, and json, are left as they were."""
    from skops.io import _persist

    dataset = load_dataset(small_config)
    members = [
        (family, build_estimator(family, {"n_estimators": 20}, dataset.categorical, dataset.numeric, 0))
        for family in ("random_forest", "extra_trees")
    ]
    model = build_ensemble(members).fit(dataset.features, dataset.target)
    ours, plain = tmp_path / "ours.skops", tmp_path / "plain.skops"
    model_io.write_estimator(model, ours)
    skops.io.dump(model, plain)

    def schema(path: Path) -> str:
        with zipfile.ZipFile(path) as archive:
            return archive.read("schema.json").decode()

    assert "\n" not in schema(ours) and "\n" in schema(plain)
    assert json.loads(schema(ours)).keys() == json.loads(schema(plain)).keys()
    assert _persist.json is json and json.dumps({"a": 1}, indent=2) == '{\n  "a": 1\n}'
    expected = model.predict_proba(dataset.features)
    for path in (ours, plain):
        loaded = skops.io.load(path, trusted=list(TRUSTED_TYPES))
        np.testing.assert_array_equal(loaded.predict_proba(dataset.features), expected)


def test_model_is_a_pyfunc_from_code_with_the_package_and_no_pickle(logged, tmp_path):
    _session, info, _model, _dataset = logged
    folder = local_copy(info, tmp_path)
    description = yaml.safe_load((folder / "MLmodel").read_text())
    assert set(description["flavors"]) == {"python_function"}
    pyfunc = description["flavors"]["python_function"]
    assert pyfunc["model_code_path"].endswith("model_code.py")
    assert (folder / "code" / "pipeline" / "scoring.py").is_file()
    assert not list(folder.rglob("__pycache__"))
    assert not [p for p in folder.rglob("*") if p.suffix in {".pkl", ".pickle", ".cloudpickle"}]
    assert pyfunc_artifact(folder, keys.MODEL_ARTIFACT_ESTIMATOR).name == keys.MODEL_ESTIMATOR_FILE


def test_signature_declares_the_raw_table_and_the_outputs(logged):
    _session, info, _model, dataset = logged
    signature = model_io.load_model(f"models:/{info.model_id}").signature
    inputs = {spec.name: (spec.type.name, spec.required) for spec in signature.inputs.inputs}
    # The shipped data holds whole numbers and no missing value.
    assert inputs["duration_months"] == ("long", True)
    assert inputs["purpose"] == ("string", True)
    assert set(inputs) == set(dataset.features.columns)
    assert {name for name, (kind, _) in inputs.items() if kind == "long"} == set(dataset.numeric)
    assert [(s.name, s.type.name) for s in signature.outputs.inputs] == [
        ("default_probability", "double"),
        ("decision", "string"),
        ("threshold", "double"),
    ]


def tamper(folder: Path) -> None:
    """Swap in a model that needs a type outside the trusted list."""
    skops.io.dump(
        FunctionTransformer(func=shutil.rmtree), pyfunc_artifact(folder, keys.MODEL_ARTIFACT_ESTIMATOR)
    )


def test_model_asking_for_untrusted_types_is_refused(logged, tmp_path):
    _session, info, _, _dataset = logged
    folder = local_copy(info, tmp_path)
    tamper(folder)
    with pytest.raises(ModelSecurityError, match="outside the trusted list"):
        model_io.load_model(str(folder))


def test_model_pointing_outside_its_folder_is_refused(logged, tmp_path):
    _session, info, _, _dataset = logged
    folder = local_copy(info, tmp_path / "copy")
    description = yaml.safe_load((folder / "MLmodel").read_text())
    description["flavors"]["python_function"]["artifacts"][keys.MODEL_ARTIFACT_SPEC]["path"] = (
        "../../etc/passwd"
    )
    (folder / "MLmodel").write_text(yaml.safe_dump(description))
    with pytest.raises(ModelSecurityError, match="outside its own folder"):
        model_io.load_model(str(folder))


def test_pickled_model_is_refused(logged, tmp_path):
    _session, info, _, _ = logged
    folder = local_copy(info, tmp_path)
    description = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = description["flavors"]["python_function"]
    pyfunc.pop("artifacts")
    pyfunc["python_model"] = "python_model.pkl"
    (folder / "MLmodel").write_text(yaml.safe_dump(description))
    with pytest.raises(ModelSecurityError, match="only the pickle-free skops format"):
        model_io.load_model(str(folder))


def test_model_logged_before_models_from_code_still_loads(sqlite_store, small_config):
    """A store's older champion (sklearn flavor, skops file, doubles in the signature) is still scored."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    dataset = load_dataset(small_config)
    model = build_estimator("logistic_regression", {}, dataset.categorical, dataset.numeric, 0, 1)
    model.fit(dataset.features, dataset.target)
    runs.connect(small_config)
    example = dataset.features.head(5)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=list(TRUSTED_TYPES),
            signature=infer_signature(example, model.predict_proba(example)[:, 1]),
            metadata={"threshold": 0.4},
        )
    loaded = model_io.load_model(info.model_uri)
    assert loaded.threshold == 0.4
    assert {c.kind for c in loaded.spec.columns} == {"number", "text"}
    np.testing.assert_array_equal(
        loaded.estimator.predict_proba(example)[:, 1], model.predict_proba(example)[:, 1]
    )


def test_missing_model_is_a_lookup_error(sqlite_store, small_config):
    runs.connect(small_config)
    with pytest.raises(LookupFailedError, match="cannot find model"):
        model_io.load_model("models:/m-doesnotexist")
