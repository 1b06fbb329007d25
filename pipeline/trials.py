"""Optuna trials and the processes that run them: who owns a trial, and closing trials nobody will finish.

A trial records its owner (host, pid) from the moment the storage writes it, so a rerun can tell a trial
whose process is gone (``kill -9``, the OOM killer) from a live worker's. A study ended by a signal or an
error fails the trials this process opened and did not close, with the reason, so none stays RUNNING.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline import termination
from pipeline.processes import process_alive, this_owner

logger = logging.getLogger(__name__)

# Trial user attributes naming the process that runs it, so a rerun can tell a dead trial from a live one.
HOST_ATTR, PID_ATTR = "host", "pid"
# Trial user attribute saying why a sweep marked the trial FAILED.
FAILURE_ATTR = "failure_reason"
# Optuna's heartbeat: a trial whose process beats no more is stale after the grace period.
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 90


def _stale_reason(trial: FrozenTrial, host: str, heartbeat_stale: set[int]) -> str | None:
    owner_host, owner_pid = trial.user_attrs.get(HOST_ATTR), str(trial.user_attrs.get(PID_ATTR, ""))
    if owner_host == host and owner_pid.isdigit():
        started = trial.datetime_start.timestamp() if trial.datetime_start else None
        if process_alive(int(owner_pid), started):
            return None  # a live worker's trial, never ours to touch
        return f"stale: process {owner_pid} on {host} that ran it is gone"
    if trial._trial_id in heartbeat_stale:
        return f"stale: no heartbeat for more than {GRACE_SECONDS} s"
    return None


def fail_stale_trials(study: optuna.Study) -> dict[int, str]:
    """Mark RUNNING trials nobody will finish FAILED, with the reason; ``{trial number: reason}``.

    A trial is stale when its process on this host is gone (a ``kill -9``, the OOM killer), at once,
    or, from another host or with no owner recorded, when its heartbeat is older than the grace
    period. Optuna itself only checks heartbeats, and only when a study optimizes, so without this a
    rerun within the grace period, or one that finds the study complete, leaves it RUNNING for good.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return {}
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    heartbeat_stale: set[int] = set()
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        # The query optuna.storages.fail_stale_trials makes; that function cannot record a reason.
        heartbeat_stale = set(storage._get_stale_trial_ids(study._study_id))
    host, _ = this_owner()
    failed: dict[int, str] = {}
    for trial in running:
        reason = _stale_reason(trial, host, heartbeat_stale)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker closed it first
        failed[trial.number] = reason
        logger.warning("marked optuna trial %d of %s FAIL (%s)", trial.number, study.study_name, reason)
    return failed


def owned(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """The objective, recording first which process runs the trial (for :func:`fail_stale_trials`)."""

    def objective_with_owner(trial: optuna.Trial) -> float:
        termination.raise_if_received()  # deferred while the trial was taken from the queue: Optuna fails it
        # Already written when the trial was created or taken; again if another worker raced for it.
        _write_owner(trial.set_user_attr, trial.user_attrs)
        return objective(trial)

    return objective_with_owner


def _owned_template() -> FrozenTrial:
    """A new RUNNING trial that carries its owner from the start: the storage writes it and its
    owner in one transaction, so a ``kill -9`` between two writes cannot leave a RUNNING trial whose
    owner a rerun cannot check (:func:`fail_stale_trials`)."""
    host, pid = this_owner()
    return FrozenTrial(
        number=-1,  # the storage numbers it
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={HOST_ATTR: host, PID_ATTR: pid},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )


def _claim_waiting(storage, trial_id: int) -> None:
    """Write this process as the owner of a queued trial before it is taken (set RUNNING): a
    ``kill -9`` between two writes then leaves a WAITING trial, which the next taker claims again,
    never a RUNNING one whose owner a rerun cannot check (:func:`fail_stale_trials`)."""
    trial = storage.get_trial(trial_id)
    if trial.state == TrialState.WAITING:  # else taken by another worker already: its owner stays
        _write_owner(functools.partial(storage.set_trial_user_attr, trial_id), trial.user_attrs)


def _write_owner(set_attr: Callable[[str, Any], None], user_attrs: Mapping[str, Any]) -> None:
    """Record this process as a trial's owner with ``set_attr``, writing only what differs from
    ``user_attrs``."""
    for key, value in zip((HOST_ATTR, PID_ATTR), this_owner(), strict=True):
        if user_attrs.get(key) != value:
            set_attr(key, value)


def _fail_open_trial(storage, set_state, trial_id: int, reason: str, study_name: str) -> None:
    """Mark a trial this process opened FAIL with ``reason`` unless another closed it first."""
    try:
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial_id, FAILURE_ATTR, reason)
            set_state(trial_id, TrialState.FAIL)
            logger.info("marked optuna trial id %d of %s FAIL (%s)", trial_id, study_name, reason)
    except Exception as error:  # a lost database: the error that ended the study is the one to report
        logger.debug("optuna trial id %d not marked FAIL: %s", trial_id, error)


@contextmanager
def no_trial_left_running(study: optuna.Study) -> Iterator[None]:
    """Trials this process opened and did not close are failed, with the reason, when an interrupt
    (Ctrl-C, SIGTERM) or an error ends the study.

    Optuna fails the trial whose objective was interrupted, but not one whose opening or closing in
    the storage was (seen under load): that trial stayed RUNNING. Opening and closing a trial run
    with SIGTERM deferred (:func:`pipeline.termination.deferred`), so which trials are open is known.
    """
    storage = study._storage
    create, set_state = storage.create_new_trial, storage.set_trial_state_values
    replaced = {name: vars(storage).get(name) for name in ("create_new_trial", "set_trial_state_values")}
    still_open: set[int] = set()

    def create_new_trial(study_id: int, template_trial: FrozenTrial | None = None) -> int:
        termination.raise_if_received()  # a signal deferred while the last trial closed ends the study here
        with termination.deferred():
            trial_id = create(study_id, template_trial or _owned_template())
            still_open.add(trial_id)
        termination.raise_if_received()
        return trial_id

    # Never raises for a deferred signal: Optuna's own cleanup of a trial breaks on an interrupt
    # raised from its storage. The signal is raised when the next trial opens or the objective starts.
    def set_trial_state_values(trial_id: int, state: TrialState, values: Any = None) -> bool:
        with termination.deferred():
            if state == TrialState.RUNNING:
                _claim_waiting(storage, trial_id)
            changed = set_state(trial_id, state, values)
            if changed and state == TrialState.RUNNING:  # a queued trial taken
                still_open.add(trial_id)
            elif changed and state.is_finished():
                still_open.discard(trial_id)
        return changed

    storage.create_new_trial, storage.set_trial_state_values = create_new_trial, set_trial_state_values
    try:
        yield
    except BaseException as error:
        # Optuna's cleanup of a trial whose closing was cut short (by SIGTERM, a failed write) raises
        # an error of its own: the open trials are closed either way, a signal raised as itself.
        interrupted = isinstance(error, KeyboardInterrupt) or termination.received()
        root = error
        while root.__context__ is not None:  # the first error, not Optuna's in its place
            root = root.__context__
        if termination.received():
            reason = "interrupted: received SIGTERM"
        elif interrupted:  # Ctrl-C
            reason = f"interrupted: {error}".rstrip(": ")
        else:
            reason = f"study ended by {type(root).__name__}"
        for trial_id in sorted(still_open):
            _fail_open_trial(storage, set_state, trial_id, reason, study.study_name)
        if interrupted and not isinstance(error, KeyboardInterrupt):
            raise termination.Terminated("received SIGTERM") from error
        raise
    finally:
        for name, own in replaced.items():
            if own is None:
                vars(storage).pop(name, None)
            else:
                setattr(storage, name, own)
