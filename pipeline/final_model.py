"""The pure choices of stage 2: the tuning objective, the threads a family gets, the final estimator
(one family or a soft vote of several) and its calibrated refit. Training part in, decisions out: no
tracking, no I/O, never the test part.

Stage 2 and ``bench/quality.py`` both import these, so the benchmark measures the choices the
pipeline makes.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline import scorecard, tuning
from pipeline.calibration import CalibrationChoice, calibrated, fit_on_scores, select_calibration
from pipeline.config import PipelineConfig
from pipeline.data import Dataset
from pipeline.models import (
    build_ensemble,
    build_estimator,
)
from pipeline.tracking import keys
from pipeline.training import (
    CVResult,
    cross_validate,
    result_from_scores,
)

logger = logging.getLogger(__name__)


# Families whose threads are OpenMP: on a shared 2-core machine, OpenMP's busy-waiting made one
# HistGradientBoosting CV take 86 s with the default thread count against 5 s with one thread, on
# the 1,000-row default data, where a fit is too short for threads to pay. They get one thread below
# OPENMP_MIN_ROWS training rows and the cores the config gives (optimize.n_jobs) from there on.
OPENMP_FAMILIES = frozenset({"hist_gradient_boosting", "lightgbm"})
OPENMP_MIN_ROWS = 20_000


@dataclass(frozen=True)
class FamilyOutcome:
    family: str
    study_name: str
    trials_done: int
    trials_run_now: int
    pruned: int
    best_params: dict
    metrics: dict[str, float]  # CV summary of the family's best trial
    trials_cap: int = 0  # optimize.n_trials
    stopped_by: str = "count"  # "count": the cap was reached; "time": its share of the budget ended it
    planned_seconds: float = 0.0  # its share of budget_seconds
    spent_seconds: float = 0.0
    # The best trial's CV result when this process ran it: the final step reuses it.
    cv: CVResult | None = field(default=None, repr=False, compare=False)

    @property
    def cut_short(self) -> bool:
        return self.stopped_by == keys.BUDGET_STOPPED_TIME


def merge_outcomes(earlier: FamilyOutcome, later: FamilyOutcome) -> FamilyOutcome:
    """One family tuned twice in a stage (a second round on time left over): ``later`` read the
    whole study, so its best trial is the family's; the times and trials run add up. The best
    trial's CV result is kept from whichever round ran it."""
    same_best = later.best_params == earlier.best_params
    return dataclasses.replace(
        later,
        trials_run_now=earlier.trials_run_now + later.trials_run_now,
        planned_seconds=earlier.planned_seconds + later.planned_seconds,
        spent_seconds=earlier.spent_seconds + later.spent_seconds,
        cv=later.cv if later.cv is not None else (earlier.cv if same_best else None),
    )


def openmp_threads(n_jobs: int, n_rows: int) -> int:
    """OpenMP threads for stage 2's boosters on ``n_rows`` training rows (see OPENMP_FAMILIES)."""
    return n_jobs if n_rows >= OPENMP_MIN_ROWS else 1


def family_jobs(family: str, n_jobs: int, n_rows: int = 0) -> int:
    """Threads (``n_jobs``) one model of ``family`` gets in stage 2."""
    return openmp_threads(n_jobs, n_rows) if family in OPENMP_FAMILIES else n_jobs


def family_objective(
    config: PipelineConfig,
    dataset: Dataset,
    family: str,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list,
    deadline: float | None = None,
    fold_seconds: float = 0.0,
    keep: tuning.BestCV | None = None,
):
    """The Optuna objective for one family, from its search space and the stage's settings."""
    settings = config.optimize
    return tuning.make_objective(
        family,
        settings.search_spaces[family],
        features,
        target,
        splits,
        dataset.categorical,
        dataset.numeric,
        config.costs,
        config.seed,
        n_jobs=family_jobs(family, settings.n_jobs, len(target)),
        pruning=settings.pruning,
        deadline=deadline,
        fold_seconds=fold_seconds,
        keep=keep,
    )


@dataclass(frozen=True)
class FinalCandidate:
    """What stage 2 refits: the best family's best trial, or a soft vote of several families' best."""

    name: str
    estimator: object
    cv_metrics: dict[str, float]
    cv: CVResult | None = None  # out-of-fold scores: a vote's, or a family's best trial's when known
    families: tuple[str, ...] = ()  # the families refitted: the vote's members, or the one family


def vote_name(families: tuple[str, ...] | list[str]) -> str:
    return "soft_vote(" + "+".join(families) + ")"


def choose_final_estimator(
    config: PipelineConfig,
    dataset: Dataset,
    outcomes: list[FamilyOutcome],
    winner: FamilyOutcome,
    train_x: pd.DataFrame,
    train_y: pd.Series,
    splits: list,
) -> FinalCandidate:
    """The best single family, unless a soft vote of two or more tuned families cross-validates better.

    Each family's best model is cross-validated on the trials' folds once: its best trial's
    result is reused when this process ran it, else it is cross-validated here. A soft vote's
    out-of-fold scores are then the mean of its members' (what ``VotingClassifier`` computes),
    so every subset is judged without another fit. The vote of all of them is the default; a
    smaller one replaces it only when its CV ROC AUC is higher by more than ``ensemble_min_gain``
    (a member that clearly hurts is dropped; noise is not chased). The vote is kept only when it
    beats the best single family by that margin too, as one model is cheaper to keep and score.
    Pure: training folds only, never the test part.
    """
    settings = config.optimize
    if not settings.ensemble or len(outcomes) < 2:
        return FinalCandidate(
            winner.family,
            estimator_for(config, dataset, winner, len(train_y)),
            dict(winner.metrics),
            cv=winner.cv,
            families=(winner.family,),
        )

    y = train_y.to_numpy()
    members = {o.family: estimator_for(config, dataset, o, len(train_y)) for o in outcomes}
    by_family = {o.family: o for o in outcomes}
    member_cv = {
        family: by_family[family].cv
        or cross_validate(model, train_x, train_y, splits, config.costs, n_jobs=1)
        for family, model in members.items()
    }
    best: tuple[tuple[str, ...], CVResult, dict[str, float]] | None = None
    for size in range(len(members), 1, -1):
        for combo in itertools.combinations(members, size):
            scores = np.mean([member_cv[f].oof_scores for f in combo], axis=0)
            result = result_from_scores(
                y,
                scores,
                splits,
                config.costs,
                fit_seconds=sum(member_cv[f].fit_seconds for f in combo),
                predict_seconds=sum(member_cv[f].predict_seconds for f in combo),
            )
            metrics = tuning.with_short_names(result.summary())
            logger.info("%s: cv ROC AUC %.4f", vote_name(combo), metrics["cv_roc_auc"])
            # Fewer members must beat more by the margin: on a few hundred rows the CV cannot tell
            # small differences apart, and averaging more models reduces variance.
            margin = settings.ensemble_min_gain if best is not None and size < len(best[0]) else 0.0
            if best is None or metrics["cv_roc_auc"] > best[2]["cv_roc_auc"] + margin:
                best = (combo, result, metrics)

    combo, result, metrics = best
    logger.info(
        "best vote %s: cv ROC AUC %.4f against %.4f for %s alone",
        vote_name(combo),
        metrics["cv_roc_auc"],
        winner.metrics["cv_roc_auc"],
        winner.family,
    )
    if metrics["cv_roc_auc"] > winner.metrics["cv_roc_auc"] + settings.ensemble_min_gain:
        vote = build_ensemble([(f, members[f]) for f in combo])
        return FinalCandidate(vote_name(combo), vote, metrics, cv=result, families=combo)
    return FinalCandidate(
        winner.family,
        members[winner.family],
        dict(winner.metrics),
        cv=member_cv[winner.family],
        families=(winner.family,),
    )


def estimator_for(config: PipelineConfig, dataset: Dataset, outcome: FamilyOutcome, n_rows: int = 0):
    """An unfitted estimator with a family's best parameters, threaded for ``n_rows`` training rows."""
    return build_estimator(
        outcome.family,
        outcome.best_params,
        dataset.categorical,
        dataset.numeric,
        config.seed,
        n_jobs=family_jobs(outcome.family, config.optimize.n_jobs, n_rows),
        n_rows=n_rows or None,
    )


def fit_final(
    config: PipelineConfig,
    estimator,
    train_x: pd.DataFrame,
    train_y: pd.Series,
    splits: list,
    uncalibrated: CVResult | None = None,
) -> tuple[object, CalibrationChoice]:
    """Refit ``estimator`` on the whole training part, calibrated only if out-of-fold log loss improves.

    A scorecard is never calibrated: its logistic regression is fitted on the log-odds scale already,
    and its published points must add up to the very score it gives.
    The threshold (in the returned choice) is chosen on the final form's out-of-fold scores.
    Pure: the training part in, a fitted model out; the test part is not an argument.
    """
    settings = config.optimize
    if uncalibrated is None:
        uncalibrated = cross_validate(estimator, train_x, train_y, splits, config.costs, n_jobs=1)
    methods = [] if scorecard.is_scorecard(estimator) else settings.calibration_methods
    choice = select_calibration(
        estimator,
        train_x,
        train_y,
        splits,
        methods,
        config.costs,
        uncalibrated=uncalibrated,
        max_auc_loss=settings.calibration_max_auc_loss,
    )
    if choice.method == "none":
        return estimator.fit(train_x, train_y), choice
    final = calibrated(estimator, choice.method, settings.cv_folds, config.seed)
    if np.isfinite(uncalibrated.oof_scores).all():  # the folds' scores are there: one refit
        return fit_on_scores(final, train_x, train_y, uncalibrated.oof_scores), choice
    return final.fit(train_x, train_y), choice
