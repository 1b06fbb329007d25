"""Opening the tracking store: reachability, the schema check, MLflow's engines, the experiment."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError, LookupFailedError
from pipeline.settings import (
    ARTIFACT_ROOT_ENV,
    artifact_root_override,
    redact_uri,
    temporary_environment,
    tracking_uri,
)
from pipeline.tracking import keys, store

logger = logging.getLogger(__name__)


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


def artifact_location(config: PipelineConfig, uri: str | None = None) -> str | None:
    """Where a new experiment keeps artifacts, as a URI (the UI server serves the same).

    None for a tracking server without ``PIPELINE_ARTIFACT_ROOT``: the server decides (with
    ``--serve-artifacts``, its own ``mlflow-artifacts:`` store, which every client reaches through it).
    A folder on this machine is refused for a server: other clients could never read those files.
    """
    override = artifact_root_override()
    if uri is not None and store.is_server(uri):
        if override is None:
            return None
        if store.is_local_location(override):
            raise ConfigError(
                f"{ARTIFACT_ROOT_ENV}={override} is a folder on this machine, but the tracking store is the "
                f"server {redact_uri(uri)}: unset it to let the server keep the artifacts, or give a "
                "shared location (s3://, gs://, wasbs://)"
            )
        return override
    location = override or config.tracking.artifact_location
    if "://" in location:
        return location
    return config.resolve(location).as_uri()


def team_artifact_problem(
    config: PipelineConfig, uri: str, existing_location: str | None = None
) -> str | None:
    """Why a team's store would lose the files of its runs, or None.

    A database store shared by a team with an artifact root on this machine (a CI runner's folder,
    gone after the job) keeps runs whose files nobody can read later: the next gate could not load
    the champion. ``existing_location``: where the experiment already keeps them, if it exists.
    A tracking server keeps the files itself; a SQLite file is one machine's store anyway.
    """
    if not store.is_database(uri) or store.sqlite_file(uri) is not None:
        return None
    if existing_location is not None:
        if not store.is_local_location(existing_location):
            return None
        return (
            f"experiment '{config.tracking.experiment}' on the team store {redact_uri(uri)} keeps its "
            f"artifacts in {existing_location}, a folder of the machine that created it: choose a new "
            f"tracking.experiment with {ARTIFACT_ROOT_ENV} set to shared storage, or track through an "
            "MLflow server"
        )
    location = artifact_location(config, uri)
    if location is None or not store.is_local_location(location):
        return None
    return (
        f"the team store {redact_uri(uri)} is a database and artifacts would stay in {location} on this "
        f"machine: set {ARTIFACT_ROOT_ENV} to shared storage (s3://, gs://, wasbs://), or track through an "
        "MLflow server (https://…) that keeps them"
    )


def open_session(config: PipelineConfig) -> TrackingSession:
    """Point MLflow at the configured store and make sure the experiment exists."""
    uri = tracking_uri(config.root)
    store.wait_until_reachable(uri, config.tracking.connect_retries, config.tracking.connect_backoff_seconds)
    # Several pipelines starting on a new database would race to create MLflow's tables and the
    # experiment: one process at a time sets the store up.
    with store.cross_process_lock(uri, "mlflow-store-setup") if store.is_database(uri) else nullcontext():
        try:
            experiment_id = _set_up_store(config, uri)
        except mlflow.exceptions.MlflowException as error:
            if (refused := store.access_error(error, uri)) is not None:
                raise refused from None
            raise
    name = config.tracking.experiment
    logger.info("tracking to %s, experiment '%s' (%s)", redact_uri(uri), name, experiment_id)
    return TrackingSession(
        uri=uri, experiment_id=experiment_id, experiment_name=name, client=MlflowClient(uri)
    )


def _pool_environment(config: PipelineConfig, uri: str) -> dict[str, str]:
    """MLflow sizes its PostgreSQL engines from the environment only; the config is the source."""
    if not store.is_postgres(uri):
        return {}
    return {
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(config.tracking.pool_size),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(config.tracking.max_overflow),
    }


def _set_up_store(config: PipelineConfig, uri: str) -> str:
    """Check the schema, let MLflow create its tables, find or create the experiment; its id."""
    if store.is_database(uri):
        store.check_schema_revision(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    name = config.tracking.experiment
    # MLflow keeps one engine per store URI for the life of the process: both are created here,
    # inside the pool settings, and the environment is restored afterwards.
    with temporary_environment(**_pool_environment(config, uri)):
        try:
            experiment = client.get_experiment_by_name(name)
            client.search_registered_models(max_results=1)
        except mlflow.exceptions.MlflowException as error:
            store.raise_if_schema_outdated(error, uri)
            raise
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location(config, uri),
                tags={keys.EXPERIMENT_KIND: keys.EXPERIMENT_KIND_MODEL_TRAINING},
            )
        except mlflow.exceptions.MlflowException as error:
            if store.access_error(error) is not None:
                raise
            # Another process created it between our look-up and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise LookupFailedError(
            f"experiment '{name}' is deleted; restore it or choose another tracking.experiment"
        )
    _mark_model_training(client, experiment)
    return experiment.experiment_id


def _mark_model_training(client: MlflowClient, experiment) -> None:
    """MLflow 3's UI opens an experiment in its GenAI view unless told it holds model training runs.

    Experiments created before the tag existed get it here; a user who set another kind keeps it,
    and a reader (who may not tag the experiment) is left as is.
    """
    if keys.EXPERIMENT_KIND in (experiment.tags or {}):
        return
    try:
        client.set_experiment_tag(
            experiment.experiment_id, keys.EXPERIMENT_KIND, keys.EXPERIMENT_KIND_MODEL_TRAINING
        )
    except mlflow.exceptions.MlflowException as error:
        if store.access_error(error) is None:
            raise
        logger.debug("not allowed to mark experiment %s as model training", experiment.experiment_id)
