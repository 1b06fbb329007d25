"""Population stability: the training profile stored with a model, and PSI/CSI against new applicants.

The **profile** is taken once, at training time, from the model's training part: for the score,
the edges of its deciles (on out-of-fold scores, which is how the model scores rows it has not
seen) and the share of rows in each; for every characteristic, quantile bins (numeric) or its most
frequent categories (categorical), each with its share, plus a bin for missing values (and one for
other categories). It is small (a few numbers per bin) and travels in the logged model's metadata,
read back by :func:`profile_from_metadata` only.

**PSI** (population stability index) compares two distributions over the same bins:
``sum((actual - expected) * ln(actual / expected))``. A share of 0 is floored at ``EMPTY_SHARE``, so
an empty bin adds a large but finite term, never infinity or NaN. The index of the score is the PSI;
the same index of one characteristic is its CSI. The usual reading: below 0.10 stable, 0.10 to 0.25
watch, above 0.25 shifted (thresholds in ``params.yaml``, ``monitor:``).

Pure: frames and arrays in, numbers and tables out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import LookupFailedError
from pipeline.tracking import keys

PROFILE_VERSION = 1
EMPTY_SHARE = 1e-4  # the floor of a share in the PSI: an empty bin gives a finite term
MISSING = "missing"
OTHER = "other"
SCORE = "score"
STABLE, WATCH, SHIFTED = "stable", "watch", "shifted"
_DIGITS = 6


def _quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Interior cut points at the quantiles of ``values``; repeated values give fewer bins."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return []
    cuts = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({round(float(c), 10) for c in cuts})


def numeric_shares(values: np.ndarray | pd.Series, edges: list[float]) -> np.ndarray:
    """Shares of the bins ``(-inf, e1], (e1, e2], ..., (e_k, inf)`` and, last, of missing values."""
    values = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    missing = np.isnan(values)
    counts = np.bincount(
        np.searchsorted(np.asarray(edges, dtype=float), values[~missing], side="left"),
        minlength=len(edges) + 1,
    )
    return _shares(np.append(counts, missing.sum()))


def categorical_shares(values: np.ndarray | pd.Series, categories: list[str]) -> np.ndarray:
    """Shares of each listed category, then of every other category, then of missing values."""
    series = pd.Series(values, dtype=object)
    missing = series.isna()
    text = series[~missing].astype(str)
    counts = [int((text == category).sum()) for category in categories]
    counts += [int(len(text) - sum(counts)), int(missing.sum())]
    return _shares(np.asarray(counts))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def psi(expected: np.ndarray | list[float], actual: np.ndarray | list[float]) -> float:
    """The population stability index of ``actual`` against ``expected`` (shares over the same bins)."""
    expected = np.maximum(np.asarray(expected, dtype=float), EMPTY_SHARE)
    actual = np.maximum(np.asarray(actual, dtype=float), EMPTY_SHARE)
    if expected.shape != actual.shape:
        raise ValueError(f"{expected.size} expected shares against {actual.size} actual ones")
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def status(index: float, watch: float, shift: float) -> str:
    """``stable`` below ``watch``, ``shifted`` above ``shift``, ``watch`` between."""
    if index > shift:
        return SHIFTED
    return WATCH if index >= watch else STABLE


# --- The profile stored with a model ----------------------------------------------------------------


def _numeric_profile(values: pd.Series, bins: int) -> dict[str, Any]:
    array = np.asarray(values, dtype=float)
    edges = _quantile_edges(array, bins)
    finite = array[~np.isnan(array)]
    positions = np.searchsorted(np.asarray(edges), finite, side="left")
    # A typical value of each bin (its median), what reason codes try in its place.
    representatives = [
        float(np.median(finite[positions == i])) for i in range(len(edges) + 1) if (positions == i).any()
    ]
    return {
        "kind": "numeric",
        "edges": edges,
        "shares": [round(float(s), _DIGITS) for s in numeric_shares(array, edges)],
        "values": [round(v, 10) for v in representatives],
    }


def _categorical_profile(values: pd.Series, max_categories: int) -> dict[str, Any]:
    counts = values.dropna().astype(str).value_counts()
    categories = [str(c) for c in counts.index[:max_categories]]
    return {
        "kind": "categorical",
        "categories": categories,
        "shares": [round(float(s), _DIGITS) for s in categorical_shares(values.to_numpy(), categories)],
        "values": categories,
    }


def build_profile(
    features: pd.DataFrame,
    scores: np.ndarray,
    categorical: list[str],
    numeric: list[str],
    bins: int = 10,
    max_categories: int = 20,
) -> dict[str, Any]:
    """The training part's distributions, as stored with the model (JSON-ready, a few KB)."""
    score_edges = _quantile_edges(np.asarray(scores, dtype=float), bins)
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "rows": len(features),
        SCORE: {
            "edges": score_edges,
            "shares": [round(float(s), _DIGITS) for s in numeric_shares(scores, score_edges)],
        },
        "characteristics": {},
    }
    for column in features.columns:
        if column in categorical:
            profile["characteristics"][column] = _categorical_profile(features[column], max_categories)
        elif column in numeric:
            profile["characteristics"][column] = _numeric_profile(features[column], bins)
    return profile


def profile_from_metadata(metadata: Mapping[str, Any], uri: str = "the model") -> dict[str, Any]:
    """The training profile a logged model carries in its metadata; the one reader of that format."""
    profile = metadata.get(keys.META_TRAINING_PROFILE)
    if not isinstance(profile, Mapping) or profile.get("version") != PROFILE_VERSION:
        raise LookupFailedError(
            f"{uri} has no training profile (logged before stability monitoring?); retrain it to monitor it"
        )
    return dict(profile)


def reference_values(profile: Mapping[str, Any]) -> dict[str, list]:
    """Per characteristic, the typical values of its training bins (what reason codes substitute)."""
    return {name: list(entry["values"]) for name, entry in profile["characteristics"].items()}


# --- Comparison -------------------------------------------------------------------------------------


def _bin_labels(entry: Mapping[str, Any]) -> list[str]:
    if entry.get("kind") == "categorical":
        return [*entry["categories"], OTHER, MISSING]
    edges = entry["edges"]
    bounds = ["-inf", *(f"{e:.6g}" for e in edges), "inf"]
    return [f"({bounds[i]}, {bounds[i + 1]}]" for i in range(len(edges) + 1)] + [MISSING]


def _actual_shares(entry: Mapping[str, Any], values: Any) -> np.ndarray:
    if entry.get("kind") == "categorical":
        return categorical_shares(values, entry["categories"])
    return numeric_shares(values, entry["edges"])


def compare(
    profile: Mapping[str, Any], features: pd.DataFrame, scores: np.ndarray, watch: float, shift: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PSI of the score and CSI of every profiled characteristic present in ``features``.

    Returns a summary (``kind``, ``name``, ``index``, ``status``; the score first, then the
    characteristics from most to least shifted) and the bins behind it (``name``, ``bin``,
    ``expected``, ``actual``, ``contribution``).
    """
    entries = {SCORE: ("score", profile[SCORE], scores)}
    for name, entry in profile["characteristics"].items():
        if name in features.columns:
            entries[name] = ("characteristic", entry, features[name].to_numpy())
    summary, details = [], []
    for name, (kind, entry, values) in entries.items():
        expected = np.asarray(entry["shares"], dtype=float)
        actual = _actual_shares(entry, values)
        index = psi(expected, actual)
        summary.append({"kind": kind, "name": name, "index": index, "status": status(index, watch, shift)})
        floored_e, floored_a = np.maximum(expected, EMPTY_SHARE), np.maximum(actual, EMPTY_SHARE)
        for label, e, a, fe, fa in zip(
            _bin_labels(entry), expected, actual, floored_e, floored_a, strict=True
        ):
            details.append(
                {
                    "name": name,
                    "bin": label,
                    "expected": e,
                    "actual": a,
                    "contribution": (fa - fe) * np.log(fa / fe),
                }
            )
    frame = pd.DataFrame(summary)
    head, rest = frame.iloc[:1], frame.iloc[1:].sort_values("index", ascending=False, kind="mergesort")
    return pd.concat([head, rest], ignore_index=True), pd.DataFrame(details)
