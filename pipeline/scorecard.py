"""The WoE scorecard read as a credit-risk team reads it: bins, weights of evidence and points.

A ``woe_scorecard`` model (:mod:`pipeline.models`) is ``Pipeline(preprocess, binning, model)``:
categorical codes, optbinning's ``BinningProcess`` (every characteristic's bins and their weight of
evidence, WoE = ln(share of non-defaults / share of defaults), so a higher WoE is a safer bin) and a
logistic regression on the WoEs. Its log-odds of default are ``b0 + sum_j b_j * woe_j``.

Points follow the usual scaling: ``base_points`` at good:bad odds of ``base_odds``, and
``pdo`` more points for every doubling of those odds. With ``factor = pdo / ln 2`` and
``offset = base_points - factor * ln(base_odds)``, the score is ``offset - factor * logit(p)``;
the intercept and offset are shared equally among the characteristics, so the points of an
applicant's bins add up to the score exactly and :func:`probability_from_score` inverts it.

Pure: fitted models and frames in, tables out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MISSING_BIN = "Missing"
UNSEEN_BIN = "(unseen category)"
TABLE_COLUMNS = ["characteristic", "bin", "count", "event_rate", "woe", "iv", "points"]


@dataclass(frozen=True)
class Scaling:
    """Points scaling: ``base_points`` at good:bad odds ``base_odds``; ``pdo`` points double the odds."""

    base_points: float = 600.0
    base_odds: float = 50.0
    pdo: float = 20.0

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_points - self.factor * math.log(self.base_odds)


def is_scorecard(estimator: Any) -> bool:
    """Whether ``estimator`` is a fitted-or-not ``woe_scorecard`` pipeline."""
    steps = getattr(estimator, "named_steps", None)
    return steps is not None and type(steps.get("binning")).__name__ == "BinningProcess"


def find_scorecard(estimator: Any) -> Any | None:
    """The scorecard pipeline a final model is or contains (a soft vote's member), else None."""
    if is_scorecard(estimator):
        return estimator
    for _, member in getattr(estimator, "named_estimators_", {}).items():
        if is_scorecard(member):
            return member
    return None


def characteristics(model: Any) -> list[str]:
    """The characteristics the scorecard kept (information-value selection), in coefficient order."""
    return [str(name) for name in model.named_steps["binning"].get_support(names=True)]


def _category_names(model: Any) -> dict[str, list[str]]:
    encoder = model.named_steps["preprocess"].named_transformers_.get("categorical")
    columns = model.named_steps["preprocess"].transformers_[0][2]
    if encoder is None or not hasattr(encoder, "categories_"):
        return {}
    return {str(c): [str(v) for v in values] for c, values in zip(columns, encoder.categories_, strict=True)}


def _bin_label(value: Any, names: list[str] | None) -> str:
    if names is None:
        return str(value)
    return " | ".join(names[int(code)] for code in value)


def _coefficients(model: Any) -> tuple[np.ndarray, float]:
    regression = model.named_steps["model"]
    return regression.coef_[0], float(regression.intercept_[0])


def _shared_points(model: Any, scaling: Scaling) -> float:
    """Each characteristic's share of the offset and intercept."""
    _, intercept = _coefficients(model)
    return (scaling.offset - scaling.factor * intercept) / max(len(characteristics(model)), 1)


def scorecard_table(model: Any, scaling: Scaling) -> pd.DataFrame:
    """One row per bin of each kept characteristic: count, event rate, WoE, IV and points.

    Besides the fitted bins, ``Missing`` (its empirical WoE, 0 when training had no missing value)
    and, for categorical characteristics, ``(unseen category)`` (WoE 0) are listed, so every applicant
    falls in exactly one row per characteristic.
    """
    binning = model.named_steps["binning"]
    coefficients, _ = _coefficients(model)
    shared = _shared_points(model, scaling)
    categories = _category_names(model)
    rows = []
    for name in characteristics(model):
        table = binning.get_binned_variable(name).binning_table.build()
        table = table[table.index != "Totals"]
        for _, row in table.iterrows():
            label = row["Bin"]
            if isinstance(label, str) and label == "Special":
                continue  # no special codes are configured: no applicant lands there
            if not isinstance(label, str):
                label = _bin_label(label, categories.get(name))
            rows.append(
                (
                    name,
                    label,
                    int(row["Count"]),
                    float(row["Event rate"] or 0.0),
                    float(row["WoE"]),
                    float(row["IV"]),
                )
            )
        if name in categories:
            rows.append((name, UNSEEN_BIN, 0, 0.0, 0.0, 0.0))
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS[:-1])
    slopes = frame["characteristic"].map(dict(zip(characteristics(model), coefficients, strict=True)))
    frame["points"] = shared - scaling.factor * slopes * frame["woe"]
    frame["event_rate"] = frame["event_rate"].fillna(0.0)
    return frame[TABLE_COLUMNS]


def _encoded(model: Any, features: pd.DataFrame) -> np.ndarray:
    return model.named_steps["preprocess"].transform(features)


def bin_labels(model: Any, features: pd.DataFrame) -> pd.DataFrame:
    """The label (as in :func:`scorecard_table`) of the bin each applicant falls in, per characteristic."""
    binning = model.named_steps["binning"]
    encoded = _encoded(model, features)
    names = list(binning.variable_names)
    categories = _category_names(model)
    labels = {}
    for name in characteristics(model):
        variable = binning.get_binned_variable(name)
        column = encoded[:, names.index(name)]
        index = variable.transform(
            column, metric="indices", metric_missing="empirical", metric_special="empirical"
        )
        regular = [
            label if isinstance(label, str) else _bin_label(label, categories.get(name))
            for label in variable.binning_table.build()["Bin"].iloc[
                : len(variable.splits) + (0 if name in categories else 1)
            ]
        ]
        out = np.full(len(column), MISSING_BIN, dtype=object)
        known = (index >= 0) & (index < len(regular))
        out[known] = np.asarray(regular, dtype=object)[index[known]]
        out[index < 0] = UNSEEN_BIN
        out[pd.isna(column)] = MISSING_BIN
        labels[name] = out
    return pd.DataFrame(labels, index=features.index)


def points(model: Any, features: pd.DataFrame, scaling: Scaling) -> pd.DataFrame:
    """Each applicant's points per kept characteristic; a row's sum is its score."""
    coefficients, _ = _coefficients(model)
    woe = np.asarray(model.named_steps["binning"].transform(_encoded(model, features)), dtype=float)
    values = _shared_points(model, scaling) - scaling.factor * woe * coefficients
    return pd.DataFrame(values, columns=characteristics(model), index=features.index)


def best_points(table: pd.DataFrame) -> pd.Series:
    """Per characteristic, the most points any bin seen in training gives."""
    fitted = table[(table["count"] > 0) & ~table["bin"].isin([MISSING_BIN, UNSEEN_BIN])]
    return fitted.groupby("characteristic", sort=False)["points"].max()


def probability_from_score(score: np.ndarray | float, scaling: Scaling) -> np.ndarray:
    """The probability of default a score stands for (the inverse of the scaling)."""
    log_odds = (scaling.offset - np.asarray(score, dtype=float)) / scaling.factor
    return 1.0 / (1.0 + np.exp(-log_odds))
