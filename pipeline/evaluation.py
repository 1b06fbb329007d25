"""Metrics, business cost and threshold choice. Pure: arrays in, numbers out.

Convention: a score is the predicted probability of default; an applicant whose
score is at or above the threshold is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from pipeline.config import CostConfig

# Metrics where larger is better; the others (log loss, Brier, cost) are minimised.
HIGHER_IS_BETTER = {"roc_auc", "average_precision", "accuracy", "precision", "recall", "f1", "ks", "gini"}


@dataclass(frozen=True)
class CostCurve:
    thresholds: np.ndarray
    costs: np.ndarray  # expected cost per applicant at each threshold

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.costs))

    @property
    def best_threshold(self) -> float:
        return float(self.thresholds[self.best_index])

    @property
    def best_cost(self) -> float:
        return float(self.costs[self.best_index])


# Probabilities are kept this far from 0 and 1, where log-odds are infinite.
LOG_ODDS_CLIP = 1e-12


def log_odds(probability: np.ndarray) -> np.ndarray:
    """The log-odds of probabilities (clipped to ``LOG_ODDS_CLIP`` from 0 and 1)."""
    probability = np.clip(probability, LOG_ODDS_CLIP, 1 - LOG_ODDS_CLIP)
    return np.log(probability / (1 - probability))


def expected_cost(y_true: np.ndarray, scores: np.ndarray, threshold: float, costs: CostConfig) -> float:
    """Average cost per applicant of rejecting every score at or above ``threshold``."""
    y_true = np.asarray(y_true)
    reject = np.asarray(scores) >= threshold
    false_negatives = np.sum(~reject & (y_true == 1))  # defaulters accepted
    false_positives = np.sum(reject & (y_true == 0))  # good payers rejected
    return float(
        (false_negatives * costs.false_negative + false_positives * costs.false_positive) / len(y_true)
    )


def cost_curve(y_true: np.ndarray, scores: np.ndarray, costs: CostConfig) -> CostCurve:
    """Expected cost at every distinct threshold, in O(n log n).

    Candidate thresholds are the distinct scores (reject that score and above)
    plus one above the maximum (accept everyone).
    """
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_y = scores[order], y_true[order]
    # Rejecting the first i applicants (highest scores first).
    rejected_bad = np.concatenate([[0], np.cumsum(sorted_y)])
    rejected_good = np.concatenate([[0], np.cumsum(1 - sorted_y)])
    total_bad = rejected_bad[-1]
    # Only cut between different scores: equal scores share one decision.
    last_of_group = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    cuts = np.r_[0, np.flatnonzero(last_of_group) + 1]
    cost = (
        (total_bad - rejected_bad[cuts]) * costs.false_negative + rejected_good[cuts] * costs.false_positive
    ) / len(y_true)
    top = sorted_scores[0] if len(sorted_scores) else 1.0
    thresholds = np.r_[np.nextafter(max(top, 1.0), np.inf), sorted_scores[cuts[1:] - 1]]
    return CostCurve(thresholds=thresholds, costs=cost)


def best_threshold(y_true: np.ndarray, scores: np.ndarray, costs: CostConfig) -> tuple[float, float]:
    """The threshold with the lowest expected cost, and that cost."""
    curve = cost_curve(y_true, scores, costs)
    return curve.best_threshold, curve.best_cost


def ks_statistic(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Kolmogorov-Smirnov: largest gap between the score CDFs of the two classes."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.max(tpr - fpr))


def probability_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics of predicted default probabilities."""
    clipped = np.clip(scores, 1e-15, 1 - 1e-15)
    auc = float(roc_auc_score(y_true, scores))
    return {
        "roc_auc": auc,
        "gini": 2 * auc - 1,
        "ks": ks_statistic(y_true, scores),
        "average_precision": float(average_precision_score(y_true, scores)),
        "log_loss": float(log_loss(y_true, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, scores)),
    }


def decision_metrics(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, costs: CostConfig
) -> dict[str, float]:
    """Metrics of the accept/reject decision at ``threshold`` (positive = reject)."""
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "precision": float(precision_score(y_true, predicted, zero_division=0)),
        "recall": float(recall_score(y_true, predicted, zero_division=0)),
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
        "expected_cost": expected_cost(y_true, scores, threshold, costs),
        "tn": float(tn),
        "fp": float(fp),
        "fn": float(fn),
        "tp": float(tp),
    }


def all_metrics(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, costs: CostConfig
) -> dict[str, float]:
    return {**probability_metrics(y_true, scores), **decision_metrics(y_true, scores, threshold, costs)}


def summarise_folds(per_fold: list[dict[str, float]], prefix: str = "cv") -> dict[str, float]:
    """``{prefix}_{metric}_mean`` and ``_std`` over folds."""
    summary: dict[str, float] = {}
    for name in per_fold[0]:
        values = np.array([fold[name] for fold in per_fold], dtype=float)
        summary[f"{prefix}_{name}_mean"] = float(values.mean())
        summary[f"{prefix}_{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def sample_positions(n_rows: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of at most ``max_rows`` of ``n_rows`` (all of them when fewer)."""
    if n_rows <= max_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False))
