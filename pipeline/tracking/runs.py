"""Stage runs and what they log: provenance tags, batched params/metrics/tags, child runs, artifacts.

Logging is batched (one round trip per run, not per value), and a stage run always ends in a
final state: FINISHED, or FAILED/KILLED with the reason in a tag.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag

import pipeline
from pipeline import termination
from pipeline.config import PipelineConfig
from pipeline.errors import first_line
from pipeline.settings import ci_repository_url, ci_run_url, redact, run_user, temporary_environment
from pipeline.tracking import keys, store
from pipeline.tracking.session import TrackingSession, open_session
from pipeline.tracking.sweep import end_running_children, fail_stale_runs

logger = logging.getLogger(__name__)


class Dataset(Protocol):
    """What provenance needs of a loaded dataset (:class:`pipeline.data.Dataset`)."""

    name: str
    digest: str
    source: str
    target: pd.Series

    def frame(self) -> pd.DataFrame: ...


class Split(Protocol):
    """What provenance needs of a train/test split (:class:`pipeline.data.Split`)."""

    train_index: Any
    test_index: Any
    train_digest: str
    test_digest: str


# MLflow's own limits for one log_batch call.
_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
MAX_TAG_LENGTH = 5000


def connect(config: PipelineConfig) -> TrackingSession:
    """Open the configured store and experiment, and mark runs of processes that are gone FAILED."""
    session = open_session(config)
    fail_stale_runs(session, config.tracking.stale_after_hours)
    return session


# --- Provenance -------------------------------------------------------------------------------------


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


def source_tags(commit: str, stage: str) -> dict[str, str]:
    """MLflow's standard tags, so its UI shows who ran a run, from which command and commit, and in
    CI the job's page (``client.create_run`` sets none of them, unlike ``mlflow.start_run``)."""
    tags = {
        keys.TAG_MLFLOW_USER: run_user(),
        keys.TAG_SOURCE_NAME: f"python -m pipeline {stage}",
        keys.TAG_SOURCE_TYPE: keys.SOURCE_TYPE_LOCAL,
    }
    if commit != "unknown":
        tags[keys.TAG_SOURCE_GIT_COMMIT] = commit.removesuffix("-dirty")
    if (run_url := ci_run_url()) is not None:
        tags[keys.TAG_SOURCE_TYPE] = keys.SOURCE_TYPE_JOB
        tags[keys.TAG_CI_RUN_URL] = run_url
    if (repository := ci_repository_url()) is not None:
        tags[keys.TAG_SOURCE_GIT_REPO] = repository
    return tags


def owner_tags() -> dict[str, str]:
    """The host and process that own a run, so a later start can tell whether it is alive."""
    return {keys.TAG_HOST: socket.gethostname(), keys.TAG_PID: str(os.getpid())}


def base_tags(
    config: PipelineConfig, stage: str, dataset: Dataset | None = None, split: Split | None = None
) -> dict[str, str]:
    """Tags every run of a stage carries: provenance and the data it saw."""
    commit = git_commit(config.root)
    if commit == "unknown":  # a config outside the checkout: the commit of the code itself
        commit = git_commit(Path(pipeline.__file__).resolve().parent)
    tags = {
        **source_tags(commit, stage),
        keys.TAG_STAGE: stage,
        keys.TAG_VERSION: pipeline.__version__,
        keys.TAG_GIT_COMMIT: commit,
        **owner_tags(),
    }
    if config.profile:
        tags[keys.TAG_PROFILE] = config.profile
    if dataset is not None:
        tags[keys.TAG_DATASET_NAME] = dataset.name
        tags[keys.TAG_DATASET_DIGEST] = dataset.digest
    if split is not None:
        tags[keys.TAG_TRAIN_DIGEST] = split.train_digest
        tags[keys.TAG_TEST_DIGEST] = split.test_digest
    return tags


# --- Batched logging --------------------------------------------------------------------------------


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
    tag_list = [RunTag(k, redact(str(v))[:MAX_TAG_LENGTH]) for k, v in (tags or {}).items()]
    while param_list or metric_list or tag_list:
        batch_params, param_list = param_list[:_MAX_PARAMS_PER_BATCH], param_list[_MAX_PARAMS_PER_BATCH:]
        batch_tags, tag_list = tag_list[:_MAX_TAGS_PER_BATCH], tag_list[_MAX_TAGS_PER_BATCH:]
        room = _MAX_METRICS_PER_BATCH - len(batch_params) - len(batch_tags)
        batch_metrics, metric_list = metric_list[:room], metric_list[room:]
        session.client.log_batch(run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)


def log_model_metrics(
    session: TrackingSession,
    run_id: str,
    model_id: str,
    metrics: Mapping[str, float],
    dataset: tuple[str, str] | None = None,
) -> None:
    """Metrics of a logged model, recorded on its run too: the model's page in the UI lists them,
    with the dataset (name, digest) they were measured on."""
    now = int(time.time() * 1000)
    name, digest = dataset or (None, None)
    items = [
        Metric(k, float(v), now, 0, model_id=model_id, dataset_name=name, dataset_digest=digest)
        for k, v in metrics.items()
    ]
    for start in range(0, len(items), _MAX_METRICS_PER_BATCH):
        session.client.log_batch(run_id, metrics=items[start : start + _MAX_METRICS_PER_BATCH])


# --- Runs -------------------------------------------------------------------------------------------


def raise_if_store_failed(
    error: BaseException, session: TrackingSession, run_id: str | None = None, marked: bool = False
) -> None:
    """Raise the one-line error for a lost or refusing store if that is what ``error`` is; else return."""
    mapped = store.store_error(error, session.uri, run_id, marked)
    if mapped is not None:
        raise mapped from error


@contextmanager
def stage_run(session: TrackingSession, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
    """A parent run for one stage; yields its id.

    It ends FINISHED on success, and FAILED (KILLED on Ctrl-C or SIGTERM) with the reason
    in a tag on any error, so no failed work is left RUNNING or FINISHED.
    """
    try:
        with termination.deferred():  # a signal here would leave a run no one marks
            run = session.client.create_run(
                session.experiment_id,
                run_name=run_name,
                tags={**tags, **owner_tags(), keys.TAG_ROLE: keys.ROLE_STAGE},
            )
    except Exception as error:
        raise_if_store_failed(error, session)
        raise
    run_id = run.info.run_id
    try:
        termination.raise_if_received()
        yield run_id
        # A library caught the signal's exception and carried on: SIGTERM still ends the run.
        termination.raise_if_received()
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) or termination.received() else "FAILED"
        marked = _mark_ended(
            session, run_id, status, f"{type(error).__name__}: {error}".splitlines()[0], error
        )
        if not marked:
            # Never hide the cause; the next start sweeps the run (its process will be gone).
            error.add_note(f"run {run_id} left RUNNING; the next start marks it FAILED")
            logger.info("could not mark run %s %s; the next start marks it FAILED", run_id, status)
        if isinstance(error, Exception):
            raise_if_store_failed(error, session, run_id=run_id, marked=marked)
        raise
    try:
        session.client.set_terminated(run_id, "FINISHED")
    except Exception as error:
        raise_if_store_failed(error, session, run_id=run_id, marked=False)
        raise
    if (link := store.ui_url(session.uri, session.experiment_id, run_id)) is not None:
        logger.info("run %s in MLflow's UI: %s", run_id, link)


def _mark_ended(
    session: TrackingSession, run_id: str, status: str, reason: str, cause: BaseException
) -> bool:
    """Record why a run ended and close it and its running children; whether that reached the store."""
    # A signal can land mid-write and leave the store briefly busy: retry a little.
    for attempt in range(3):
        try:
            session.client.set_tag(run_id, keys.TAG_FAILURE_REASON, redact(reason)[:MAX_TAG_LENGTH])
            session.client.set_terminated(run_id, status)
            end_running_children(session, run_id, status, f"parent run ended {status}: {redact(reason)}")
            return True
        except Exception as marking_error:  # the store may be the thing that failed
            if store.is_connection_lost(cause) or store.is_connection_lost(marking_error):
                return False
            logger.debug(
                "marking run %s %s failed (attempt %d): %s", run_id, status, attempt + 1, marking_error
            )
            time.sleep(0.5 * (attempt + 1))
    return False


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
        tags={**tags, keys.TAG_PARENT_RUN: parent_run_id, keys.TAG_RUN_NAME: run_name},
    )
    log_batch(session, run.info.run_id, params=params, metrics=metrics)
    session.client.set_terminated(run.info.run_id, status)
    return run.info.run_id


# --- Inputs and artifacts ---------------------------------------------------------------------------


def log_datasets(
    session: TrackingSession, run_id: str, dataset: Dataset, split: Split
) -> dict[str, tuple[str, str]]:
    """Log the train and test parts as MLflow dataset inputs of ``run_id``; ``{context: (name, digest)}``."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    frame = dataset.frame()
    inputs, logged = [], {}
    for context, index in (("train", split.train_index), ("test", split.test_index)):
        part = from_pandas(
            frame.iloc[index].reset_index(drop=True),
            source=dataset.source if dataset.source.endswith((".csv", ".parquet")) else None,
            targets=dataset.target.name,
            name=f"{dataset.name}-{context}",
        )
        _set_schema_from_deciding_rows(part)
        inputs.append(
            DatasetInput(part._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        )
        logged[context] = (part.name, part.digest)
    session.client.log_inputs(run_id, datasets=inputs)
    return logged


# MLflow infers a dataset's schema value by value: 12 s of interpreter time at 750,000 rows. The
# columns are typed by pipeline.data, so the rows that decide the schema are enough: the first ones,
# and for every column its first missing and first present value (which make it optional or not).
SCHEMA_HEAD_ROWS = 1_000


def schema_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` that decide its inferred MLflow schema (see SCHEMA_HEAD_ROWS)."""
    if len(frame) <= SCHEMA_HEAD_ROWS:
        return frame
    missing = frame.isna().to_numpy()
    first_missing = missing.argmax(axis=0)[missing.any(axis=0)]
    first_present = (~missing).argmax(axis=0)[(~missing).any(axis=0)]
    positions = np.union1d(np.arange(SCHEMA_HEAD_ROWS), np.r_[first_missing, first_present])
    return frame.iloc[positions]


def _set_schema_from_deciding_rows(part) -> None:
    """Give an MLflow PandasDataset the schema of its deciding rows, computed once (its ``schema`` is a
    cached property, whose value lives in the instance's dict); left to MLflow otherwise."""
    from mlflow.models import infer_signature

    if isinstance(getattr(type(part), "schema", None), functools.cached_property):
        part.__dict__["schema"] = infer_signature(schema_rows(part.df)).inputs


# How ``split_record`` writes the split: one bit per row of the dataset (1: the row is held out for
# the test part), packed by ``numpy.packbits``, zlib-compressed, base64. 125 kB for a million rows,
# where a JSON list of every position took about 14 MB and a second to write and read.
SPLIT_FORMAT = "test-mask/packbits-zlib-base64"


def _positions_digest(positions: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(positions, dtype=np.int64)).tobytes()).hexdigest()[:16]


def split_record(split: Split) -> dict[str, Any]:
    """The train and test row positions in a compact JSON form (see ``SPLIT_FORMAT``), with digests."""
    train = np.asarray(split.train_index, dtype=np.int64)
    test = np.asarray(split.test_index, dtype=np.int64)
    n_rows = len(train) + len(test)
    mask = np.zeros(n_rows, dtype=bool)
    mask[test] = True
    if mask[train].any() or mask.sum() != len(test):
        raise ValueError("the train and test parts must cover every row once")
    packed = base64.b64encode(zlib.compress(np.packbits(mask).tobytes(), level=6)).decode("ascii")
    return {
        "format": SPLIT_FORMAT,
        "n_rows": n_rows,
        "n_train": len(train),
        "n_test": len(test),
        "train_sha256": _positions_digest(train),
        "test_sha256": _positions_digest(test),
        "test_mask": packed,
    }


def split_positions(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row positions from a logged split: the compact form or the older
    ``{"train": [...], "test": [...]}`` lists. Raises ValueError when the record does not add up."""
    if "format" not in record:
        train = np.sort(np.asarray(record.get("train", []), dtype=np.int64))
        test = np.sort(np.asarray(record.get("test", []), dtype=np.int64))
        return train, test
    if record["format"] != SPLIT_FORMAT:
        raise ValueError(f"unknown split format {record['format']!r}")
    n_rows = int(record["n_rows"])
    bits = np.frombuffer(zlib.decompress(base64.b64decode(record["test_mask"])), dtype=np.uint8)
    mask = np.unpackbits(bits, count=n_rows).astype(bool)
    train, test = np.flatnonzero(~mask), np.flatnonzero(mask)
    if (
        len(test) != int(record["n_test"])
        or _positions_digest(train) != record["train_sha256"]
        or _positions_digest(test) != record["test_sha256"]
    ):
        raise ValueError("the logged split does not match its own digests")
    return train, test


def log_split(session: TrackingSession, run_id: str, split: Split) -> None:
    """The train and test row positions, so a later stage can check it holds out the same rows."""
    session.client.log_dict(run_id, split_record(split), keys.ARTIFACT_SPLIT)


def read_split(session: TrackingSession, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row positions a run logged with ``log_split``."""
    with quiet_artifact_downloads():
        record = json.loads(download_artifact_text(session, run_id, keys.ARTIFACT_SPLIT))
    return split_positions(record)


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


@contextmanager
def quiet_artifact_downloads() -> Iterator[None]:
    """No download progress bars (a command's stderr is one line on error, stdout its report)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as progress_bar

    with temporary_environment(**{progress_bar.name: "false"}):
        yield


def download_artifact_text(session: TrackingSession, run_id: str, path: str) -> str:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=session.uri)
    return Path(local).read_text(encoding="utf-8")


def load_artifact_frame(uri: str, run_id: str, path: str) -> pd.DataFrame | None:
    """A CSV artifact of a run as a DataFrame; None when the run or the file is missing."""
    try:
        with tempfile.TemporaryDirectory() as folder, quiet_artifact_downloads():
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, tracking_uri=uri, dst_path=folder
            )
            return pd.read_csv(local)
    except Exception as error:  # a missing artifact is a gap in the report, not a failure
        logger.info("no artifact %s in run %s: %s", path, run_id, redact(first_line(error, default="")))
        return None
