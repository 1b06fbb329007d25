"""A tracking store's core tables read through MLflow's API, for a tracking server (or Databricks,
Azure ML) whose database the results stage cannot open.

Experiments, runs, params, metrics (every step), tags, datasets and inputs, logged models with their
metrics, params and tags, registered models, versions, their tags and aliases: one DataFrame per
MLflow backend table, named like it, in the columns the API can fill. Ids MLflow keeps only inside
its database (dataset and input uuids) are derived from what identifies the row; a run's source
columns come from its ``mlflow.source.*`` tags, where MLflow keeps them now. Everything is read in
pages, metric histories in bulk (100 runs per request, in parallel) where the server offers it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pandas as pd
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.settings import redact_uri
from pipeline.tracking import keys, store

logger = logging.getLogger(__name__)

# The tables a snapshot holds, with their columns (MLflow's own names and order).
COLUMNS: dict[str, tuple[str, ...]] = {
    "experiments": (
        "experiment_id",
        "name",
        "artifact_location",
        "lifecycle_stage",
        "creation_time",
        "last_update_time",
        "workspace",
    ),
    "experiment_tags": ("key", "value", "experiment_id"),
    "runs": (
        "run_uuid",
        "name",
        "source_type",
        "source_name",
        "entry_point_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "source_version",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
        "deleted_time",
    ),
    "params": ("key", "value", "run_uuid"),
    "metrics": ("key", "value", "timestamp", "run_uuid", "step", "is_nan"),
    "latest_metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "tags": ("key", "value", "run_uuid"),
    "datasets": (
        "dataset_uuid",
        "experiment_id",
        "name",
        "digest",
        "dataset_source_type",
        "dataset_source",
        "dataset_schema",
        "dataset_profile",
    ),
    "inputs": ("input_uuid", "source_type", "source_id", "destination_type", "destination_id", "step"),
    "input_tags": ("input_uuid", "name", "value"),
    "logged_models": (
        "model_id",
        "experiment_id",
        "name",
        "artifact_location",
        "creation_timestamp_ms",
        "last_updated_timestamp_ms",
        "status",
        "lifecycle_stage",
        "model_type",
        "source_run_id",
        "status_message",
    ),
    "logged_model_metrics": (
        "model_id",
        "metric_name",
        "metric_timestamp_ms",
        "metric_step",
        "metric_value",
        "experiment_id",
        "run_id",
        "dataset_uuid",
        "dataset_name",
        "dataset_digest",
    ),
    "logged_model_params": ("model_id", "experiment_id", "param_key", "param_value"),
    "logged_model_tags": ("model_id", "experiment_id", "tag_key", "tag_value"),
    "registered_models": ("name", "creation_time", "last_updated_time", "description", "workspace"),
    "registered_model_tags": ("key", "value", "name", "workspace"),
    "model_versions": (
        "name",
        "version",
        "creation_time",
        "last_updated_time",
        "description",
        "user_id",
        "current_stage",
        "source",
        "run_id",
        "status",
        "status_message",
        "run_link",
        "storage_location",
        "workspace",
    ),
    "model_version_tags": ("key", "value", "name", "version", "workspace"),
    "registered_model_aliases": ("alias", "version", "name", "workspace"),
}

RUNS_PER_PAGE = 5_000
HISTORY_RUNS_PER_REQUEST = 100  # the server's limit for one bulk request
HISTORY_ROWS_PER_REQUEST = 25_000  # ... and the most rows it returns: a full answer may be cut short
HISTORY_THREADS = 4
BULK_HISTORY_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
# MLflow's tags holding what its runs table keeps in columns (mlflow.utils.mlflow_tags).
_ENTRY_POINT_TAG = "mlflow.project.entryPoint"

Rows = dict[str, list[tuple]]


def derived_id(*parts: Any) -> str:
    """A stable 32-hex id for a row MLflow identifies by an id the API does not return."""
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32]


def _pages(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search; ``fetch(page_token)`` returns one page."""
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def read_tables(uri: str) -> dict[str, pd.DataFrame]:
    """Every core table of the store at ``uri``, read through MLflow's client.

    Metric histories are asked for while the runs are still being paged through (each full batch of
    100 runs logging a key as soon as it is known), so the server works on both at once.
    """
    client = MlflowClient(uri)
    histories = _Histories(uri, client)
    rows: Rows = defaultdict(list)
    experiments = list(
        _pages(
            lambda token: client.search_experiments(
                view_type=ViewType.ALL, max_results=1000, page_token=token
            )
        )
    )
    for experiment in experiments:
        _add_experiment(rows, experiment)
    with ThreadPoolExecutor(max_workers=HISTORY_THREADS, thread_name_prefix="metric-history") as pool:
        asked: list[Future] = []
        for experiment in experiments:
            waiting: dict[str, list[str]] = defaultdict(list)  # metric key -> runs not yet asked about
            runs = _pages(
                lambda token, e=experiment.experiment_id: client.search_runs(
                    [e], run_view_type=ViewType.ALL, max_results=RUNS_PER_PAGE, page_token=token
                )
            )
            for run in runs:
                _add_run(rows, run)
                for key in run.data.metrics:
                    waiting[key].append(run.info.run_id)
                    if len(waiting[key]) == HISTORY_RUNS_PER_REQUEST:
                        asked.append(pool.submit(histories.read, key, waiting.pop(key)))
            asked += [pool.submit(histories.read, key, run_ids) for key, run_ids in waiting.items()]
        _add_models(rows, client, [e.experiment_id for e in experiments])
        for future in asked:
            rows["metrics"] += future.result()
    frames = {
        name: pd.DataFrame(rows.get(name, []), columns=list(columns)) for name, columns in COLUMNS.items()
    }
    frames["datasets"] = frames["datasets"].drop_duplicates("dataset_uuid", ignore_index=True)
    frames["latest_metrics"] = latest_metrics(frames["metrics"])
    return frames


def _add_models(rows: Rows, client: MlflowClient, experiment_ids: list[str]) -> None:
    """Logged models, registered models and their versions."""
    for start in range(0, len(experiment_ids), 100):
        batch = experiment_ids[start : start + 100]
        for model in _pages(lambda token, b=batch: client.search_logged_models(b, page_token=token)):
            _add_logged_model(rows, model)
    for model in _pages(lambda token: client.search_registered_models(max_results=1000, page_token=token)):
        _add_registered_model(rows, model)
    for version in _pages(lambda token: client.search_model_versions(max_results=10_000, page_token=token)):
        _add_model_version(rows, version)


def latest_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """MLflow's latest value per run and key: the highest step, then the newest, then the largest value."""
    ordered = metrics.sort_values(["run_uuid", "key", "step", "timestamp", "value"], kind="mergesort")
    last = ordered.drop_duplicates(["run_uuid", "key"], keep="last")
    return last.reindex(columns=list(COLUMNS["latest_metrics"])).reset_index(drop=True)


# --- One entity into rows ---------------------------------------------------------------------------


def _add_experiment(rows: Rows, experiment) -> None:
    eid = experiment.experiment_id
    rows["experiments"].append(
        (
            eid,
            experiment.name,
            experiment.artifact_location,
            experiment.lifecycle_stage,
            experiment.creation_time,
            experiment.last_update_time,
            getattr(experiment, "workspace", None),
        )
    )
    rows["experiment_tags"] += [(key, value, eid) for key, value in (experiment.tags or {}).items()]


def _add_run(rows: Rows, run) -> None:
    info, tags, run_id = run.info, run.data.tags, run.info.run_id
    rows["runs"].append(
        (
            run_id,
            info.run_name,
            tags.get(keys.TAG_SOURCE_TYPE),
            tags.get(keys.TAG_SOURCE_NAME),
            tags.get(_ENTRY_POINT_TAG),
            info.user_id,
            info.status,
            info.start_time,
            info.end_time,
            tags.get(keys.TAG_SOURCE_GIT_COMMIT),
            info.lifecycle_stage,
            info.artifact_uri,
            info.experiment_id,
            None,  # when a deleted run was deleted: not in the API
        )
    )
    rows["params"] += [(key, value, run_id) for key, value in run.data.params.items()]
    rows["tags"] += [(key, value, run_id) for key, value in tags.items()]
    inputs = run.inputs
    for dataset_input in (inputs.dataset_inputs if inputs else None) or []:
        dataset = dataset_input.dataset
        dataset_uuid = derived_id(info.experiment_id, dataset.name, dataset.digest)
        rows["datasets"].append(  # one row per run that used it; made unique in read_tables
            (
                dataset_uuid,
                info.experiment_id,
                dataset.name,
                dataset.digest,
                dataset.source_type,
                dataset.source,
                dataset.schema,
                dataset.profile,
            )
        )
        input_uuid = derived_id("DATASET", dataset_uuid, "RUN", run_id)
        rows["inputs"].append((input_uuid, "DATASET", dataset_uuid, "RUN", run_id, 0))
        rows["input_tags"] += [(input_uuid, tag.key, tag.value) for tag in dataset_input.tags]
    for model in (inputs.model_inputs if inputs else None) or []:
        link = ("RUN_INPUT", run_id, "MODEL_INPUT", model.model_id)
        rows["inputs"].append((derived_id(*link), *link, 0))
    for model in (run.outputs.model_outputs if run.outputs else None) or []:
        link = ("RUN_OUTPUT", run_id, "MODEL_OUTPUT", model.model_id)
        rows["inputs"].append((derived_id(*link), *link, model.step))


def _add_logged_model(rows: Rows, model) -> None:
    mid, eid = model.model_id, model.experiment_id
    # The database keeps the status as its protobuf number (READY is 2).
    status = model.status.to_proto() if hasattr(model.status, "to_proto") else model.status
    rows["logged_models"].append(
        (
            mid,
            eid,
            model.name,
            model.artifact_location,
            model.creation_timestamp,
            model.last_updated_timestamp,
            status,
            "active",  # searches return active models only
            model.model_type,
            model.source_run_id,
            model.status_message,
        )
    )
    for metric in model.metrics or []:
        dataset = derived_id(eid, metric.dataset_name, metric.dataset_digest) if metric.dataset_name else None
        rows["logged_model_metrics"].append(
            (
                mid,
                metric.key,
                metric.timestamp,
                metric.step,
                metric.value,
                eid,
                metric.run_id,
                dataset,
                metric.dataset_name,
                metric.dataset_digest,
            )
        )
    rows["logged_model_params"] += [(mid, eid, key, value) for key, value in (model.params or {}).items()]
    rows["logged_model_tags"] += [(mid, eid, key, value) for key, value in (model.tags or {}).items()]


def _add_registered_model(rows: Rows, model) -> None:
    workspace = getattr(model, "workspace", None)
    rows["registered_models"].append(
        (model.name, model.creation_timestamp, model.last_updated_timestamp, model.description, workspace)
    )
    rows["registered_model_tags"] += [(k, v, model.name, workspace) for k, v in (model.tags or {}).items()]
    rows["registered_model_aliases"] += [
        (alias, int(version), model.name, workspace) for alias, version in (model.aliases or {}).items()
    ]


def _add_model_version(rows: Rows, version) -> None:
    workspace = getattr(version, "workspace", None)
    number = int(version.version)
    rows["model_versions"].append(
        (
            version.name,
            number,
            version.creation_timestamp,
            version.last_updated_timestamp,
            version.description,
            version.user_id,
            version.current_stage,
            version.source,
            version.run_id,
            version.status,
            version.status_message,
            version.run_link,
            None,  # where the registry copied the files: not in the API
            workspace,
        )
    )
    rows["model_version_tags"] += [
        (key, value, version.name, number, workspace) for key, value in (version.tags or {}).items()
    ]


# --- Metric histories -------------------------------------------------------------------------------


def _metric_row(key: str, value: float, timestamp: int, run_id: str, step: int) -> tuple:
    nan = isinstance(value, float) and math.isnan(value)
    return (key, value, timestamp, run_id, step, nan)


class _NoBulkEndpoint(Exception):
    """The server answers the bulk metric-history endpoint with 404 (not an MLflow server's UI API)."""


def _bulk_history(uri: str, key: str, run_ids: list[str]) -> list[tuple] | None:
    """One request for the history of ``key`` in up to 100 runs; None when the answer may be cut short."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    params = [
        ("metric_key", key),
        ("max_results", HISTORY_ROWS_PER_REQUEST),
        *(("run_id", r) for r in run_ids),
    ]
    response = http_request(get_default_host_creds(uri), BULK_HISTORY_ENDPOINT, "GET", params=params)
    if response.status_code == 404:
        raise _NoBulkEndpoint(BULK_HISTORY_ENDPOINT)
    found = verify_rest_response(response, BULK_HISTORY_ENDPOINT).json().get("metrics", [])
    if len(found) >= HISTORY_ROWS_PER_REQUEST:
        return None
    return [_metric_row(key, m["value"], m["timestamp"], m["run_id"], m.get("step", 0)) for m in found]


def _history_one_by_one(client: MlflowClient, key: str, run_ids: Iterable[str]) -> list[tuple]:
    return [
        _metric_row(key, m.value, m.timestamp, run_id, m.step)
        for run_id in run_ids
        for m in client.get_metric_history(run_id, key)
    ]


class _Histories:
    """Every logged value of a metric in some runs: in bulk from an MLflow server, run by run from
    others (or once an MLflow server turns out to have no bulk endpoint)."""

    def __init__(self, uri: str, client: MlflowClient):
        self.uri, self.client = uri, client
        self.bulk = store.scheme(uri) in {"http", "https"}

    def read(self, key: str, run_ids: list[str]) -> list[tuple]:
        if self.bulk:
            try:
                found = _bulk_history(self.uri, key, run_ids)
            except (MlflowException, _NoBulkEndpoint) as error:
                if store.access_error(error) is not None:
                    raise
                logger.info(
                    "no bulk metric history at %s (%s): reading run by run", redact_uri(self.uri), error
                )
                self.bulk = False
                found = None
            if found is not None:
                return found
        return _history_one_by_one(self.client, key, run_ids)
