"""The one scoring path: applicants as users hold them in, probability and decision out.

Pure: frames and a fitted estimator in, frames out; no files, no tracking. The batch command
(:mod:`pipeline.stages.predict`) and the logged model's pyfunc (:mod:`pipeline.tracking.scorer`,
what ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` run) both call :func:`score`, so
they cannot drift. A column added to the output is added in :func:`score`, for both.

The decision follows :mod:`pipeline.evaluation`: ``reject`` when the probability is at or above the
model's recorded threshold, else ``accept``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline import inference, reasons
from pipeline.errors import DataError

PROBABILITY_COLUMN = "default_probability"
DECISION_COLUMN = "decision"
THRESHOLD_COLUMN = "threshold"
OUTPUT_COLUMNS = (PROBABILITY_COLUMN, DECISION_COLUMN, THRESHOLD_COLUMN)
REASON_COUNT = "count"  # in ScoringSpec.reasons: how many reasons per applicant
ACCEPT, REJECT = "accept", "reject"

# How an input column is held: whole numbers, any number, or text.
INTEGER, NUMBER, TEXT = "integer", "number", "text"
KINDS = (INTEGER, NUMBER, TEXT)
# Whole numbers beyond this are not exact in a float64, so such a column is not called integer.
_LARGEST_EXACT_INTEGER = 2.0**53


@dataclass(frozen=True)
class InputColumn:
    """One input the model takes: its name, how it is held, and whether it must be given."""

    name: str
    kind: str
    required: bool = True


@dataclass(frozen=True)
class ScoringSpec:
    """What scoring needs besides the estimator: the decision threshold and the input columns."""

    threshold: float
    columns: tuple[InputColumn, ...]
    # What reason codes need (pipeline.reasons.explain): the count, the training profile and the
    # scorecard scaling, as recorded at training; None for a model logged before reason codes.
    reasons: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "threshold": float(self.threshold),
            "columns": [{"name": c.name, "kind": c.kind, "required": c.required} for c in self.columns],
        }
        if self.reasons is not None:
            data["reasons"] = self.reasons
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoringSpec:
        """Rebuild a spec; raises ValueError when ``data`` is not one."""
        try:
            threshold = float(data["threshold"])
            columns = tuple(
                InputColumn(str(c["name"]), str(c["kind"]), bool(c["required"])) for c in data["columns"]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a scoring spec: {error!r}") from None
        unknown = sorted({c.kind for c in columns} - set(KINDS))
        if unknown or not columns or not np.isfinite(threshold):
            raise ValueError(
                f"not a scoring spec: unknown kinds {unknown}, {len(columns)} columns, threshold {threshold}"
            )
        reasons = data.get("reasons")
        return cls(threshold, columns, dict(reasons) if isinstance(reasons, Mapping) else None)


@dataclass(frozen=True)
class InputCheck:
    """What :func:`prepare_input` found beyond hard errors."""

    extra_columns: list[str] = field(default_factory=list)
    unseen_categories: dict[str, int] = field(default_factory=dict)  # column -> rows with a new value
    absent_optional: list[str] = field(default_factory=list)  # optional columns not given: all missing

    @property
    def unseen_total(self) -> int:
        return sum(self.unseen_categories.values())


@dataclass(frozen=True)
class Scorer:
    """A fitted estimator with its spec, and the category values its encoders know."""

    estimator: Any
    spec: ScoringSpec
    categories: dict[str, set[str]]

    @classmethod
    def of(cls, estimator: Any, spec: ScoringSpec) -> Scorer:
        return cls(inference.for_few_rows(estimator), spec, known_categories(estimator))

    @property
    def threshold(self) -> float:
        return self.spec.threshold


@dataclass(frozen=True)
class Scored:
    """The output columns, one row per input row (same index), and what the input check found."""

    output: pd.DataFrame
    check: InputCheck

    @property
    def rejected(self) -> int:
        return int((self.output[DECISION_COLUMN] == REJECT).sum())


def describe_inputs(features: pd.DataFrame) -> tuple[InputColumn, ...]:
    """Each training column as users hold it: text, whole numbers, or numbers; optional where the
    training data has missing values.

    A whole-number column with missing values is a number column: an integer column cannot hold a
    missing value (pandas and MLflow's signature enforcement read it as float).
    """
    columns = []
    for name in features.columns:
        values = features[name]
        missing = bool(values.isna().any())
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            present = values.dropna().to_numpy(dtype=float)
            whole = bool(
                len(present)
                and np.isfinite(present).all()
                and (np.abs(present) < _LARGEST_EXACT_INTEGER).all()
                and (present == np.floor(present)).all()
            )
            kind = INTEGER if whole and not missing else NUMBER
        else:
            kind = TEXT
        columns.append(InputColumn(str(name), kind, required=not missing))
    return tuple(columns)


def raw_rows(features: pd.DataFrame, columns: Sequence[InputColumn]) -> pd.DataFrame:
    """Rows of the training frame typed as users hold them (integer columns as integers)."""
    typed = {}
    for column in columns:
        values = features[column.name]
        typed[column.name] = values.astype("int64") if column.kind == INTEGER else values
    return pd.DataFrame(typed, index=features.index)


def known_categories(estimator: Any) -> dict[str, set[str]]:
    """Category values each fitted encoder inside ``estimator`` has seen, by input column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    known: dict[str, set[str]] = {}
    for node in inference.parts(estimator):
        if not (isinstance(node, ColumnTransformer) and hasattr(node, "transformers_")):
            continue
        for _, transformer, columns in node.transformers_:
            encoder = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
            categories = getattr(encoder, "categories_", None)
            if categories is None or isinstance(columns, str):
                continue
            for column, values in zip(columns, categories, strict=False):
                known.setdefault(str(column), set()).update(str(v) for v in values if not pd.isna(v))
    return known


# Typing works on the numpy arrays the frame holds (inference.column_arrays): a request is often one
# row, where pandas' per-operation overhead, not the data, is the cost.


def _numeric(name: str, raw: np.ndarray) -> np.ndarray:
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iuf":
        values = raw.astype(float)
    else:  # text, as a CSV is read: numbers, blanks (missing) or a mistake to name; or pandas' own types
        raw = pd.Series(raw)
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            return _numeric(name, raw.to_numpy(dtype=float, na_value=np.nan))
        parsed = pd.to_numeric(raw, errors="coerce")
        suspect = parsed.isna() & raw.notna()
        if suspect.any():
            bad = raw[suspect & (raw.astype(str).str.strip() != "")]
            if len(bad):
                raise DataError(
                    f"column '{name}' must be numeric but holds {len(bad)} non-numeric value(s), "
                    f"e.g. {str(bad.iloc[0])[:40]!r}"
                )
        values = parsed.to_numpy(dtype=float, na_value=np.nan)
    if np.isinf(values).any():
        raise DataError(f"column '{name}' holds infinite values")
    return values


def _text(raw: np.ndarray) -> np.ndarray:
    """Plain strings with NaN for missing, as an object array: what the encoders were fitted on."""
    values = np.asarray(raw, dtype=object)
    missing = pd.isna(values)
    text = values.astype(str).astype(object)
    text[missing] = np.nan
    return text


def prepare_input(
    frame: pd.DataFrame, columns: Sequence[InputColumn], categories: Mapping[str, set[str]]
) -> tuple[pd.DataFrame, InputCheck]:
    """The model's input columns, typed as at training; raises DataError naming the bad column.

    An optional column that is absent counts as missing in every row (the model imputes it).
    """
    if frame.empty:
        raise DataError("the input has no rows to score")
    missing = [c.name for c in columns if c.required and c.name not in frame.columns]
    if missing:
        raise DataError(f"the input lacks column(s) the model needs: {', '.join(missing)}")
    if frame.columns.has_duplicates:
        repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise DataError(f"the input repeats column(s): {', '.join(repeated)}")
    given = dict(zip(frame.columns, inference.column_arrays(frame), strict=True))
    typed: dict[str, np.ndarray] = {}
    unseen: dict[str, int] = {}
    absent: list[str] = []
    for column in columns:
        raw = given.get(column.name)
        if raw is None:
            absent.append(column.name)
            raw = np.full(len(frame), np.nan, dtype=object)
        if column.kind == TEXT:
            values = _text(raw)
            known = categories.get(column.name)
            if known is not None:
                new = sum(1 for value in values if isinstance(value, str) and value not in known)
                if new:
                    unseen[column.name] = new
        else:
            values = _numeric(column.name, raw)
        typed[column.name] = values
    names = {c.name for c in columns}
    extra = [str(c) for c in frame.columns if c not in names]
    return inference.frame_of_arrays(typed, frame.index), InputCheck(extra, unseen, absent)


def decide(probabilities: np.ndarray, threshold: float, index: pd.Index | None = None) -> pd.DataFrame:
    """The output columns for given probabilities: the probability, the decision, the threshold."""
    return pd.DataFrame(_decision_columns(probabilities, threshold), index=index)


def _decision_columns(probabilities: np.ndarray, threshold: float) -> dict[str, Any]:
    probabilities = np.asarray(probabilities, dtype=float)
    return {
        PROBABILITY_COLUMN: probabilities,
        DECISION_COLUMN: np.where(probabilities >= threshold, REJECT, ACCEPT),
        THRESHOLD_COLUMN: float(threshold),
    }


def score(scorer: Scorer, frame: pd.DataFrame) -> Scored:
    """Score applicants: check and type the input, then probability, decision and, when the model
    recorded what they need, the top reasons per row."""
    features, check = prepare_input(frame, scorer.spec.columns, scorer.categories)
    given = None
    if scorer.spec.reasons is not None:
        recorded = scorer.spec.reasons
        given = reasons.explain(scorer.estimator, features, recorded, int(recorded[REASON_COUNT]))
    # Substitution scored the rows with their copies in one call: one call is most of a request's time.
    if given is not None and given.probabilities is not None:
        probabilities = given.probabilities
    else:
        probabilities = scorer.estimator.predict_proba(features)[:, 1]
    columns = _decision_columns(probabilities, scorer.threshold)
    if given is not None:
        columns.update(given.columns(frame.index))
    return Scored(pd.DataFrame(columns, index=frame.index), check)
