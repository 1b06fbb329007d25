"""The champion/challenger gate of stage 3. Pure: arrays and numbers in, a decision out.

The rule, in full:

1. **Floors** (every one must hold): the challenger's test ROC AUC is at least
   ``register.min_test_roc_auc``, and strictly above the cross-validated ROC AUC
   (``cv_roc_auc_mean``) of the dummy and logistic-regression baselines of the same
   research run. A baseline the research run did not have is skipped, and the
   decision says so.
2. **No champion yet**: promote when the floors hold.
3. **Against the champion**, both scored on the same held-out test rows, each at its
   own recorded threshold: an *improvement* in a metric is a difference strictly
   larger than its margin, in the good direction (expected cost:
   ``champion - challenger > cost_margin``; ROC AUC:
   ``challenger - champion > roc_auc_margin``). The seeded paired bootstrap resamples
   the test rows (the same rows for both models) and counts how often the improvement
   holds. The challenger is promoted when, for at least one of the two metrics, the
   point estimate is an improvement AND its bootstrap probability of improvement is at
   least ``min_probability_of_improvement``. Expected cost is tried first, since it is
   the business objective; the reported probability is that of the metric that decided
   (or the larger of the two when neither did).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import CostConfig, RegisterConfig

PROMOTED = "promoted"
REJECTED = "rejected"
ALREADY_REGISTERED = "already_registered"

# Baseline families whose research score the challenger must beat.
BASELINE_FLOOR_FAMILIES = ("dummy", "logistic_regression")
# Upper bound on bootstrap weights held in memory at once (resamples x rows).
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class FloorCheck:
    name: str
    required: float | None  # None: skipped (the research run had no such baseline)
    actual: float
    passed: bool
    note: str


@dataclass(frozen=True)
class Comparison:
    """Challenger vs champion on the same test rows, with the paired bootstrap."""

    challenger_roc_auc: float
    champion_roc_auc: float
    challenger_expected_cost: float
    champion_expected_cost: float
    roc_auc_gain: float  # challenger - champion
    cost_saving: float  # champion - challenger
    probability_roc_auc: float
    probability_cost: float
    samples: int
    seed: int


@dataclass(frozen=True)
class GateDecision:
    decision: str  # PROMOTED or REJECTED
    reason: str
    floors: list[FloorCheck]
    comparison: Comparison | None
    deciding_metric: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    @property
    def probability_of_improvement(self) -> float | None:
        if self.comparison is None:
            return None
        if self.deciding_metric == "roc_auc":
            return self.comparison.probability_roc_auc
        if self.deciding_metric == "expected_cost":
            return self.comparison.probability_cost
        return max(self.comparison.probability_cost, self.comparison.probability_roc_auc)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["probability_of_improvement"] = self.probability_of_improvement
        return data


# --- Floors --------------------------------------------------------------------------------------


def check_floors(
    test_roc_auc: float, min_test_roc_auc: float, baselines: dict[str, float | None]
) -> list[FloorCheck]:
    """The floors for a challenger; ``baselines`` maps a baseline family to its CV ROC AUC or None."""
    checks = [
        FloorCheck(
            "min_test_roc_auc",
            min_test_roc_auc,
            test_roc_auc,
            test_roc_auc >= min_test_roc_auc,
            f"test ROC AUC {test_roc_auc:.4f} vs minimum {min_test_roc_auc:.4f}",
        )
    ]
    for family in BASELINE_FLOOR_FAMILIES:
        score = baselines.get(family)
        if score is None:
            checks.append(
                FloorCheck(
                    f"beats_{family}",
                    None,
                    test_roc_auc,
                    True,
                    f"skipped: the research run has no {family} candidate",
                )
            )
            continue
        checks.append(
            FloorCheck(
                f"beats_{family}",
                score,
                test_roc_auc,
                test_roc_auc > score,
                f"test ROC AUC {test_roc_auc:.4f} vs {family} CV ROC AUC {score:.4f}",
            )
        )
    return checks


# --- Paired bootstrap ----------------------------------------------------------------------------


def row_costs(y_true: np.ndarray, scores: np.ndarray, threshold: float, costs: CostConfig) -> np.ndarray:
    """Cost of each applicant's decision (reject when score >= threshold, as in pipeline.evaluation)."""
    y_true = np.asarray(y_true).astype(int)
    reject = np.asarray(scores, dtype=float) >= threshold
    return np.where(
        reject & (y_true == 0),
        costs.false_positive,
        np.where(~reject & (y_true == 1), costs.false_negative, 0.0),
    )


def resample_weights(n_rows: int, samples: int, seed: int) -> np.ndarray:
    """How many times each row is drawn in each bootstrap resample: a (samples, n_rows) int matrix."""
    return _draw_weights(np.random.default_rng(seed), n_rows, samples)


def resample_blocks(n_rows: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """The seeded resamples as blocks of weight rows (how often each test row is drawn).

    Drawn block by block from one seeded stream: the same resamples whatever the block size,
    and memory bounded by ``_CHUNK_CELLS`` however large the test part.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n_rows, 1))
    for start in range(0, samples, chunk):
        yield _draw_weights(rng, n_rows, min(chunk, samples - start))


def _draw_weights(rng: np.random.Generator, n_rows: int, samples: int) -> np.ndarray:
    drawn = rng.integers(0, n_rows, size=(samples, n_rows))
    offsets = drawn + (np.arange(samples)[:, None] * n_rows)
    return np.bincount(offsets.ravel(), minlength=samples * n_rows).reshape(samples, n_rows)


def weighted_roc_auc(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of every row of ``weights`` (resample counts), vectorised; NaN if a class is absent.

    AUC = P(score of a defaulter > score of a payer) + 0.5 P(tie), with rows counted by weight.
    Rows are grouped by distinct score so ties are exact.
    """
    y_true = np.asarray(y_true).astype(bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    group_ends = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1]
    sorted_weights, sorted_y = weights[:, order], y_true[order]

    def per_group(values: np.ndarray) -> np.ndarray:  # (samples, groups), ascending score
        totals = np.cumsum(values, axis=1)[:, group_ends]
        return np.diff(totals, axis=1, prepend=0.0)

    positives = per_group(sorted_weights * sorted_y)
    negatives = per_group(sorted_weights * ~sorted_y)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    numerator = np.sum(positives * (negatives_below + 0.5 * negatives), axis=1)
    denominator = positives.sum(axis=1) * negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def paired_bootstrap(
    y_true: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray,
    challenger_threshold: float,
    champion_threshold: float,
    costs: CostConfig,
    samples: int,
    seed: int,
) -> pd.DataFrame:
    """One row per resample: both models' ROC AUC and expected cost on the same drawn rows."""
    y_true = np.asarray(y_true).astype(int)
    n_rows = len(y_true)
    challenger_costs = row_costs(y_true, challenger_scores, challenger_threshold, costs)
    champion_costs = row_costs(y_true, champion_scores, champion_threshold, costs)
    parts = []
    for block in resample_blocks(n_rows, samples, seed):
        parts.append(
            pd.DataFrame(
                {
                    "challenger_roc_auc": weighted_roc_auc(y_true, challenger_scores, block),
                    "champion_roc_auc": weighted_roc_auc(y_true, champion_scores, block),
                    "challenger_expected_cost": block @ challenger_costs / n_rows,
                    "champion_expected_cost": block @ champion_costs / n_rows,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame.insert(0, "sample", np.arange(samples))
    frame["roc_auc_gain"] = frame["challenger_roc_auc"] - frame["champion_roc_auc"]
    frame["cost_saving"] = frame["champion_expected_cost"] - frame["challenger_expected_cost"]
    return frame


def _share_above(values: pd.Series, margin: float) -> float:
    finite = values.dropna()
    return float((finite > margin).mean()) if len(finite) else 0.0


# --- Decision ------------------------------------------------------------------------------------


def compare(
    y_true: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray,
    challenger_threshold: float,
    champion_threshold: float,
    costs: CostConfig,
    settings: RegisterConfig,
    seed: int,
) -> tuple[Comparison, pd.DataFrame]:
    """Point estimates and bootstrap probabilities of improvement over the champion."""
    whole = np.ones((1, len(y_true)))
    challenger_auc = float(weighted_roc_auc(y_true, challenger_scores, whole)[0])
    champion_auc = float(weighted_roc_auc(y_true, champion_scores, whole)[0])
    challenger_cost = float(row_costs(y_true, challenger_scores, challenger_threshold, costs).mean())
    champion_cost = float(row_costs(y_true, champion_scores, champion_threshold, costs).mean())
    draws = paired_bootstrap(
        y_true,
        challenger_scores,
        champion_scores,
        challenger_threshold,
        champion_threshold,
        costs,
        settings.bootstrap_samples,
        seed,
    )
    comparison = Comparison(
        challenger_roc_auc=challenger_auc,
        champion_roc_auc=champion_auc,
        challenger_expected_cost=challenger_cost,
        champion_expected_cost=champion_cost,
        roc_auc_gain=challenger_auc - champion_auc,
        cost_saving=champion_cost - challenger_cost,
        probability_roc_auc=_share_above(draws["roc_auc_gain"], settings.roc_auc_margin),
        probability_cost=_share_above(draws["cost_saving"], settings.cost_margin),
        samples=settings.bootstrap_samples,
        seed=seed,
    )
    return comparison, draws


def decide(
    floors: list[FloorCheck],
    comparison: Comparison | None,
    settings: RegisterConfig,
    notes: list[str] | None = None,
) -> GateDecision:
    """Apply the rule in this module's docstring."""
    notes = list(notes or [])
    notes += [check.note for check in floors if check.required is None]
    failed = [check for check in floors if not check.passed]
    if failed:
        reason = "floor not met: " + "; ".join(check.note for check in failed)
        return GateDecision(REJECTED, reason, floors, comparison, notes=notes)
    if comparison is None:
        return GateDecision(PROMOTED, "floors met and there is no champion yet", floors, None, notes=notes)
    level = settings.min_probability_of_improvement
    c = comparison
    options = [
        ("expected_cost", c.cost_saving, settings.cost_margin, c.probability_cost, "expected cost lower"),
        ("roc_auc", c.roc_auc_gain, settings.roc_auc_margin, c.probability_roc_auc, "ROC AUC higher"),
    ]
    for metric, gain, margin, probability, wording in options:
        if gain > margin and probability >= level:
            reason = (
                f"{wording} by {abs(gain):.4f} (margin {margin:g}) with probability of improvement "
                f"{probability:.3f} >= {level:g}"
            )
            return GateDecision(PROMOTED, reason, floors, comparison, deciding_metric=metric, notes=notes)
    parts = []
    for _metric, gain, margin, probability, wording in options:
        name = wording.rsplit(" ", 1)[0]
        if gain <= margin:
            parts.append(f"{name} gain {gain:+.4f} not above margin {margin:g}")
        else:
            parts.append(
                f"{name} gain {gain:+.4f} but probability of improvement {probability:.3f} < {level:g}"
            )
    return GateDecision(
        REJECTED, "not better than the champion: " + "; ".join(parts), floors, comparison, notes=notes
    )
