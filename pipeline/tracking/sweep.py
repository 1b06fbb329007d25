"""Runs nobody will close: RUNNING runs of processes that are gone, and children of ended parents."""

from __future__ import annotations

import logging
import socket
import time

import mlflow

from pipeline.processes import process_alive
from pipeline.tracking import keys, store
from pipeline.tracking.lookups import tag_clause
from pipeline.tracking.session import TrackingSession

logger = logging.getLogger(__name__)

_MAX_REASON_LENGTH = 5000


def _running(session: TrackingSession, extra_clause: str = "") -> list:
    clause = "attributes.status = 'RUNNING'" + (f" and {extra_clause}" if extra_clause else "")
    return session.client.search_runs([session.experiment_id], filter_string=clause, max_results=5000)


def _close(session: TrackingSession, run_id: str, status: str, reason: str) -> None:
    session.client.set_tag(run_id, keys.TAG_FAILURE_REASON, reason[:_MAX_REASON_LENGTH])
    session.client.set_terminated(run_id, status)


def end_running_children(session: TrackingSession, parent_run_id: str, status: str, reason: str) -> list[str]:
    """Close the still-RUNNING child runs of a parent that ended early; returns their ids."""
    running = _running(session, tag_clause(keys.TAG_PARENT_RUN, parent_run_id))
    for child in running:
        _close(session, child.info.run_id, status, reason)
    return [child.info.run_id for child in running]


def _stale_reason(run, host: str, now: float, max_age_hours: float) -> str | None:
    tags = run.data.tags
    if tags.get(keys.TAG_HOST) == host and str(tags.get(keys.TAG_PID, "")).isdigit():
        pid = int(tags[keys.TAG_PID])
        started = run.info.start_time / 1000 if run.info.start_time is not None else None
        if process_alive(pid, started):
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
        running = _running(session)
    except mlflow.exceptions.MlflowException as error:
        if (lost := store.store_error(error, session.uri)) is not None:
            raise lost from error
        raise
    host, now = socket.gethostname(), time.time()
    running_ids = {run.info.run_id for run in running}
    live: set[str] = set()
    stale: dict[str, str] = {}
    for run in running:
        reason = _stale_reason(run, host, now, max_age_hours)
        if reason is None and run.data.tags.get(keys.TAG_HOST) == host and keys.TAG_PID in run.data.tags:
            live.add(run.info.run_id)
        elif reason is not None:
            stale[run.info.run_id] = reason
    changed = True
    while changed:  # nested children: repeat until nothing new is found
        changed = False
        for run in running:
            run_id, parent = run.info.run_id, run.data.tags.get(keys.TAG_PARENT_RUN)
            if parent is None or run_id in stale or run_id in live:
                continue
            if parent in stale:
                stale[run_id] = f"stale: parent run {parent} is stale"
                changed = True
            elif parent not in running_ids:
                stale[run_id] = f"stale: parent run {parent} has ended"
                changed = True
    for run_id, reason in stale.items():
        _close(session, run_id, "FAILED", reason)
        logger.warning("marked run %s FAILED (%s)", run_id, reason)
    return stale
