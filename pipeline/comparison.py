"""Champion against challenger on the same test rows, for people: every figure a lender reads, each
difference with a paired-bootstrap interval. Pure: arrays in, a table out.

Each model decides at its own recorded threshold (reject when the probability is at or above it).
The resamples are the gate's (:func:`pipeline.gate.resample_blocks` with the same seed), so the
intervals here and the gate's probability of improvement describe the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import CostConfig
from pipeline.gate import resample_blocks, row_costs

INTERVAL_LEVEL = 0.90
PER_APPLICANTS = 1000


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool
    digits: int = 4


# In the order a comparison table lists them: ranking power first, then the business at the threshold.
METRICS = (
    Metric("roc_auc", "ROC AUC", True),
    Metric("average_precision", "average precision", True),
    Metric("ks", "KS", True),
    Metric("brier", "Brier score", False),
    Metric("expected_cost", "expected cost per applicant", False),
    Metric("cost_per_1000", f"expected cost per {PER_APPLICANTS:,} applicants", False, 1),
    Metric("approval_rate", "approval rate", True),
    Metric("bad_rate_approved", "bad rate among the approved", False),
)
CONFUSION = ("tn", "fp", "fn", "tp")  # tn: good applicant accepted ... tp: defaulter rejected
COLUMNS = [
    "metric",
    "label",
    "champion",
    "challenger",
    "difference",
    "interval_low",
    "interval_high",
    "better",
]
CONFUSION_COLUMNS = ["model", "threshold", *CONFUSION]


def _by_group(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """Weighted defaulters and payers per distinct score, ascending: (positives, negatives)."""
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    ends = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1]
    sorted_weights, sorted_y = weights[:, order], y_true[order]

    def per_group(values: np.ndarray) -> np.ndarray:
        return np.diff(np.cumsum(values, axis=1)[:, ends], axis=1, prepend=0.0)

    return per_group(sorted_weights * sorted_y), per_group(sorted_weights * ~sorted_y)


def weighted_metrics(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, costs: CostConfig, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each row of ``weights`` (how often each test row is drawn).

    With one row of ones this is the plain figure on the test part. Ties in scores are exact:
    rows are grouped by distinct score, as scikit-learn's curves do.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    total = weights.sum(axis=1)
    positives, negatives = _by_group(y, scores, weights)
    total_pos, total_neg = positives.sum(axis=1), negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        negatives_below = np.cumsum(negatives, axis=1) - negatives
        auc = np.sum(positives * (negatives_below + 0.5 * negatives), axis=1) / (total_pos * total_neg)
        # KS: the largest gap between the classes' score distributions.
        ks = np.max(
            np.abs(
                np.cumsum(positives, axis=1) / total_pos[:, None]
                - np.cumsum(negatives, axis=1) / total_neg[:, None]
            ),
            axis=1,
        )
        # Average precision over descending thresholds: sum of recall steps times precision there.
        pos_down, neg_down = positives[:, ::-1], negatives[:, ::-1]
        caught, flagged = np.cumsum(pos_down, axis=1), np.cumsum(pos_down + neg_down, axis=1)
        precision = np.where(flagged > 0, caught / np.where(flagged > 0, flagged, 1), 0.0)
        average_precision = np.sum(pos_down / total_pos[:, None] * precision, axis=1)
        brier = weights @ (scores - y) ** 2 / total
        cost = weights @ row_costs(y.astype(int), scores, threshold, costs) / total
        approved = scores < threshold
        approval = weights @ approved / total
        approved_weight = weights @ approved
        bad_rate = np.where(approved_weight > 0, weights @ (approved & y) / approved_weight, np.nan)
    return {
        "roc_auc": auc,
        "average_precision": average_precision,
        "ks": ks,
        "brier": brier,
        "expected_cost": cost,
        "cost_per_1000": cost * PER_APPLICANTS,
        "approval_rate": approval,
        "bad_rate_approved": bad_rate,
    }


def confusion(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts at the threshold; positive = reject."""
    y = np.asarray(y_true).astype(bool)
    reject = np.asarray(scores, dtype=float) >= threshold
    return {
        "tn": int(np.sum(~reject & ~y)),
        "fp": int(np.sum(reject & ~y)),
        "fn": int(np.sum(~reject & y)),
        "tp": int(np.sum(reject & y)),
    }


def compare_models(
    y_true: np.ndarray,
    challenger_scores: np.ndarray,
    challenger_threshold: float,
    costs: CostConfig,
    champion_scores: np.ndarray | None = None,
    champion_threshold: float | None = None,
    samples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per metric: champion, challenger, difference (challenger - champion) and its
    ``INTERVAL_LEVEL`` paired-bootstrap interval, and which side is better where the interval
    excludes zero. Without a champion, only the challenger's figures are filled in.
    """
    y = np.asarray(y_true).astype(int)
    whole = np.ones((1, len(y)))
    challenger = {
        k: float(v[0])
        for k, v in weighted_metrics(y, challenger_scores, challenger_threshold, costs, whole).items()
    }
    rows = []
    if champion_scores is None or champion_threshold is None:
        for metric in METRICS:
            rows.append({"metric": metric.name, "label": metric.label, "challenger": challenger[metric.name]})
        return pd.DataFrame(rows, columns=COLUMNS)
    champion = {
        k: float(v[0])
        for k, v in weighted_metrics(y, champion_scores, champion_threshold, costs, whole).items()
    }
    differences: dict[str, list[np.ndarray]] = {metric.name: [] for metric in METRICS}
    for block in resample_blocks(len(y), samples, seed):
        ours = weighted_metrics(y, challenger_scores, challenger_threshold, costs, block)
        theirs = weighted_metrics(y, champion_scores, champion_threshold, costs, block)
        for metric in METRICS:
            differences[metric.name].append(ours[metric.name] - theirs[metric.name])
    tail = (1 - INTERVAL_LEVEL) / 2
    for metric in METRICS:
        draws = np.concatenate(differences[metric.name])
        draws = draws[np.isfinite(draws)]
        low, high = np.quantile(draws, [tail, 1 - tail]) if len(draws) else (np.nan, np.nan)
        rows.append(
            {
                "metric": metric.name,
                "label": metric.label,
                "champion": champion[metric.name],
                "challenger": challenger[metric.name],
                "difference": challenger[metric.name] - champion[metric.name],
                "interval_low": float(low),
                "interval_high": float(high),
                "better": _better(metric, float(low), float(high)),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _better(metric: Metric, low: float, high: float) -> str:
    """Which model the interval favours: ``challenger``, ``champion`` or ``unclear`` (it spans zero)."""
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 <= high:
        return "unclear"
    challenger_higher = low > 0
    return "challenger" if challenger_higher == metric.higher_is_better else "champion"


def confusion_frame(
    y_true: np.ndarray,
    challenger_scores: np.ndarray,
    challenger_threshold: float,
    champion_scores: np.ndarray | None = None,
    champion_threshold: float | None = None,
) -> pd.DataFrame:
    """Both confusion matrices at their thresholds, one row per model."""
    rows = [
        {
            "model": "challenger",
            "threshold": challenger_threshold,
            **confusion(y_true, challenger_scores, challenger_threshold),
        }
    ]
    if champion_scores is not None and champion_threshold is not None:
        rows.append(
            {
                "model": "champion",
                "threshold": champion_threshold,
                **confusion(y_true, champion_scores, champion_threshold),
            }
        )
    return pd.DataFrame(rows, columns=CONFUSION_COLUMNS)


def _figure(value: float, digits: int, percent: bool) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.1%}" if percent else f"{value:,.{digits}f}"


def comparison_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table: rounded, blanks for what does not apply."""
    by_name = {metric.name: metric for metric in METRICS}
    has_champion = table["champion"].notna().any()
    header = ["", "champion", "challenger", f"difference ({INTERVAL_LEVEL:.0%} interval)", "better"]
    if not has_champion:
        header = ["", "challenger"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        metric = by_name[row.metric]
        percent = row.metric in {"approval_rate", "bad_rate_approved"}
        digits = metric.digits
        if not has_champion:
            lines.append(f"| {row.label} | {_figure(row.challenger, digits, percent)} |")
            continue
        difference = _figure(row.difference, digits, percent)
        if difference:
            low, high = (
                _figure(row.interval_low, digits, percent),
                _figure(row.interval_high, digits, percent),
            )
            sign = "+" if row.difference > 0 else ""
            difference = f"{sign}{difference} ({low} to {high})"
        cells = [
            row.label,
            _figure(row.champion, digits, percent),
            _figure(row.challenger, digits, percent),
            difference,
            "" if row.better == "unclear" else row.better,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
