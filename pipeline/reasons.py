"""Reason codes: per applicant, the characteristics that pushed the score most towards default.

Two methods, each named in the output (``reason_method``) so a reader knows which one spoke:

- ``scorecard_points_below_best_bin`` (a ``woe_scorecard`` model, exact): a characteristic's
  weight is the points the applicant's bin earns below the best bin of that characteristic, the
  "points below maximum" method of adverse-action practice. The points add up to the score, so
  these are exactly the points the applicant lost.
- ``best_value_substitution`` (every other model, calibrated or a soft vote): a characteristic's
  weight is how much the model's own log-odds of default fall when that characteristic alone
  takes, instead of the applicant's value, the most favourable of its typical training values
  (the medians of its training bins, or its frequent categories; stored with the model). It asks
  the model itself, so it is faithful to whatever the model does, interactions included; on a
  scorecard, with a candidate value in every bin, its weights are exactly the lost points divided
  by ``pdo / ln 2`` (the tests check it).

Characteristics with no positive weight are never reasons. Codes are the characteristic's name
in upper case (stable across model versions); texts say the value and how much it cost.
Pure: a fitted model and applicant rows in, codes and texts out. The served model adds them
with one call: ``reasons.explain(estimator, features, metadata, count).frame()``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline import inference, scorecard, stability
from pipeline.evaluation import log_odds
from pipeline.tracking import keys

METHOD_SCORECARD = "scorecard_points_below_best_bin"
METHOD_SUBSTITUTION = "best_value_substitution"
METHOD_COLUMN = "reason_method"
SUBSTITUTED_ROWS = 200_000  # substituted copies held and scored at once: bounds memory on big files
_EPSILON = 1e-9


@dataclass(frozen=True)
class Reasons:
    """Top reasons per applicant (``""`` where an applicant has fewer), and the method used."""

    codes: pd.DataFrame  # columns 1..count
    texts: pd.DataFrame
    method: str
    # The applicants' probabilities when the method scored them anyway (substitution scores the rows
    # with their copies in one call): the caller need not score them again.
    probabilities: np.ndarray | None = None

    def frame(self) -> pd.DataFrame:
        """``reason_1_code``, ``reason_1_text``, ... then ``reason_method``, one row per applicant."""
        return pd.DataFrame(self.columns(self.codes.index), index=self.codes.index)

    def columns(self, index: pd.Index) -> dict[str, Any]:
        """The columns of :meth:`frame` by name, labelled ``index`` (a caller joining them to its own
        columns frames them once)."""
        codes, texts = self.codes.to_numpy(dtype=object), self.texts.to_numpy(dtype=object)
        columns: dict[str, Any] = {}
        for position, rank in enumerate(self.codes.columns):
            # Series keep the object dtype; from an array pandas would infer its string type.
            columns[f"reason_{rank}_code"] = pd.Series(codes[:, position], index, dtype=object, copy=False)
            columns[f"reason_{rank}_text"] = pd.Series(texts[:, position], index, dtype=object, copy=False)
        columns[METHOD_COLUMN] = self.method
        return columns


def code_for(characteristic: str) -> str:
    """The stable code of a characteristic: its name in upper case, other signs as ``_``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", characteristic).strip("_").upper() or "UNNAMED"


def top_reasons(weights: pd.DataFrame, describe, count: int, method: str) -> Reasons:
    """The ``count`` largest positive weights of each row, most important first (ties: column order).

    ``describe(row, characteristic, weight)`` gives the text of one reason; ``row`` is a position.
    """
    values = weights.to_numpy(dtype=float)
    order = np.argsort(-values, axis=1, kind="stable")[:, :count]
    names = list(weights.columns)
    codes = np.full((len(weights), count), "", dtype=object)  # filled in numpy, framed once
    texts = codes.copy()
    for row, positions in enumerate(order):
        for rank, position in enumerate(positions):
            weight = values[row, position]
            if not weight > _EPSILON:
                break
            codes[row, rank] = code_for(names[position])
            texts[row, rank] = describe(row, names[position], weight)
    ranks = pd.Index(range(1, count + 1))
    return Reasons(
        codes=pd.DataFrame(codes, index=weights.index, columns=ranks),
        texts=pd.DataFrame(texts, index=weights.index, columns=ranks),
        method=method,
    )


# --- Exact: the scorecard's points --------------------------------------------------------------------


def scorecard_reasons(model: Any, features: pd.DataFrame, count: int, scaling: scorecard.Scaling) -> Reasons:
    """Points below the best bin of each characteristic, from the scorecard's own table."""
    table = scorecard.scorecard_table(model, scaling)
    best = scorecard.best_points(table)
    lost = (best - scorecard.points(model, features, scaling)).clip(lower=0.0)
    bins = scorecard.bin_labels(model, features)

    def describe(row: int, characteristic: str, weight: float) -> str:
        return f"{characteristic} in {bins[characteristic].iat[row]}: {weight:.1f} points below its best bin"

    return top_reasons(lost, describe, count, METHOD_SCORECARD)


# --- Model-agnostic: substitution of the most favourable typical value -------------------------------


def substitution_weights(
    estimator: Any, features: pd.DataFrame, candidates: Mapping[str, list]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per applicant and characteristic: the fall in log-odds at its most favourable candidate value,
    and that value."""
    weights, best_values, _ = _substitution(estimator, features, candidates)
    return weights, best_values


def _substitution(
    estimator: Any, features: pd.DataFrame, candidates: Mapping[str, list]
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
    """:func:`substitution_weights` and the applicants' probabilities. Applicants go in batches
    whose substituted copies are scored with them in one call each."""
    step = max(SUBSTITUTED_ROWS // _scored_per_applicant(features.columns, candidates), 1)
    if len(features) <= step:  # a request: one batch, nothing to join
        return _substitution_batch(estimator, features, candidates)
    parts = [
        _substitution_batch(estimator, features.iloc[i : i + step], candidates)
        for i in range(0, len(features), step)
    ]
    probabilities = [p for _, _, p in parts]
    joined = None if any(p is None for p in probabilities) else np.concatenate(probabilities)
    return pd.concat([w for w, _, _ in parts]), pd.concat([b for _, b, _ in parts]), joined


def _scored_per_applicant(columns, candidates: Mapping[str, list]) -> int:
    """Rows scored per applicant by substitution: the applicant, then a copy per candidate value."""
    return 1 + sum(len(candidates.get(name) or []) for name in columns)


def _substituted(features: pd.DataFrame, names: list[str], candidates: Mapping[str, list]) -> pd.DataFrame:
    """``features`` itself, then one copy of it per candidate value of each name, in (name, value)
    blocks of ``len(features)`` rows; built column by column in numpy (a frame per copy cost tens of
    ms a row), so that one scoring call covers the applicants and all their copies."""
    n = len(features)
    total = 1 + sum(len(candidates[name]) for name in names)
    columns: dict[str, np.ndarray] = {}
    for column, values in zip(features.columns, inference.column_arrays(features), strict=True):
        if values.dtype.kind in "iub":  # a candidate may be fractional (a quantile)
            values = values.astype(float)
        columns[column] = np.tile(values, total)
    start = 1  # block 0: the applicants as they are
    for name in names:
        block = candidates[name]
        column = columns[name]
        column[start * n : (start + len(block)) * n] = np.repeat(np.array(block, dtype=column.dtype), n)
        start += len(block)
    substituted = inference.frame_of_arrays(columns)
    for column, dtype in features.dtypes.items():  # categorical dtypes come back as they went in
        if isinstance(dtype, pd.CategoricalDtype):
            substituted[column] = substituted[column].astype(dtype)
    return substituted


def _substitution_batch(
    estimator: Any, features: pd.DataFrame, candidates: Mapping[str, list]
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
    """Weights and best values of one batch, and the applicants' own probabilities (None when
    nothing was scored)."""
    names = [name for name in features.columns if candidates.get(name)]
    if not names or features.empty:
        weights = pd.DataFrame(0.0, index=features.index, columns=names)
        return weights, pd.DataFrame("", index=features.index, columns=names, dtype=object), None
    n = len(features)
    probabilities = np.asarray(
        estimator.predict_proba(_substituted(features, names, candidates))[:, 1], dtype=float
    )
    scored = log_odds(probabilities)
    base, start = scored[:n], 1
    lost, best = {}, {}  # frames built once at the end: a column set at a time costs ms a request
    for name in names:
        k = len(candidates[name])
        block = scored[start * n : (start + k) * n].reshape(k, n)
        start += k
        lowest = block.argmin(axis=0)
        lost[name] = np.maximum(base - block[lowest, np.arange(n)], 0.0)
        best[name] = [candidates[name][i] for i in lowest]
    weights = pd.DataFrame(lost, index=features.index, columns=names, dtype=float)
    best_values = pd.DataFrame(best, index=features.index, columns=names, dtype=object)
    return weights, best_values, probabilities[:n]


def substitution_reasons(
    estimator: Any, features: pd.DataFrame, candidates: Mapping[str, list], count: int
) -> Reasons:
    """Reasons of any model by :func:`substitution_weights`, with the applicants' probabilities."""
    weights, best_values, probabilities = _substitution(estimator, features, candidates)

    values = dict(zip(features.columns, inference.column_arrays(features), strict=True))

    def describe(row: int, characteristic: str, weight: float) -> str:
        value, best = values[characteristic][row], best_values[characteristic].iat[row]
        return (
            f"{characteristic} = {_shown(value)}: log-odds of default {weight:.2f} above "
            f"its most favourable typical value {_shown(best)}"
        )

    given = top_reasons(weights, describe, count, METHOD_SUBSTITUTION)
    return dataclasses.replace(given, probabilities=probabilities)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return "missing" if np.isnan(value) else f"{value:g}"
    return str(value)


# --- The one entry point -----------------------------------------------------------------------------


def explain(estimator: Any, features: pd.DataFrame, metadata: Mapping[str, Any], count: int) -> Reasons:
    """Reason codes for ``features`` (typed model inputs) scored by a logged model and its metadata.

    The exact method for a scorecard (points scaled as recorded at training), substitution
    otherwise (its candidate values come from the training profile in the metadata).
    Rows come back in the order given, labelled 0..n-1.
    """
    features = features.reset_index(drop=True)
    if scorecard.is_scorecard(estimator):
        scaling = scorecard.Scaling(**dict(metadata.get(keys.META_SCORECARD_SCALING) or {}))
        return scorecard_reasons(estimator, features, count, scaling)
    profile = stability.profile_from_metadata(metadata)
    return substitution_reasons(estimator, features, stability.reference_values(profile), count)


def scored_per_applicant(estimator: Any, columns, metadata: Mapping[str, Any]) -> int:
    """Rows :func:`explain` scores per applicant of these ``columns`` (the applicant and its
    substituted copies, in calls of at most ``SUBSTITUTED_ROWS`` rows), to plan its time; 0 for a
    scorecard, whose reasons are its points."""
    if scorecard.is_scorecard(estimator):
        return 0
    candidates = stability.reference_values(stability.profile_from_metadata(metadata))
    return _scored_per_applicant(columns, candidates)


def frequencies(reasons: Reasons) -> pd.DataFrame:
    """How often each code is the first reason and among the top reasons, most frequent first."""
    first = reasons.codes[reasons.codes.columns[0]]
    anywhere = reasons.codes.stack()
    anywhere = anywhere[anywhere != ""]
    frame = pd.DataFrame(
        {"as_first_reason": first[first != ""].value_counts(), "in_top_reasons": anywhere.value_counts()}
    ).fillna(0)
    frame = frame.astype(int).rename_axis("code").reset_index()
    rows = max(len(reasons.codes), 1)
    frame["share_first"] = frame["as_first_reason"] / rows
    frame["share_top"] = frame["in_top_reasons"] / rows
    return frame.sort_values(
        ["in_top_reasons", "as_first_reason", "code"], ascending=[False, False, True]
    ).reset_index(drop=True)
