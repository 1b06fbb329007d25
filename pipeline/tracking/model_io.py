"""Logged models: written pickle-free as a complete scoring service, read back trusting only code.

A model is logged from code (see :mod:`pipeline.tracking.scorer`): the skops file and the scoring
spec are artifacts, the signature describes the raw applicant table and the output columns, and the
``pipeline`` package ships with it. :func:`load_model` reads a logged model's files without running
any code stored with it; models logged before models-from-code (the ``sklearn`` flavor in skops
format) still load, so a store's older champion can be compared and scored.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

import pipeline
from pipeline import scoring
from pipeline.errors import LookupFailedError, ModelSecurityError
from pipeline.tracking import keys
from pipeline.tracking.runs import quiet_artifact_downloads
from pipeline.tracking.scorer import read_estimator, read_scorer
from pipeline.tracking.session import TrackingSession

# The model's code file (MLflow runs it on load) and the package shipped beside it.
_MODEL_CODE = Path(__file__).with_name("model_code.py")
_PACKAGE = Path(pipeline.__file__).parent
# MLflow's signature types for the kinds of input column.
_SIGNATURE_TYPES = {scoring.INTEGER: "long", scoring.NUMBER: "double", scoring.TEXT: "string"}
_KINDS_OF_TYPES = {
    "long": scoring.INTEGER,
    "integer": scoring.INTEGER,
    "double": scoring.NUMBER,
    "float": scoring.NUMBER,
}
_EXAMPLE_ROWS = 5


@dataclass(frozen=True)
class LoadedModel:
    """A logged model rebuilt from its files, with what was recorded next to it."""

    uri: str
    estimator: Any
    metadata: dict[str, Any]
    signature: Any  # mlflow.models.ModelSignature or None
    spec: scoring.ScoringSpec | None  # None: an old model that recorded no threshold
    example: pd.DataFrame | None = None  # the logged input example
    serving_example: str | None = None  # the same as a scoring-server request body

    @property
    def threshold(self) -> float:
        return self.recorded_spec.threshold

    @property
    def recorded_spec(self) -> scoring.ScoringSpec:
        if self.spec is None:
            raise LookupFailedError(f"model {self.uri} has no recorded decision threshold")
        return self.spec

    @property
    def scorer(self) -> scoring.Scorer:
        """The estimator and spec, ready for :func:`pipeline.scoring.score`."""
        return scoring.Scorer.of(self.estimator, self.recorded_spec)


def reason_columns(count: int) -> list[str]:
    """The reason columns the scoring path adds: code and text per rank, then the method."""
    from pipeline.reasons import METHOD_COLUMN

    return [f"reason_{rank}_{part}" for rank in range(1, count + 1) for part in ("code", "text")] + [
        METHOD_COLUMN
    ]


def reason_settings(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the scoring path needs for reason codes, from the model's metadata; None without a profile."""
    if keys.META_TRAINING_PROFILE not in metadata:
        return None
    return {
        scoring.REASON_COUNT: int(metadata.get(keys.META_REASON_COUNT, 4)),
        keys.META_TRAINING_PROFILE: metadata[keys.META_TRAINING_PROFILE],
        keys.META_SCORECARD_SCALING: metadata.get(keys.META_SCORECARD_SCALING) or {},
    }


def signature_of(spec: scoring.ScoringSpec):
    """The raw input table (integer, number and text columns; optional ones) and the output columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec(_SIGNATURE_TYPES[c.kind], c.name, required=c.required) for c in spec.columns])
    outputs = [
        ColSpec("double", scoring.PROBABILITY_COLUMN),
        ColSpec("string", scoring.DECISION_COLUMN),
        ColSpec("double", scoring.THRESHOLD_COLUMN),
    ]
    if spec.reasons is not None:
        outputs += [
            ColSpec("string", name) for name in reason_columns(int(spec.reasons[scoring.REASON_COUNT]))
        ]
    outputs = Schema(outputs)
    return ModelSignature(inputs=inputs, outputs=outputs)


def _columns_of(signature) -> tuple[scoring.InputColumn, ...]:
    """Input columns read from an older model's signature (numbers were all declared double)."""
    if signature is None or signature.inputs is None:
        return ()
    columns = []
    for spec in signature.inputs.inputs:
        kind = getattr(getattr(spec, "type", None), "name", str(getattr(spec, "type", "")))
        columns.append(
            scoring.InputColumn(spec.name, _KINDS_OF_TYPES.get(kind, scoring.TEXT), bool(spec.required))
        )
    return tuple(columns)


def log_model(
    session: TrackingSession,
    run_id: str,
    model: Any,
    features: pd.DataFrame,
    metadata: Mapping[str, Any],
) -> Any:
    """Log a fitted classifier as a models-from-code pyfunc under ``run_id``; returns MLflow's ModelInfo.

    ``features`` is the table the model was built from (as :mod:`pipeline.data` types it): it decides
    how each input column is declared, and its first rows are the input example. The threshold comes
    from ``metadata``.
    """
    import mlflow.pyfunc
    from mlflow.models import Model

    spec = scoring.ScoringSpec(
        threshold=float(metadata[keys.META_THRESHOLD]),
        columns=scoring.describe_inputs(features),
        reasons=reason_settings(metadata),
    )
    mlflow.set_tracking_uri(session.uri)
    # The logged model is created in the active experiment, not the run's: point it at ours.
    mlflow.set_experiment(experiment_id=session.experiment_id)
    # MLflow validates the input example by loading the model back: no download progress bars.
    with tempfile.TemporaryDirectory(prefix="loan-model-") as folder, quiet_artifact_downloads():
        estimator_file = Path(folder) / keys.MODEL_ESTIMATOR_FILE
        spec_file = Path(folder) / keys.MODEL_SPEC_FILE
        write_estimator(model, estimator_file)
        spec_file.write_text(json.dumps(spec.to_dict(), indent=2), encoding="utf-8")
        code = Path(folder) / "code" / _PACKAGE.name
        shutil.copytree(_PACKAGE, code, ignore=shutil.ignore_patterns("__pycache__"))
        # pyfunc.log_model has no run_id: Model.log, which it wraps, takes one.
        return Model.log(
            artifact_path=None,  # deprecated in MLflow 3; ``name`` is the model's name
            name=keys.MODEL_NAME_IN_RUN,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(_MODEL_CODE),
            artifacts={
                keys.MODEL_ARTIFACT_ESTIMATOR: str(estimator_file),
                keys.MODEL_ARTIFACT_SPEC: str(spec_file),
            },
            code_paths=[str(code)],
            signature=signature_of(spec),
            input_example=scoring.raw_rows(features.head(_EXAMPLE_ROWS), spec.columns),
            metadata=dict(metadata),
            # Declared, not inferred: inference re-imports the model in a subprocess (~15 s).
            pip_requirements=_model_requirements(),
        )


class _CompactJson:
    """The ``json`` module as skops' writer sees it, with ``dumps`` ignoring ``indent``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    @staticmethod
    def dumps(obj: Any, *, indent: Any = None, **kwargs: Any) -> str:
        return json.dumps(obj, **kwargs)


_SKOPS_WRITER = threading.Lock()


def write_estimator(model: Any, path: Path) -> None:
    """``skops.io.dump(model, path)``, its schema written without indentation.

    skops writes the schema with ``json.dumps(state, indent=2)``, and an indent sends json to its
    pure-Python encoder. Without whitespace the C encoder writes the same JSON, and skops reads the
    file as before: a soft vote of two 300-tree forests on the shipped data is written in 3.1 s
    instead of 5.0 s, to 69 MiB instead of 90 (``bench/model_file.py``). Another skops version,
    whose writer no longer holds ``json``, is called as it is.
    """
    import skops.io
    from skops.io import _persist

    with _SKOPS_WRITER:
        if getattr(_persist, "json", None) is not json:
            skops.io.dump(model, path)
            return
        _persist.json = _CompactJson()
        try:
            skops.io.dump(model, path)
        finally:
            _persist.json = json


def _model_requirements() -> list[str]:
    """Exact pins of what a logged model needs to be loaded and scored."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "scikit-learn", "skops", "lightgbm", "optbinning", "pandas", "numpy", "scipy"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def _inside(folder: Path, relative: str, uri: str) -> Path:
    path = (folder / relative).resolve()
    if folder.resolve() not in path.parents:
        raise ModelSecurityError(f"model {uri} points outside its own folder")
    return path


def _read_files(local: Path, description, uri: str) -> tuple[Any, scoring.ScoringSpec | None]:
    """The estimator and spec of either layout; ModelSecurityError for anything else."""
    artifacts = (description.flavors.get("python_function") or {}).get("artifacts") or {}
    if keys.MODEL_ARTIFACT_ESTIMATOR in artifacts and keys.MODEL_ARTIFACT_SPEC in artifacts:
        scorer = read_scorer(
            _inside(local, artifacts[keys.MODEL_ARTIFACT_ESTIMATOR]["path"], uri),
            _inside(local, artifacts[keys.MODEL_ARTIFACT_SPEC]["path"], uri),
            uri,
        )
        return scorer.estimator, scorer.spec
    flavor = description.flavors.get("sklearn") or {}
    if flavor.get("serialization_format") != "skops":
        raise ModelSecurityError(
            f"model {uri} is stored as {flavor.get('serialization_format', 'unknown')!r}; "
            "only the pickle-free skops format is loaded"
        )
    estimator = read_estimator(
        _inside(local, flavor.get("pickled_model", keys.MODEL_ESTIMATOR_FILE), uri), uri
    )
    metadata = description.metadata or {}
    if keys.META_THRESHOLD not in metadata:
        return estimator, None
    return estimator, scoring.ScoringSpec(
        float(metadata[keys.META_THRESHOLD]), _columns_of(description.signature)
    )


def load_model(uri: str, tracking_uri_value: str | None = None) -> LoadedModel:
    """Download a logged model and rebuild it, trusting only ``pipeline.models.TRUSTED_TYPES``.

    Runs no code stored with the model. Raises ModelSecurityError when the files are not skops or
    ask for any other type.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    if tracking_uri_value:
        mlflow.set_tracking_uri(tracking_uri_value)
    with tempfile.TemporaryDirectory(prefix="loan-model-") as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
        except MlflowException as error:
            raise LookupFailedError(f"cannot find model {uri}: {str(error).splitlines()[0]}") from None
        try:
            description = Model.load(str(local))
        except Exception as error:
            raise ModelSecurityError(f"model {uri} has no readable MLmodel file: {error}") from None
        estimator, spec = _read_files(local, description, uri)
        try:
            example = description.load_input_example(str(local))
            serving_example = description.get_serving_input(str(local))
        except Exception:  # an example is a convenience: a model without one still scores
            example, serving_example = None, None
    return LoadedModel(
        uri=uri,
        estimator=estimator,
        metadata=dict(description.metadata or {}),
        signature=description.signature,
        spec=spec,
        example=example if isinstance(example, pd.DataFrame) else None,
        serving_example=serving_example,
    )


def model_threshold(uri: str) -> float:
    """The decision threshold recorded with a logged model."""
    return load_model(uri).threshold
