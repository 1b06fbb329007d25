"""Cross-validation with out-of-fold predictions. Pure: frames in, scores out."""

from __future__ import annotations

import importlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, train_test_split

from pipeline.config import CostConfig
from pipeline.evaluation import best_threshold, decision_metrics, probability_metrics, summarise_folds
from pipeline.processes import release_freed_memory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldOutcome:
    index: int
    validation_index: np.ndarray
    scores: np.ndarray
    fit_seconds: float
    predict_seconds: float


@dataclass(frozen=True)
class CVResult:
    """Out-of-fold scores, the cost-minimising threshold chosen on them, and fold metrics."""

    oof_scores: np.ndarray
    threshold: float
    per_fold: list[dict[str, float]]
    fit_seconds: float
    predict_seconds: float

    def summary(self, prefix: str = "cv") -> dict[str, float]:
        return {
            **summarise_folds(self.per_fold, prefix),
            f"{prefix}_threshold": self.threshold,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
        }


def folds(y: pd.Series, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified folds over positions of ``y``."""
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def stratified_sample(y: pd.Series, rows: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``rows`` of ``y``'s rows with its classes in proportion;
    every position when ``rows`` is not fewer than the rows. The same arguments give the same rows,
    so stages 1 and 2 sample a family's rows alike."""
    if rows >= len(y):
        return np.arange(len(y))
    kept, _ = train_test_split(np.arange(len(y)), train_size=rows, stratify=y.to_numpy(), random_state=seed)
    return np.sort(kept)


@dataclass(frozen=True)
class TrainingPart:
    """The rows a candidate is cross-validated on: the training part, or a stratified sample of it
    for a family too slow for its share of the budget on every row."""

    features: pd.DataFrame
    target: pd.Series
    splits: list

    @property
    def rows(self) -> int:
        return len(self.target)


def sampled_part(part: TrainingPart, rows: int, cv_folds: int, seed: int) -> TrainingPart:
    """``part`` itself when ``rows`` covers it, else a seeded stratified sample of ``rows`` of its rows
    with its own folds (:func:`stratified_sample`: stage 2 draws the same)."""
    if rows >= part.rows:
        return part
    positions = stratified_sample(part.target, rows, seed)
    target = part.target.iloc[positions]
    return TrainingPart(part.features.iloc[positions], target, folds(target, cv_folds, seed))


def positive_scores(estimator, features: pd.DataFrame) -> np.ndarray:
    """Predicted probability of the positive class (default)."""
    return estimator.predict_proba(features)[:, 1]


def fit_predict_fold(
    estimator, features: pd.DataFrame, target: pd.Series, fold: int, train: np.ndarray, valid: np.ndarray
) -> FoldOutcome:
    model = clone(estimator)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Convergence chatter from small folds is not actionable per fold.
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(features.iloc[train], target.iloc[train])
    fitted = time.perf_counter()
    scores = positive_scores(model, features.iloc[valid])
    predicted = time.perf_counter()
    del model
    release_freed_memory()
    return FoldOutcome(
        index=fold,
        validation_index=valid,
        scores=scores,
        fit_seconds=fitted - started,
        predict_seconds=predicted - fitted,
    )


def cross_validate(
    estimator,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list[tuple[np.ndarray, np.ndarray]],
    costs: CostConfig,
    n_jobs: int = 1,
    on_fold: Callable[[int, float], None] | None = None,
) -> CVResult:
    """Cross-validate ``estimator`` on ``splits``.

    The threshold is chosen once on the pooled out-of-fold scores, then every fold's
    decision metrics are taken at it. ``on_fold(i, mean_auc_so_far)`` is called after
    each fold (folds then run one by one) and may raise to stop early, as pruning does.
    """
    y = target.to_numpy()
    if on_fold is None:
        outcomes = run_folds(estimator, features, target, splits, range(len(splits)), n_jobs)
    else:
        outcomes, aucs = [], []
        for i, (train, valid) in enumerate(splits):
            outcome = fit_predict_fold(estimator, features, target, i, train, valid)
            outcomes.append(outcome)
            aucs.append(probability_metrics(y[valid], outcome.scores)["roc_auc"])
            on_fold(i, float(np.mean(aucs)))

    result = result_from_folds(y, outcomes, splits, costs)
    if on_fold is None and n_jobs != 1:  # a fold run here released its own (fit_predict_fold)
        release_freed_memory()  # what the outcomes unpickled from workers left resident
    return result


def _import_all(modules: list[str]) -> None:
    for name in modules:
        importlib.import_module(name)


def start_fold_workers(n_jobs: int, modules: list[str], folds: int) -> threading.Thread | None:
    """Start the worker processes folds run in (``n_jobs``, at most one per fold of ``folds``),
    with ``modules`` imported, in a background thread; join it before timing folds.

    Their start-up (a few seconds of imports, 2.9 s measured with scikit-learn and LightGBM) then
    overlaps the stage's own set-up instead of being timed as the first candidate's folds, whose
    time the race extrapolates (on a small budget it would take the whole of stage 1's share).
    joblib reuses the same workers for the folds. None when folds run in this process.
    """
    workers = min(effective_n_jobs(n_jobs), folds)
    if workers <= 1:
        return None

    def start() -> None:
        try:
            Parallel(n_jobs=n_jobs)(delayed(_import_all)(modules) for _ in range(workers))
        except Exception as error:  # the folds will meet and report the same failure
            logger.debug("fold workers not started ahead: %s", error)

    thread = threading.Thread(target=start, name="fold-workers", daemon=True)
    thread.start()
    return thread


def run_folds(
    estimator,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list[tuple[np.ndarray, np.ndarray]],
    which: Iterable[int],
    n_jobs: int = 1,
    timeout: float | None = None,
) -> list[FoldOutcome]:
    """Fit and score the folds numbered ``which``, ``n_jobs`` at a time.

    With ``timeout`` (seconds, folds in worker processes only) a fold still running then stops them
    all: the workers are killed and ``multiprocessing.TimeoutError`` raised.
    """
    return Parallel(n_jobs=n_jobs, timeout=timeout if n_jobs != 1 else None)(
        delayed(fit_predict_fold)(estimator, features, target, i, *splits[i]) for i in which
    )


def result_from_folds(
    y: np.ndarray,
    outcomes: list[FoldOutcome],
    splits: list[tuple[np.ndarray, np.ndarray]],
    costs: CostConfig,
) -> CVResult:
    """A CV result from the folds that ran (all of them, or a raced-out candidate's first few)."""
    outcomes = sorted(outcomes, key=lambda o: o.index)
    oof = np.full(len(y), np.nan)
    for outcome in outcomes:
        oof[outcome.validation_index] = outcome.scores
    return result_from_scores(
        y,
        oof,
        [splits[o.index] for o in outcomes],
        costs,
        fit_seconds=float(sum(o.fit_seconds for o in outcomes)),
        predict_seconds=float(sum(o.predict_seconds for o in outcomes)),
    )


def result_from_scores(
    y: np.ndarray,
    oof_scores: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    costs: CostConfig,
    fit_seconds: float = 0.0,
    predict_seconds: float = 0.0,
) -> CVResult:
    """Threshold and per-fold metrics from out-of-fold scores, e.g. the average of several models'.

    ``splits`` may be some of the folds only (a raced-out candidate): the threshold is then chosen
    on the rows those folds scored.
    """
    scored = ~np.isnan(oof_scores)
    threshold, _ = best_threshold(y[scored], oof_scores[scored], costs)
    per_fold = [
        {
            **probability_metrics(y[valid], oof_scores[valid]),
            **decision_metrics(y[valid], oof_scores[valid], threshold, costs),
        }
        for _, valid in splits
    ]
    return CVResult(
        oof_scores=oof_scores,
        threshold=threshold,
        per_fold=per_fold,
        fit_seconds=fit_seconds,
        predict_seconds=predict_seconds,
    )
