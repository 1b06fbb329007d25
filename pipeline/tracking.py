"""Every MLflow call of the pipeline: connection, stage runs, batched logging, look-ups.

Stages call these functions and never import ``mlflow`` themselves, so logging stays
batched (one round trip per run, not per value) and failure handling lives in one place.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

import pipeline
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, Split
from pipeline.errors import LookupFailedError, ModelSecurityError, TrackingUnavailableError
from pipeline.settings import artifact_root_override, redact, redact_uri, tracking_uri

logger = logging.getLogger(__name__)

# Tag keys shared by every stage; the results stage reads them back.
TAG_STAGE = "pipeline.stage"
TAG_VERSION = "pipeline.version"
TAG_GIT_COMMIT = "pipeline.git_commit"
TAG_PROFILE = "pipeline.profile"
TAG_DATASET_NAME = "dataset.name"
TAG_DATASET_DIGEST = "dataset.digest"
TAG_TRAIN_DIGEST = "dataset.train_digest"
TAG_TEST_DIGEST = "dataset.test_digest"
TAG_FAILURE_REASON = "pipeline.failure_reason"
TAG_ROLE = "pipeline.role"  # "stage" for parent runs, "candidate"/"trial" for children
TAG_FAMILY = "model.family"
TAG_CANDIDATE = "model.candidate"

# MLflow's own limits for one log_batch call.
_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_TAG_LENGTH = 5000

_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class TrackingSession:
    """A connected tracking store and the experiment the pipeline logs to."""

    uri: str
    experiment_id: str
    experiment_name: str
    client: MlflowClient

    @property
    def safe_uri(self) -> str:
        return redact_uri(self.uri)


def _is_database(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in _DB_SCHEMES


def _probe_database(uri: str) -> None:
    import sqlalchemy

    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise OSError(f"folder {folder} does not exist")
    engine = sqlalchemy.create_engine(uri, connect_args=_connect_args(uri))
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


def _connect_args(uri: str) -> dict[str, Any]:
    return {"connect_timeout": 5} if uri.startswith("postgresql") else {}


def _probe_server(uri: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
        pass


def wait_until_reachable(uri: str, retries: int, backoff_seconds: float) -> None:
    """Connect to the store, retrying with exponential back-off; raise a one-line error."""
    probe = _probe_database if _is_database(uri) else _probe_server
    for attempt in range(retries + 1):
        try:
            probe(uri)
            return
        except Exception as error:  # any driver's connection error
            reason = (str(getattr(error, "orig", None) or error).strip().splitlines() or ["?"])[0]
            if attempt == retries:
                raise TrackingUnavailableError(
                    f"cannot reach {redact_uri(uri)} after {retries + 1} attempt(s): {redact(reason)}"
                ) from None
            delay = backoff_seconds * 2**attempt
            logger.info("tracking store not reachable (%s); retrying in %.1f s", redact(reason), delay)
            time.sleep(delay)


def _artifact_location(config: PipelineConfig) -> str:
    location = artifact_root_override() or config.tracking.artifact_location
    if "://" in location:
        return location
    return config.resolve(location).as_uri()


def connect(config: PipelineConfig) -> TrackingSession:
    """Point MLflow at the configured store and make sure the experiment exists."""
    uri = tracking_uri(config.root)
    wait_until_reachable(uri, config.tracking.connect_retries, config.tracking.connect_backoff_seconds)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    name = config.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=_artifact_location(config))
        except mlflow.exceptions.MlflowException:
            # Another process created it between our look-up and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    elif experiment.lifecycle_stage != "active":
        raise LookupFailedError(
            f"experiment '{name}' is deleted; restore it or choose another tracking.experiment"
        )
    else:
        experiment_id = experiment.experiment_id
    logger.info("tracking to %s, experiment '%s' (%s)", redact_uri(uri), name, experiment_id)
    return TrackingSession(uri=uri, experiment_id=experiment_id, experiment_name=name, client=client)


def git_commit(root: Path) -> str:
    """The commit the code runs from (``-dirty`` when the tree has changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GITHUB_SHA", "unknown")


def base_tags(
    config: PipelineConfig, stage: str, dataset: Dataset | None = None, split: Split | None = None
) -> dict[str, str]:
    """Tags every run of a stage carries: provenance and the data it saw."""
    tags = {
        TAG_STAGE: stage,
        TAG_VERSION: pipeline.__version__,
        TAG_GIT_COMMIT: git_commit(config.root),
    }
    if config.profile:
        tags[TAG_PROFILE] = config.profile
    if dataset is not None:
        tags[TAG_DATASET_NAME] = dataset.name
        tags[TAG_DATASET_DIGEST] = dataset.digest
    if split is not None:
        tags[TAG_TRAIN_DIGEST] = split.train_digest
        tags[TAG_TEST_DIGEST] = split.test_digest
    return tags


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return redact(text)


def log_batch(
    session: TrackingSession,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
    step: int = 0,
) -> None:
    """Log everything in as few round trips as MLflow's batch limits allow."""
    now = int(time.time() * 1000)
    param_list = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
    metric_list = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
    tag_list = [RunTag(k, redact(str(v))[:_MAX_TAG_LENGTH]) for k, v in (tags or {}).items()]
    while param_list or metric_list or tag_list:
        batch_params, param_list = param_list[:_MAX_PARAMS_PER_BATCH], param_list[_MAX_PARAMS_PER_BATCH:]
        batch_tags, tag_list = tag_list[:_MAX_TAGS_PER_BATCH], tag_list[_MAX_TAGS_PER_BATCH:]
        room = _MAX_METRICS_PER_BATCH - len(batch_params) - len(batch_tags)
        batch_metrics, metric_list = metric_list[:room], metric_list[room:]
        session.client.log_batch(run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)


@contextmanager
def stage_run(
    session: TrackingSession,
    run_name: str,
    tags: Mapping[str, str],
) -> Iterator[str]:
    """A parent run for one stage; yields its id.

    It ends FINISHED on success, and FAILED (KILLED on Ctrl-C) with the reason
    in a tag on any error, so no failed work is left RUNNING or FINISHED.
    """
    run = session.client.create_run(
        session.experiment_id, run_name=run_name, tags={**tags, TAG_ROLE: "stage"}
    )
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        try:
            session.client.set_tag(run_id, TAG_FAILURE_REASON, redact(reason)[:_MAX_TAG_LENGTH])
            session.client.set_terminated(run_id, status)
        except Exception:  # the store may be the thing that failed; never hide the cause
            logger.warning("could not mark run %s %s", run_id, status)
        raise
    session.client.set_terminated(run_id, "FINISHED")


def log_child_run(
    session: TrackingSession,
    parent_run_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    status: str = "FINISHED",
) -> str:
    """Create, fill and close a nested run in three round trips; returns its id."""
    run = session.client.create_run(
        session.experiment_id,
        run_name=run_name,
        tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: run_name},
    )
    log_batch(session, run.info.run_id, params=params, metrics=metrics)
    session.client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def log_datasets(session: TrackingSession, run_id: str, dataset: Dataset, split: Split) -> None:
    """Log the train and test parts as MLflow dataset inputs of ``run_id``."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    frame = dataset.frame()
    inputs = []
    for context, index in (("train", split.train_index), ("test", split.test_index)):
        part = from_pandas(
            frame.iloc[index].reset_index(drop=True),
            source=dataset.source if dataset.source.endswith((".csv", ".parquet")) else None,
            targets=dataset.target.name,
            name=f"{dataset.name}-{context}",
        )
        inputs.append(
            DatasetInput(part._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        )
    session.client.log_inputs(run_id, datasets=inputs)


def log_text(session: TrackingSession, run_id: str, text: str, artifact_file: str) -> None:
    session.client.log_text(run_id, redact(text), artifact_file)


def log_dict(session: TrackingSession, run_id: str, data: Any, artifact_file: str) -> None:
    session.client.log_dict(run_id, data, artifact_file)


def log_figure(session: TrackingSession, run_id: str, figure, artifact_file: str) -> None:
    session.client.log_figure(run_id, figure, artifact_file)


def log_frame(session: TrackingSession, run_id: str, frame: pd.DataFrame, stem: str) -> None:
    """A table as CSV and Markdown artifacts."""
    log_text(session, run_id, frame.to_csv(index=False), f"{stem}.csv")
    log_text(session, run_id, frame.to_markdown(index=False, floatfmt=".4f"), f"{stem}.md")


def quote_filter_value(value: str) -> str:
    """A string literal for MLflow's filter syntax; rejects what it cannot escape."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise LookupFailedError(f"value {value!r} holds both quote characters; MLflow filters cannot express it")


def search_stage_runs(
    session: TrackingSession,
    stage: str,
    conditions: Mapping[str, str] | None = None,
    status: str | None = "FINISHED",
    max_results: int = 100,
) -> list:
    """Parent runs of ``stage``, newest first, matching every ``tags.<key> = value``."""
    clauses = [f"tags.`{TAG_STAGE}` = {quote_filter_value(stage)}", f"tags.`{TAG_ROLE}` = 'stage'"]
    clauses += [f"tags.`{key}` = {quote_filter_value(value)}" for key, value in (conditions or {}).items()]
    if status:
        clauses.append(f"attributes.status = {quote_filter_value(status)}")
    return session.client.search_runs(
        [session.experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


def child_runs(session: TrackingSession, parent_run_id: str) -> list:
    return session.client.search_runs(
        [session.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = {quote_filter_value(parent_run_id)}",
        max_results=5000,
    )


def get_run(session: TrackingSession, run_id: str):
    try:
        return session.client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise LookupFailedError(f"run {run_id} not found in {session.safe_uri}") from None


def download_artifact_text(session: TrackingSession, run_id: str, path: str) -> str:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=session.uri)
    return Path(local).read_text(encoding="utf-8")


# --- Models: logged pickle-free, loaded only with the trusted-type list kept in code -------------

MODEL_NAME_IN_RUN = "model"


@dataclass(frozen=True)
class LoadedModel:
    """A logged model rebuilt from its skops file, with what was recorded next to it."""

    uri: str
    estimator: Any
    metadata: dict[str, Any]
    signature: Any  # mlflow.models.ModelSignature or None

    @property
    def threshold(self) -> float:
        if "threshold" not in self.metadata:
            raise LookupFailedError(f"model {self.uri} has no recorded decision threshold")
        return float(self.metadata["threshold"])


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

    from pipeline.models import TRUSTED_TYPES

    example = input_example.head(5)
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    mlflow.set_tracking_uri(session.uri)
    return mlflow.sklearn.log_model(
        model,
        name=MODEL_NAME_IN_RUN,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=list(TRUSTED_TYPES),
        signature=signature,
        input_example=example,
        metadata=dict(metadata),
        pyfunc_predict_fn="predict_proba",
        run_id=run_id,
    )


def load_model(uri: str, tracking_uri_value: str | None = None) -> LoadedModel:
    """Download a logged model and rebuild it, trusting only ``pipeline.models.TRUSTED_TYPES``.

    Raises ModelSecurityError when the files are not skops or ask for any other type.
    """
    import tempfile

    import skops.io
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from skops.io.exceptions import UntrustedTypesFoundException

    from pipeline.models import TRUSTED_TYPES

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
