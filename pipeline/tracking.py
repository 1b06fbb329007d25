"""Every MLflow call of the pipeline: connection, stage runs, batched logging, look-ups.

Stages call these functions and never import ``mlflow`` themselves, so logging stays
batched (one round trip per run, not per value) and failure handling lives in one place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
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
from pipeline.errors import (
    LookupFailedError,
    ModelSecurityError,
    SchemaOutdatedError,
    Terminated,
    TrackingUnavailableError,
    first_line,
)
from pipeline.locks import cross_process_lock
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
# Which process owns a run: the stale-run sweep never touches a live one.
TAG_HOST = "pipeline.host"
TAG_PID = "pipeline.pid"
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
            reason = first_line(error)
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
    # Several pipelines starting on a new database would race to create MLflow's tables and the
    # experiment: one process at a time sets the store up.
    with cross_process_lock(uri, "mlflow-store-setup") if _is_database(uri) else nullcontext():
        experiment_id = _set_up_store(config, uri)
    name = config.tracking.experiment
    client = MlflowClient(uri)
    logger.info("tracking to %s, experiment '%s' (%s)", redact_uri(uri), name, experiment_id)
    session = TrackingSession(uri=uri, experiment_id=experiment_id, experiment_name=name, client=client)
    fail_stale_runs(session, config.tracking.stale_after_hours)
    return session


def _set_up_store(config: PipelineConfig, uri: str) -> str:
    """Check the schema, let MLflow create its tables, and find or create the experiment; its id."""
    if _is_database(uri):
        check_schema_revision(uri)
    if uri.startswith("postgresql"):
        # MLflow sizes its engine from these; the config is the single source of the limit.
        os.environ["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] = str(config.tracking.pool_size)
        os.environ["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] = str(config.tracking.max_overflow)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    name = config.tracking.experiment
    try:
        experiment = client.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as error:
        raise_if_schema_outdated(error, uri)
        raise
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
    return experiment_id


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
        **owner_tags(),
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

    It ends FINISHED on success, and FAILED (KILLED on Ctrl-C or SIGTERM) with the reason
    in a tag on any error, so no failed work is left RUNNING or FINISHED.
    """
    try:
        run = session.client.create_run(
            session.experiment_id, run_name=run_name, tags={**tags, **owner_tags(), TAG_ROLE: "stage"}
        )
    except Exception as error:
        raise_if_connection_lost(error, session)
        raise
    run_id = run.info.run_id
    try:
        yield run_id
        if Terminated.received:
            # A library caught the signal's exception and carried on: SIGTERM still ends the run.
            raise Terminated("received SIGTERM")
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) or Terminated.received else "FAILED"
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        marked = False
        # A signal can land mid-write and leave the store briefly busy: retry a little.
        for attempt in range(3):
            try:
                session.client.set_tag(run_id, TAG_FAILURE_REASON, redact(reason)[:_MAX_TAG_LENGTH])
                session.client.set_terminated(run_id, status)
                end_running_children(session, run_id, status, f"parent run ended {status}: {redact(reason)}")
                marked = True
                break
            except Exception as marking_error:  # the store may be the thing that failed
                if is_connection_lost(error) or is_connection_lost(marking_error):
                    break
                logger.debug(
                    "marking run %s %s failed (attempt %d): %s", run_id, status, attempt + 1, marking_error
                )
                time.sleep(0.5 * (attempt + 1))
        if not marked:
            # Never hide the cause; the next start sweeps the run (its process will be gone).
            error.add_note(f"run {run_id} left RUNNING; the next start marks it FAILED")
            logger.info("could not mark run %s %s; the next start marks it FAILED", run_id, status)
        if isinstance(error, Exception):
            raise_if_connection_lost(error, session, run_id=run_id, marked=marked)
        raise
    try:
        session.client.set_terminated(run_id, "FINISHED")
    except Exception as error:
        raise_if_connection_lost(error, session, run_id=run_id, marked=False)
        raise


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
    if value.endswith("\\"):
        # The filter tokenizer reads a backslash before the closing quote as an escape.
        raise LookupFailedError(f"value {value!r} ends with a backslash; MLflow filters cannot express it")
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
    clauses += [
        f"tags.{quote_filter_key(key)} = {quote_filter_value(value)}"
        for key, value in (conditions or {}).items()
    ]
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
    # The logged model is created in the active experiment, not the run's: point it at ours.
    mlflow.set_experiment(experiment_id=session.experiment_id)
    return mlflow.sklearn.log_model(
        model,
        name=MODEL_NAME_IN_RUN,
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
    for package in ("mlflow", "scikit-learn", "skops", "lightgbm", "pandas", "numpy", "scipy"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


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


# --- Stage 2: Optuna trials as nested runs -------------------------------------------------------

TAG_OPTUNA_STUDY = "optuna.study"
TAG_OPTUNA_TRIAL = "optuna.trial_number"


def logged_trial_numbers(session: TrackingSession, study_name: str) -> set[int]:
    """Trial numbers of ``study_name`` that already have a run, under any parent (resume, workers).

    A FAILED trial run is a record the store lost mid-write (created, never closed): it does not count.
    """
    numbers: set[int] = set()
    token = None
    while True:
        page = session.client.search_runs(
            [session.experiment_id],
            filter_string=f"tags.`{TAG_OPTUNA_STUDY}` = {quote_filter_value(study_name)}",
            max_results=1000,
            page_token=token,
        )
        numbers.update(int(run.data.tags[TAG_OPTUNA_TRIAL]) for run in page if run.info.status != "FAILED")
        token = page.token
        if not token:
            return numbers


# --- Reliability: run ownership, lost connections, stale runs, schema revision ---

# Messages of a store that went away (PostgreSQL/psycopg2, SQLAlchemy, an HTTP server).
_CONNECTION_LOST = re.compile(
    r"server closed the connection|connection refused|terminating connection|could not connect"
    r"|connection (?:is |was |already )?closed|no connection to the server|connection reset"
    r"|the database system is (?:shutting down|starting up|in recovery mode)|ssl connection has been closed"
    r"|max retries exceeded|failed to establish a new connection|connection timed out",
    re.IGNORECASE,
)
_SCHEMA_OUTDATED = re.compile(r"found version (?P<found>\S+), but expected (?P<expected>[^\s).]+)")


def owner_tags() -> dict[str, str]:
    """The host and process that own a run, so a later start can tell whether it is alive."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def _error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) says the tracking store's connection went away."""
    import sqlalchemy

    for link in _error_chain(error):
        if isinstance(link, sqlalchemy.exc.DBAPIError) and link.connection_invalidated:
            return True
        store_error = isinstance(
            link, (sqlalchemy.exc.SQLAlchemyError, mlflow.exceptions.MlflowException, ConnectionError)
        ) or type(link).__module__.split(".")[0] in {"psycopg2", "psycopg", "requests", "urllib3"}
        if store_error and _CONNECTION_LOST.search(str(link)):
            return True
    return False


def connection_lost_error(
    error: BaseException, uri: str = "", run_id: str | None = None, marked: bool = False
) -> TrackingUnavailableError | None:
    """The one-line error for a lost store connection, or None when ``error`` is something else."""
    if not is_connection_lost(error):
        return None
    messages = (str(link).strip() for link in _error_chain(error))
    cause = next((m for m in messages if _CONNECTION_LOST.search(m)), str(error))
    line = next((part.strip() for part in cause.splitlines() if _CONNECTION_LOST.search(part)), cause)
    line = re.sub(r"^\([\w.]+\)\s*", "", line)  # "(psycopg2.OperationalError) ..." -> the message
    if run_id is None:
        outcome = ""
    elif marked:
        outcome = f"; run {run_id} marked FAILED"
    else:
        outcome = f"; run {run_id} left RUNNING, the next start marks it FAILED"
    store = f" {redact_uri(uri)}" if uri else ""
    return TrackingUnavailableError(f"lost the tracking store{store}: {redact(line)[:300]}{outcome}")


def raise_if_connection_lost(
    error: BaseException, session: TrackingSession, run_id: str | None = None, marked: bool = False
) -> None:
    """Raise :func:`connection_lost_error` for ``error`` if it is a lost connection; else return."""
    mapped = connection_lost_error(error, session.uri, run_id, marked)
    if mapped is not None:
        raise mapped from error


def raise_if_schema_outdated(error: BaseException, uri: str) -> None:
    """Turn MLflow's out-of-date schema error into a one-line :class:`SchemaOutdatedError`."""
    match = _SCHEMA_OUTDATED.search(str(error))
    if match is None:
        return
    raise SchemaOutdatedError(
        f"tracking database {redact_uri(uri)} schema is at revision {match['found']}, "
        f"this MLflow needs {match['expected']}: back up and run `python -m pipeline db-upgrade`"
    ) from None


def check_schema_revision(uri: str) -> None:
    """Refuse a tracking database at another schema revision than this MLflow's, before MLflow opens it.

    MLflow itself migrates an existing database silently when a newer revision added
    tables, with no backup; checking first makes every upgrade go through ``db-upgrade``.
    A new, empty database (no revision yet) is left to MLflow to create.
    """
    import sqlalchemy
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, _get_schema_version

    engine = sqlalchemy.create_engine(uri, connect_args=_connect_args(uri))
    try:
        current = _get_schema_version(engine)
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise_if_connection_lost(error, TrackingSession(uri, "", "", None))
        raise
    finally:
        engine.dispose()
    if current is None:
        return
    script = ScriptDirectory.from_config(_get_alembic_config(""))
    (head,) = script.get_heads()
    if current == head:
        return
    known = {revision.revision for revision in script.walk_revisions()}
    if current not in known:
        raise SchemaOutdatedError(
            f"tracking database {redact_uri(uri)} schema is at revision {current}, unknown to this "
            f"MLflow {mlflow.__version__} (it needs {head}): a newer MLflow migrated it; upgrade MLflow"
        )
    raise SchemaOutdatedError(
        f"tracking database {redact_uri(uri)} schema is at revision {current}, "
        f"this MLflow needs {head}: back up and run `python -m pipeline db-upgrade`"
    )


def _process_alive(pid: int, started_ms: int | None) -> bool:
    """Whether ``pid`` on this host is alive and is the process that started the run."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    except (OverflowError, ValueError):
        return False
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # A pid reused by a process born after the run started is not the owner.
        if started_ms is not None and process.create_time() > started_ms / 1000 + 1:
            return False
    except ImportError:
        pass
    except psutil.Error:
        return False
    return True


def _stale_reason(run, host: str, now: float, max_age_hours: float) -> str | None:
    tags = run.data.tags
    if tags.get(TAG_HOST) == host and str(tags.get(TAG_PID, "")).isdigit():
        pid = int(tags[TAG_PID])
        if _process_alive(pid, run.info.start_time):
            return None  # a live pipeline's run, never ours to touch
        return f"stale: process {pid} on {host} that ran it is gone"
    age_hours = (now - (run.info.start_time or 0) / 1000) / 3600
    if age_hours > max_age_hours:
        return f"stale: RUNNING for {age_hours:.1f} h, more than tracking.stale_after_hours={max_age_hours:g}"
    return None


def fail_stale_runs(session: TrackingSession, max_age_hours: float) -> dict[str, str]:
    """Mark RUNNING runs of the experiment whose process is gone (or too old) FAILED.

    A run is stale when it was started on this host by a process that no longer runs,
    or, from another host, started more than ``max_age_hours`` ago. RUNNING child runs
    of a stale or ended parent are stale too. Runs of live processes are never touched,
    so concurrent pipelines are safe. Returns ``{run_id: reason}`` of the runs marked.
    """
    try:
        running = session.client.search_runs(
            [session.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
        )
    except mlflow.exceptions.MlflowException as error:
        raise_if_connection_lost(error, session)
        raise
    host, now = socket.gethostname(), time.time()
    running_ids = {run.info.run_id for run in running}
    live: set[str] = set()
    stale: dict[str, str] = {}
    for run in running:
        reason = _stale_reason(run, host, now, max_age_hours)
        if reason is None and run.data.tags.get(TAG_HOST) == host and TAG_PID in run.data.tags:
            live.add(run.info.run_id)
        elif reason is not None:
            stale[run.info.run_id] = reason
    changed = True
    while changed:  # nested children: repeat until nothing new is found
        changed = False
        for run in running:
            run_id, parent = run.info.run_id, run.data.tags.get(MLFLOW_PARENT_RUN_ID)
            if parent is None or run_id in stale or run_id in live:
                continue
            if parent in stale:
                stale[run_id] = f"stale: parent run {parent} is stale"
                changed = True
            elif parent not in running_ids:
                stale[run_id] = f"stale: parent run {parent} has ended"
                changed = True
    for run_id, reason in stale.items():
        session.client.set_tag(run_id, TAG_FAILURE_REASON, reason)
        session.client.set_terminated(run_id, "FAILED")
        logger.warning("marked run %s FAILED (%s)", run_id, reason)
    return stale


# --- results stage: registry reads and artifacts for the report ---------------------------------------


def registered_models_frame(uri: str, model_name: str | None = None) -> pd.DataFrame:
    """Registered models and every version as ``MlflowClient`` sees them, one row per version."""
    client = MlflowClient(uri)
    columns = [
        "name",
        "version",
        "aliases",
        "status",
        "run_id",
        "source",
        "created",
        "model_description",
        "tags",
    ]
    models = client.search_registered_models(
        filter_string=f"name = {quote_filter_value(model_name)}" if model_name else None,
        max_results=1000,
    )
    rows = []
    for model in models:
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(
            f"name = {quote_filter_value(model.name)}", max_results=10_000
        )
        for version in versions:
            rows.append(
                {
                    "name": model.name,
                    "version": int(version.version),
                    "aliases": ",".join(sorted(aliases_of.get(str(version.version), []))),
                    "status": version.status,
                    "run_id": version.run_id,
                    "source": redact(version.source or ""),
                    "created": pd.to_datetime(version.creation_timestamp, unit="ms", utc=True),
                    "model_description": model.description or "",
                    "tags": json.dumps(dict(sorted((version.tags or {}).items()))),
                }
            )
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["name", "version"], ascending=[True, False]).reset_index(drop=True)


def load_artifact_frame(uri: str, run_id: str, path: str) -> pd.DataFrame | None:
    """A CSV artifact of a run as a DataFrame; None when the run or the file is missing."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as folder:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, tracking_uri=uri, dst_path=folder
            )
            return pd.read_csv(local)
    except Exception as error:  # a missing artifact is a gap in the report, not a failure
        logger.info("no artifact %s in run %s: %s", path, run_id, redact(first_line(error, default="")))
        return None


# --- store status: scripts/check_mlflow_status.py and scripts/launch_mlflow.sh -----------------------


def artifact_root(config: PipelineConfig) -> str:
    """Where the pipeline's experiment keeps artifacts, as a URI (the UI server serves the same)."""
    return _artifact_location(config)


def schema_revisions(uri: str) -> tuple[str | None, str]:
    """``(revision the database is at, revision this MLflow needs)``; the first is None for a server.

    Reads alembic's bookkeeping without creating MLflow's tables, so a status check
    of an empty or out-of-date database leaves it as it was.
    """
    import sqlalchemy
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version

    expected = _get_latest_schema_revision()
    if not _is_database(uri):
        return None, expected
    engine = sqlalchemy.create_engine(uri, connect_args=_connect_args(uri))
    try:
        return _get_schema_version(engine), expected
    finally:
        engine.dispose()


def store_overview(uri: str) -> dict[str, Any]:
    """Experiments, runs per status and registered models (with their champion) of a reachable store."""
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    experiments = []
    for experiment in client.search_experiments(view_type=ViewType.ALL, max_results=1000):
        counts: dict[str, int] = {}
        token = None
        while True:
            page = client.search_runs(
                [experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            for run in page:
                counts[run.info.status] = counts.get(run.info.status, 0) + 1
            token = page.token
            if not token:
                break
        experiments.append(
            {
                "experiment_id": experiment.experiment_id,
                "name": experiment.name,
                "lifecycle_stage": experiment.lifecycle_stage,
                "artifact_location": redact(experiment.artifact_location or ""),
                "runs_by_status": dict(sorted(counts.items())),
            }
        )
    models = []
    for model in client.search_registered_models(max_results=1000):
        aliases = {alias: str(version) for alias, version in sorted((model.aliases or {}).items())}
        name_filter = f"name = {quote_filter_value(model.name)}"
        versions = client.search_model_versions(name_filter, max_results=10_000)
        models.append(
            {
                "name": model.name,
                "versions": len(versions),
                "aliases": aliases,
                "champion": aliases.get("champion"),
            }
        )
    totals: dict[str, int] = {}
    for experiment in experiments:
        for status, count in experiment["runs_by_status"].items():
            totals[status] = totals.get(status, 0) + count
    return {
        "experiments": experiments,
        "runs_by_status": dict(sorted(totals.items())),
        "registered_models": models,
    }


def end_running_children(session: TrackingSession, parent_run_id: str, status: str, reason: str) -> list[str]:
    """Close the still-RUNNING child runs of a parent that ended early; returns their ids."""
    running = session.client.search_runs(
        [session.experiment_id],
        filter_string=(
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = {quote_filter_value(parent_run_id)} "
            "and attributes.status = 'RUNNING'"
        ),
        max_results=5000,
    )
    for child in running:
        session.client.set_tag(child.info.run_id, TAG_FAILURE_REASON, reason[:_MAX_TAG_LENGTH])
        session.client.set_terminated(child.info.run_id, status)
    return [child.info.run_id for child in running]


def quote_filter_key(key: str) -> str:
    """A tag or param key for MLflow's filter syntax (backquoted); rejects what it cannot quote."""
    if not key or "`" in key:
        raise LookupFailedError(f"key {key!r} cannot be used in an MLflow filter: empty or has a backquote")
    return f"`{key}`"


# --- Stage 3: the model registry (aliases and tags; registry stages only mirrored on request) ----

ALIAS_CHAMPION = "champion"
ALIAS_PREVIOUS = "previous"
ALIAS_CHALLENGER = "challenger"
# Errors another registration racing ours can cause; retried with bounded back-off.
_RETRYABLE_REGISTRY_CODES = {
    "RESOURCE_ALREADY_EXISTS",
    "ABORTED",
    "TEMPORARILY_UNAVAILABLE",
    "INTERNAL_ERROR",
}
_REGISTRY_ATTEMPTS = 5
_REGISTRY_BACKOFF_SECONDS = 0.2


def _retryable_registry_error(error: BaseException) -> bool:
    import sqlalchemy

    if isinstance(error, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError)):
        return True
    code = getattr(error, "error_code", "")
    return isinstance(error, mlflow.exceptions.MlflowException) and code in _RETRYABLE_REGISTRY_CODES


def _with_registry_retries(action, what: str):
    """Run ``action()``; on an integrity or busy error, retry with exponential back-off."""
    for attempt in range(_REGISTRY_ATTEMPTS):
        try:
            return action()
        except Exception as error:
            if attempt == _REGISTRY_ATTEMPTS - 1 or not _retryable_registry_error(error):
                raise
            delay = _REGISTRY_BACKOFF_SECONDS * 2**attempt
            logger.info("%s failed (%s); retrying in %.1f s", what, str(error).splitlines()[0][:200], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def ensure_registered_model(session: TrackingSession, name: str) -> None:
    """Create the registered model unless it exists (another process may create it meanwhile)."""

    def attempt() -> None:
        try:
            session.client.get_registered_model(name)
        except mlflow.exceptions.MlflowException as error:
            if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                session.client.create_registered_model(
                    name, description="Loan default classifier behind the champion/challenger gate"
                )
            except mlflow.exceptions.MlflowException as created:
                if getattr(created, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise

    _with_registry_retries(attempt, f"creating registered model {name!r}")


def model_versions_with_tag(session: TrackingSession, name: str, key: str, value: str) -> list:
    """Versions of ``name`` whose tag ``key`` equals ``value``, oldest first."""
    found = session.client.search_model_versions(
        f"name = {quote_filter_value(name)} and tags.`{key}` = {quote_filter_value(value)}"
    )
    return sorted(found, key=lambda version: int(version.version))


def create_model_version(
    session: TrackingSession,
    name: str,
    model_uri: str,
    run_id: str,
    model_id: str | None,
    tags: Mapping[str, str],
    unique_tag: str,
):
    """Register ``model_uri`` as a new version carrying ``tags`` from the start.

    ``tags[unique_tag]`` identifies the registration: after a failed attempt the version
    is looked up by it before trying again, so a create that reached the store but
    raised is never repeated.
    """
    ensure_registered_model(session, name)
    clean = {key: redact(str(value))[:_MAX_TAG_LENGTH] for key, value in tags.items()}

    def attempt():
        try:
            return session.client.create_model_version(
                name, model_uri, run_id=run_id, tags=clean, model_id=model_id
            )
        except Exception:
            existing = model_versions_with_tag(session, name, unique_tag, clean[unique_tag])
            if existing:
                return existing[0]
            raise

    return _with_registry_retries(attempt, f"registering a version of {name!r}")


def get_model_version(session: TrackingSession, name: str, version: str):
    return session.client.get_model_version(name, str(version))


def alias_version(session: TrackingSession, name: str, alias: str):
    """The version ``alias`` points to, or None."""
    try:
        return session.client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as error:
        if getattr(error, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


def set_alias(session: TrackingSession, name: str, alias: str, version: str) -> None:
    _with_registry_retries(
        lambda: session.client.set_registered_model_alias(name, alias, str(version)),
        f"moving alias {alias!r} of {name!r}",
    )


def delete_alias(session: TrackingSession, name: str, alias: str) -> None:
    _with_registry_retries(
        lambda: session.client.delete_registered_model_alias(name, alias),
        f"removing alias {alias!r} of {name!r}",
    )


def set_version_tags(session: TrackingSession, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a model version in order (the registry has no batch call)."""
    for key, value in tags.items():
        _with_registry_retries(
            lambda key=key, value=value: session.client.set_model_version_tag(
                name, str(version), key, redact(str(value))[:_MAX_TAG_LENGTH]
            ),
            f"tagging version {version} of {name!r}",
        )


def mirror_stage(session: TrackingSession, name: str, version: str, stage: str) -> None:
    """Also move the deprecated registry stage (``register.mirror_stages``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session.client.transition_model_version_stage(name, str(version), stage)


@contextmanager
def registry_lock(session: TrackingSession, name: str) -> Iterator[None]:
    """One registration at a time per registered model, across processes."""
    with cross_process_lock(session.uri, f"mlflow-registry:{name}") as locked:
        if not locked:
            logger.warning(
                "no cross-process registry lock for %s; relying on tags and retries", session.safe_uri
            )
        yield


@contextmanager
def quiet_artifact_downloads() -> Iterator[None]:
    """No download progress bars (a command's stderr is one line on error, stdout its report)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as progress_bar

    before = os.environ.get(progress_bar.name)
    os.environ[progress_bar.name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(progress_bar.name, None)
        else:
            os.environ[progress_bar.name] = before


def finished_stage_run(session: TrackingSession, stage: str, run_id: str | None, what: str):
    """Run ``run_id``, checked to be a FINISHED parent run of ``stage``; or the latest such run.

    ``what`` names the stage in messages ("optimization"). Raises LookupFailedError.
    """
    if run_id is None:
        runs = search_stage_runs(session, stage, max_results=1)
        if not runs:
            raise LookupFailedError(f"no finished {what} run in experiment '{session.experiment_name}'")
        return runs[0]
    run = get_run(session, run_id)
    tags = run.data.tags
    if tags.get(TAG_STAGE) != stage or tags.get(TAG_ROLE) != "stage":
        raise LookupFailedError(f"run {run_id} is not a parent run of the {stage} stage")
    if run.info.status != "FINISHED":
        raise LookupFailedError(f"{what} run {run_id} is {run.info.status}, not FINISHED")
    return run
