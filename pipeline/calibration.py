"""Probability calibration, kept only when out-of-fold log loss says it helps. Pure: no I/O.

A method that lowers the log loss is still refused when it costs ranking quality: isotonic
regression is a step function, its ties lowered held-out ROC AUC by about 0.004 on the default
data, while a sigmoid (monotone) leaves every fold's ranking as it was.

Each method is judged out of fold, on the same folds as the model: for every fold, a calibrator
is fitted on the out-of-fold scores of the *other* folds and applied to this fold's scores. That
mirrors the final ``CalibratedClassifierCV(cv=folds)``, whose calibrators are fitted on held-out
fold predictions too, and costs no extra model fits (a nested refit per method took ~45 s on
the default data and 2 cores, a third of the stage's budget). The final model's calibrator is
fitted on those same out-of-fold scores (:func:`fit_on_scores`): one refit, not one per fold.
Both see the scores as scikit-learn's calibrator would: log-odds for a model with a decision function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from pipeline.config import CostConfig
from pipeline.evaluation import LOG_ODDS_CLIP, best_threshold, log_odds
from pipeline.training import CVResult, cross_validate

NONE = "none"
# Smallest log-loss gain that counts as an improvement, not noise in the last digits.
MIN_GAIN = 1e-4
# Default for how much out-of-fold ROC AUC a calibration may cost (config: calibration_max_auc_loss).
MAX_AUC_LOSS = 0.001


@dataclass(frozen=True)
class CalibrationChoice:
    method: str  # "none", "sigmoid" or "isotonic"
    log_losses: dict[str, float]  # out-of-fold log loss of each option tried
    roc_aucs: dict[str, float]  # mean per-fold ROC AUC of each option tried
    oof_scores: np.ndarray  # out-of-fold scores of the chosen option
    threshold: float  # the cost-minimising threshold on those scores


def oof_log_loss(y_true: np.ndarray, scores: np.ndarray) -> float:
    return float(log_loss(y_true, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1]))


def fold_roc_auc(
    y_true: np.ndarray, scores: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]
) -> float:
    """Mean ROC AUC over the validation folds: unchanged by any calibrator that is monotone per fold."""
    return float(np.mean([roc_auc_score(y_true[valid], scores[valid]) for _, valid in splits]))


def choose_method(
    log_losses: Mapping[str, float],
    roc_aucs: Mapping[str, float] | None = None,
    max_auc_loss: float = MAX_AUC_LOSS,
    min_gain: float = MIN_GAIN,
) -> str:
    """The method with the lowest out-of-fold log loss, if it beats ``"none"`` by ``min_gain``.

    With ``roc_aucs``, a method whose ROC AUC is more than ``max_auc_loss`` below ``"none"``'s
    is not eligible.
    """
    baseline = log_losses[NONE]
    eligible = [
        m for m in log_losses if roc_aucs is None or m == NONE or roc_aucs[m] >= roc_aucs[NONE] - max_auc_loss
    ]
    best = min(eligible, key=lambda m: (log_losses[m], m != NONE))
    return best if best != NONE and log_losses[best] <= baseline - min_gain else NONE


def calibrated(estimator, method: str, n_folds: int, seed: int) -> CalibratedClassifierCV:
    """``estimator`` refit on every training row, with one calibrator fitted on its out-of-fold scores.

    The final model's form when calibration is chosen. ``ensemble=False`` keeps one base model
    instead of one per fold: the same calibration the choice was judged on, at a fifth of the
    size to store and the time to score.
    """
    return CalibratedClassifierCV(
        estimator,
        method=method,
        cv=StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed),
        ensemble=False,
    )


def fit_on_scores(
    model: CalibratedClassifierCV, features: pd.DataFrame, target: pd.Series, oof_scores: np.ndarray
) -> CalibratedClassifierCV:
    """Fit ``model`` (from :func:`calibrated`) without its cross-validation: its estimator once on
    every row, its calibrator on ``oof_scores``, the out-of-fold scores the tuning already measured.

    ``model.fit`` would fit the folds again (``n_folds`` fits) only to get those scores; on the same
    folds it builds this very model. Assembled from scikit-learn's own parts (``_CalibratedClassifier``
    and its calibrators), so it scores, stores and loads like a fitted one.
    """
    from sklearn.base import clone
    from sklearn.calibration import _CalibratedClassifier
    from sklearn.preprocessing import LabelEncoder

    if model.method not in {"isotonic", "sigmoid"}:
        raise ValueError(f"unknown calibration method {model.method!r}")
    classes = LabelEncoder().fit(target).classes_
    fitted = clone(model.estimator).fit(features, target)
    scores = _calibration_inputs(fitted, features, np.asarray(oof_scores, dtype=float))
    if scores is None:  # not what the calibrator would see: the folds are fitted again after all
        return model.fit(features, target)
    # What CalibratedClassifierCV fits on the positive class's scores (binary: one calibrator).
    calibrator = (
        IsotonicRegression(out_of_bounds="clip") if model.method == "isotonic" else _SigmoidCalibration()
    )
    calibrator.fit(scores, (np.asarray(target) == classes[-1]).astype(float))
    model.classes_ = classes
    model.calibrated_classifiers_ = [
        _CalibratedClassifier(fitted, [calibrator], method=model.method, classes=classes)
    ]
    for attribute in ("n_features_in_", "feature_names_in_"):
        if hasattr(fitted, attribute):
            setattr(model, attribute, getattr(fitted, attribute))
    return model


_CHECK_ROWS = 256


def _calibration_inputs(fitted, features: pd.DataFrame, probabilities: np.ndarray) -> np.ndarray | None:
    """The out-of-fold scores as CalibratedClassifierCV's calibrator sees them: its ``decision_function``
    where the model has one (LightGBM, logistic regression), else the positive class's probability.
    That decision function must be the probabilities' log-odds (checked on a few rows): None when it
    is something else, which the probabilities cannot stand in for."""
    if not hasattr(fitted, "decision_function"):
        return probabilities
    sample = features.iloc[:_CHECK_ROWS]
    decision = np.asarray(fitted.decision_function(sample), dtype=float)
    proba = np.asarray(fitted.predict_proba(sample), dtype=float)[:, -1]
    inner = (proba > LOG_ODDS_CLIP) & (proba < 1 - LOG_ODDS_CLIP)  # finite log-odds to compare
    if decision.shape != proba.shape or not np.allclose(decision[inner], log_odds(proba[inner]), atol=1e-6):
        return None
    return log_odds(probabilities)


def _calibrator(method: str):
    # The same calibrators CalibratedClassifierCV fits on a classifier's scores.
    if method == "sigmoid":
        return _SigmoidCalibration()
    if method == "isotonic":
        return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    raise ValueError(f"unknown calibration method {method!r}")


def cross_calibrate(
    y_true: np.ndarray,
    oof_scores: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    method: str,
    on_log_odds: bool = False,
) -> np.ndarray:
    """Calibrated out-of-fold scores: each fold's calibrator is fitted on the other folds' scores.

    ``on_log_odds``: the calibrators see the scores' log-odds, as the final model's does for a model
    with a decision function (:func:`fit_on_scores`). A sigmoid on probabilities is another curve
    than a sigmoid on log-odds: judging one and shipping the other picked the method and the
    threshold for scores the model never gives.
    """
    inputs = log_odds(oof_scores) if on_log_odds else oof_scores
    calibrated_scores = np.full(len(y_true), np.nan)
    for train, valid in splits:
        calibrator = _calibrator(method).fit(inputs[train], y_true[train])
        calibrated_scores[valid] = np.clip(calibrator.predict(inputs[valid]), 0.0, 1.0)
    return calibrated_scores


def select_calibration(
    estimator,
    features: pd.DataFrame,
    target: pd.Series,
    splits: list[tuple[np.ndarray, np.ndarray]],
    methods: Sequence[str],
    costs: CostConfig,
    seed: int = 0,
    n_jobs: int = 1,
    uncalibrated: CVResult | None = None,
    max_auc_loss: float = MAX_AUC_LOSS,
) -> CalibrationChoice:
    """Compare out-of-fold log loss without and with each method; keep the best that helps
    without lowering the per-fold ROC AUC by more than ``max_auc_loss``.

    The choice carries the chosen option's out-of-fold scores and the cost-minimising threshold on them.
    """
    y = target.to_numpy()
    base = uncalibrated or cross_validate(estimator, features, target, splits, costs, n_jobs=n_jobs)
    options = {NONE: base.oof_scores}
    # What CalibratedClassifierCV's calibrator sees: the decision function where there is one.
    on_log_odds = hasattr(estimator, "decision_function")
    for method in methods:
        options[method] = cross_calibrate(y, base.oof_scores, splits, method, on_log_odds)
    losses = {name: oof_log_loss(y, scores) for name, scores in options.items()}
    aucs = {name: fold_roc_auc(y, scores, splits) for name, scores in options.items()}
    method = choose_method(losses, aucs, max_auc_loss)
    threshold = base.threshold if method == NONE else best_threshold(y, options[method], costs)[0]
    return CalibrationChoice(
        method=method,
        log_losses=losses,
        roc_aucs=aucs,
        oof_scores=options[method],
        threshold=threshold,
    )
