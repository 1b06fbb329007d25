"""Finding runs: MLflow filter quoting, stage runs by tag, children, trials already recorded."""

from __future__ import annotations

from collections.abc import Mapping

import mlflow

from pipeline.errors import LookupFailedError
from pipeline.tracking import keys
from pipeline.tracking.session import TrackingSession


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


def quote_filter_key(key: str) -> str:
    """A tag or param key for MLflow's filter syntax (backquoted); rejects what it cannot quote."""
    if not key or "`" in key:
        raise LookupFailedError(f"key {key!r} cannot be used in an MLflow filter: empty or has a backquote")
    return f"`{key}`"


def tag_clause(key: str, value: str) -> str:
    """``tags.`key` = 'value'`` for an MLflow run or model-version filter."""
    return f"tags.{quote_filter_key(key)} = {quote_filter_value(value)}"


def search_stage_runs(
    session: TrackingSession,
    stage: str,
    conditions: Mapping[str, str] | None = None,
    status: str | None = "FINISHED",
    max_results: int = 100,
) -> list:
    """Parent runs of ``stage``, newest first, matching every ``tags.<key> = value``."""
    clauses = [tag_clause(keys.TAG_STAGE, stage), tag_clause(keys.TAG_ROLE, keys.ROLE_STAGE)]
    clauses += [tag_clause(key, value) for key, value in (conditions or {}).items()]
    if status:
        clauses.append(f"attributes.status = {quote_filter_value(status)}")
    return session.client.search_runs(
        [session.experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


def get_run(session: TrackingSession, run_id: str):
    try:
        return session.client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise LookupFailedError(f"run {run_id} not found in {session.safe_uri}") from None


def finished_stage_run(
    session: TrackingSession,
    stage: str,
    run_id: str | None,
    what: str | None = None,
    conditions: Mapping[str, str] | None = None,
    missing_hint: str = "",
):
    """Run ``run_id``, checked to be a FINISHED parent run of ``stage``; or the latest such run
    matching ``conditions``. ``what`` names the stage in messages ("optimization"); ``missing_hint``
    ends the message when there is no such run. Raises LookupFailedError.
    """
    what = what or stage
    if run_id is None:
        runs = search_stage_runs(session, stage, conditions, max_results=1)
        if not runs:
            matching = "".join(f" with {key} {value}" for key, value in (conditions or {}).items())
            raise LookupFailedError(
                f"no finished {what} run in experiment '{session.experiment_name}'{matching}{missing_hint}"
            )
        return runs[0]
    run = get_run(session, run_id)
    tags = run.data.tags
    if tags.get(keys.TAG_STAGE) != stage or tags.get(keys.TAG_ROLE) != keys.ROLE_STAGE:
        raise LookupFailedError(f"run {run_id} is not a parent run of the {stage} stage")
    if run.info.status != "FINISHED":
        raise LookupFailedError(f"{what} run {run_id} is {run.info.status}, not FINISHED")
    return run


def child_runs(session: TrackingSession, parent_run_id: str, status: str | None = None) -> list:
    """Nested runs of ``parent_run_id`` (only those in ``status`` when given)."""
    clauses = [tag_clause(keys.TAG_PARENT_RUN, parent_run_id)]
    if status:
        clauses.append(f"attributes.status = {quote_filter_value(status)}")
    return session.client.search_runs(
        [session.experiment_id], filter_string=" and ".join(clauses), max_results=5000
    )


def logged_trial_numbers(session: TrackingSession, study_name: str) -> set[int]:
    """Trial numbers of ``study_name`` that already have a run, under any parent (resume, workers).

    A FAILED trial run is a record the store lost mid-write (created, never closed): it does not count.
    """
    numbers: set[int] = set()
    token = None
    while True:
        page = session.client.search_runs(
            [session.experiment_id],
            filter_string=tag_clause(keys.TAG_OPTUNA_STUDY, study_name),
            max_results=1000,
            page_token=token,
        )
        numbers.update(
            int(run.data.tags[keys.TAG_OPTUNA_TRIAL]) for run in page if run.info.status != "FAILED"
        )
        token = page.token
        if not token:
            return numbers
