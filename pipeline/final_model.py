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
    """What stage 2 refits: a soft vote of several families' best trials, or one family's."""

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
    """The soft vote of every tuned family's best model, unless a smaller vote or one family is
    clearly better on the same folds.

    Each family's best model is cross-validated on the trials' folds once: its best trial's
    result is reused when this process ran it, else it is cross-validated here. A soft vote's
    out-of-fold scores are then the mean of its members' (what ``VotingClassifier`` computes),
    so every subset is judged without another fit. A subset (one family included) replaces the
    vote of all only when its ROC AUC, fold by fold, is higher by more than ``ensemble_min_gain``
    and by more than one standard error of those paired differences: where the folds cannot tell
    the models apart (few defaults, a few hundred rows), the average of several is the safer
    choice, as it varies less; on large data the error is small, and a clearly better family wins
    alone (one model is cheaper to keep and score). Pure: training folds only, never the test part.
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

    def vote_result(combo: tuple[str, ...]) -> CVResult:
        return result_from_scores(
            y,
            np.mean([member_cv[f].oof_scores for f in combo], axis=0),
            splits,
            config.costs,
            fit_seconds=sum(member_cv[f].fit_seconds for f in combo),
            predict_seconds=sum(member_cv[f].predict_seconds for f in combo),
        )

    everyone = tuple(members)
    results = {everyone: vote_result(everyone)}
    chosen, chosen_gain = everyone, 0.0
    for size in range(len(everyone) - 1, 0, -1):
        for combo in itertools.combinations(everyone, size):
            results[combo] = member_cv[combo[0]] if size == 1 else vote_result(combo)
            gain, error = paired_gain(results[combo], results[everyone])
            logger.info(
                "%s: cv ROC AUC %+.4f ± %.4f against the vote of all",
                combo[0] if size == 1 else vote_name(combo),
                gain,
                error,
            )
            if gain > max(settings.ensemble_min_gain, error) and gain > chosen_gain:
                chosen, chosen_gain = combo, gain

    result = results[chosen]
    if len(chosen) == 1:
        family = chosen[0]
        logger.info("%s alone is clearly better than the vote of all (by %.4f)", family, chosen_gain)
        return FinalCandidate(
            family, members[family], dict(by_family[family].metrics), cv=result, families=chosen
        )
    metrics = tuning.with_short_names(result.summary())
    logger.info("final model %s: cv ROC AUC %.4f", vote_name(chosen), metrics["cv_roc_auc"])
    vote = build_ensemble([(f, members[f]) for f in chosen])
    return FinalCandidate(vote_name(chosen), vote, metrics, cv=result, families=chosen)


def paired_gain(candidate: CVResult, reference: CVResult) -> tuple[float, float]:
    """The mean per-fold ROC AUC of ``candidate`` minus ``reference``'s on the same folds, and the
    standard error of that mean (0 with one fold)."""
    differences = np.array(
        [c["roc_auc"] - r["roc_auc"] for c, r in zip(candidate.per_fold, reference.per_fold, strict=True)]
    )
    if len(differences) < 2:
        return float(differences.mean()), 0.0
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(len(differences)))


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
