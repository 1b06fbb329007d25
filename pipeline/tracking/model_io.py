"""Logged models: written pickle-free (skops), read back trusting only the types listed in code."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipeline.errors import LookupFailedError, ModelSecurityError
from pipeline.models import TRUSTED_TYPES
from pipeline.tracking import keys
from pipeline.tracking.session import TrackingSession


@dataclass(frozen=True)
class LoadedModel:
    """A logged model rebuilt from its skops file, with what was recorded next to it."""

    uri: str
    estimator: Any
    metadata: dict[str, Any]
    signature: Any  # mlflow.models.ModelSignature or None

    @property
    def threshold(self) -> float:
        if keys.META_THRESHOLD not in self.metadata:
            raise LookupFailedError(f"model {self.uri} has no recorded decision threshold")
        return float(self.metadata[keys.META_THRESHOLD])


def log_model(
    session: TrackingSession,
    run_id: str,
    model: Any,
    input_example: pd.DataFrame,
    metadata: Mapping[str, Any],
) -> Any:
    """Log a fitted classifier in the skops format under ``run_id``; returns MLflow's ModelInfo."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = input_example.head(5)
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    mlflow.set_tracking_uri(session.uri)
    # The logged model is created in the active experiment, not the run's: point it at ours.
    mlflow.set_experiment(experiment_id=session.experiment_id)
    return mlflow.sklearn.log_model(
        model,
        name=keys.MODEL_NAME_IN_RUN,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=list(TRUSTED_TYPES),
        signature=signature,
        input_example=example,
        metadata=dict(metadata),
        pyfunc_predict_fn="predict_proba",
        # Declared, not inferred: inference re-imports the model in a subprocess (~15 s).
        pip_requirements=_model_requirements(),
        run_id=run_id,
    )


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


def load_model(uri: str, tracking_uri_value: str | None = None) -> LoadedModel:
    """Download a logged model and rebuild it, trusting only ``pipeline.models.TRUSTED_TYPES``.

    Raises ModelSecurityError when the files are not skops or ask for any other type.
    """
    import skops.io
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from skops.io.exceptions import UntrustedTypesFoundException

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
        flavor = description.flavors.get("sklearn") or {}
        if flavor.get("serialization_format") != "skops":
            raise ModelSecurityError(
                f"model {uri} is stored as {flavor.get('serialization_format', 'unknown')!r}; "
                "only the pickle-free skops format is loaded"
            )
        model_file = (local / flavor.get("pickled_model", "model.skops")).resolve()
        if local.resolve() not in model_file.parents:
            raise ModelSecurityError(f"model {uri} points outside its own folder")
        try:
            estimator = skops.io.load(model_file, trusted=list(TRUSTED_TYPES))
        except UntrustedTypesFoundException as error:
            raise ModelSecurityError(
                f"model {uri} asks for types outside the trusted list: {str(error).splitlines()[0]}"
            ) from None
        except Exception as error:  # corrupt or truncated file
            raise ModelSecurityError(f"model {uri} cannot be read: {str(error).splitlines()[0]}") from None
    return LoadedModel(
        uri=uri,
        estimator=estimator,
        metadata=dict(description.metadata or {}),
        signature=description.signature,
    )


def model_threshold(uri: str) -> float:
    """The decision threshold recorded with a logged model."""
    return load_model(uri).threshold
