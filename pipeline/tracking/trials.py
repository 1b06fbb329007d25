"""One family's Optuna study within its share of the budget, every finished trial recorded as a
nested run of the optimize run (those an interrupted run finished but never recorded too)."""

from __future__ import annotations

import logging
import time

import optuna
import pandas as pd
from tqdm.auto import tqdm

from pipeline import tuning
from pipeline.config import PipelineConfig
from pipeline.data import Dataset
from pipeline.errors import LookupFailedError
from pipeline.final_model import FamilyOutcome, family_objective
from pipeline.tracking import keys, lookups, runs
from pipeline.tracking.session import TrackingSession

logger = logging.getLogger(__name__)


def _trial_tags(base: dict[str, str], family: str, name: str, trial: optuna.trial.FrozenTrial) -> dict:
    return {
        **base,
        keys.TAG_ROLE: keys.ROLE_TRIAL,
        keys.TAG_FAMILY: family,
        keys.TAG_OPTUNA_STUDY: name,
        keys.TAG_OPTUNA_TRIAL: str(trial.number),
        keys.TAG_OPTUNA_STATE: trial.state.name,
    }


def _record_trial(session, parent_run_id, base_tags, family, name, trial, logged: set[int]) -> None:
    if trial.number in logged or trial.state not in tuning.DONE_STATES:
        return
    runs.log_child_run(
        session,
        parent_run_id,
        f"{family}-trial-{trial.number:03d}",
        tags=_trial_tags(base_tags, family, name, trial),
        params={"family": family, **trial.params},
        metrics=tuning.trial_metrics(trial),
        status="FINISHED" if trial.state == optuna.trial.TrialState.COMPLETE else "KILLED",
    )
    logged.add(trial.number)


def tune_family(
    config: PipelineConfig,
    session: TrackingSession,
    parent_run_id: str,
    base_tags: dict[str, str],
    storage,
    family: str,
    dataset: Dataset,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list,
    seconds: float,
    fold_seconds: float = 0.0,
    sample_rows: int | None = None,
) -> FamilyOutcome:
    """Tune one family within ``seconds`` (its share of the budget) and at most ``n_trials`` trials,
    on ``features`` (a sample of the training part of ``sample_rows`` rows when given)."""
    started = time.monotonic()
    settings = config.optimize
    space = settings.search_spaces[family]
    name = tuning.study_name(
        dataset.digest, family, space, settings.cv_folds, config.seed, config.costs, sample_rows
    )
    runs.log_batch(session, parent_run_id, tags={f"{keys.TAG_STUDY_PREFIX}{family}": name})
    study = tuning.open_study(storage, name, config.seed, pruning=settings.pruning)
    # The research candidates' own configurations first (their time is known from stage 1), then the
    # configured known ones.
    queued = tuning.enqueue_known(study, tuning.first_configurations(config, family).queued, space)
    if queued:
        logger.info("%s: %d known configuration(s) queued as the first trials", family, queued)
    requeued = tuning.requeue_stopped_by_time(study)
    if requeued:
        logger.info("%s: %d configuration(s) the time budget cut short queued again first", family, requeued)

    # Trials finished by an earlier, interrupted run (or another worker) whose run never landed.
    logged = lookups.logged_trial_numbers(session, name)
    for trial in tuning.done_trials(study):
        _record_trial(session, parent_run_id, base_tags, family, name, trial, logged)

    remaining = tuning.remaining_trials(study, settings.n_trials)
    progress = tqdm(total=remaining, desc=f"optimize {family}", unit="trial", leave=False)

    def record(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _record_trial(session, parent_run_id, base_tags, family, name, trial, logged)
        best = tuning.best_trial(_study)
        if best is not None:
            progress.set_postfix_str(f"best AUC {best.value:.4f}")
        progress.update()

    keep = tuning.BestCV()
    objective = family_objective(
        config,
        dataset,
        family,
        features,
        target,
        splits,
        deadline=started + seconds,
        fold_seconds=fold_seconds,
        keep=keep,
    )
    try:
        left = max(0.0, seconds - (time.monotonic() - started))
        if tuning.best_trial(study) is None:
            # Optuna starts no trial once its timeout has passed; a family needs one model.
            left = max(left, 1.0)
        ran = tuning.tune(study, objective, settings.n_trials, left, callbacks=[record])
    finally:
        progress.close()

    best = tuning.best_trial(study)
    if best is None:
        raise LookupFailedError(f"no trial of {family} completed within the budget; raise the budget")
    done = tuning.done_trials(study)
    stopped_by = "count" if len(done) >= settings.n_trials else keys.BUDGET_STOPPED_TIME
    if stopped_by == keys.BUDGET_STOPPED_TIME:
        logger.warning(
            "tuning of %s stopped by its time limit after %d of %d trials (its share of "
            "budget_seconds=%g: %.0f s)",
            family,
            len(done),
            settings.n_trials,
            config.budget_seconds,
            seconds,
        )
    return FamilyOutcome(
        family=family,
        study_name=name,
        trials_done=len(done),
        trials_run_now=ran,
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
        best_params=dict(best.params),
        metrics=tuning.trial_metrics(best),
        trials_cap=settings.n_trials,
        stopped_by=stopped_by,
        planned_seconds=seconds,
        spent_seconds=time.monotonic() - started,
        cv=keep.result_of(best),
    )
