"""Applicant rows as a model takes them: read a file, check it against the model's signature, type it.

Shared by batch scoring and monitoring; :func:`prepare_input` and :func:`known_categories` are pure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError, first_line

logger = logging.getLogger(__name__)

_NUMERIC_TYPES = {"double", "float", "long", "integer"}


@dataclass(frozen=True)
class InputCheck:
    """What :func:`prepare_input` found beyond hard errors."""

    extra_columns: list[str] = field(default_factory=list)
    unseen_categories: dict[str, int] = field(default_factory=dict)  # column -> rows with a new value

    @property
    def unseen_total(self) -> int:
        return sum(self.unseen_categories.values())


def signature_columns(signature) -> list[tuple[str, str]]:
    """``(column, "numeric" | "text")`` for every input the model's signature names."""
    if signature is None or signature.inputs is None:
        raise DataError("the model has no input signature to check the applicants against")
    columns = []
    for spec in signature.inputs.inputs:
        kind = getattr(getattr(spec, "type", None), "name", str(getattr(spec, "type", "")))
        columns.append((spec.name, "numeric" if kind in _NUMERIC_TYPES else "text"))
    return columns


def known_categories(estimator: Any) -> dict[str, set[str]]:
    """Category values each fitted encoder inside ``estimator`` has seen, by input column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    known: dict[str, set[str]] = {}

    def visit(node: Any) -> None:
        if isinstance(node, Pipeline):
            for _, step in node.steps:
                visit(step)
        elif isinstance(node, ColumnTransformer) and hasattr(node, "transformers_"):
            for _, transformer, columns in node.transformers_:
                encoder = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
                categories = getattr(encoder, "categories_", None)
                if categories is None or isinstance(columns, str):
                    continue
                for column, values in zip(columns, categories, strict=False):
                    known.setdefault(str(column), set()).update(str(v) for v in values if not pd.isna(v))
        # Calibration folds, and the members of a soft vote.
        for child in [
            *(getattr(node, "calibrated_classifiers_", None) or []),
            *(getattr(node, "estimators_", None) or []),
        ]:
            visit(child)
        inner = getattr(node, "estimator", None)
        if inner is not None and inner is not node:
            visit(inner)

    visit(estimator)
    return known


def prepare_input(
    frame: pd.DataFrame, columns: list[tuple[str, str]], categories: dict[str, set[str]]
) -> tuple[pd.DataFrame, InputCheck]:
    """The model's input columns, typed as at training; raises DataError naming the bad column."""
    if frame.empty:
        raise DataError("the input has no rows to score")
    names = [name for name, _ in columns]
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise DataError(f"the input lacks column(s) the model needs: {', '.join(missing)}")
    typed: dict[str, pd.Series] = {}
    unseen: dict[str, int] = {}
    for name, kind in columns:
        raw = frame[name]
        if kind == "numeric":
            values = pd.to_numeric(raw, errors="coerce")
            bad = raw[values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")]
            if len(bad):
                raise DataError(
                    f"column '{name}' must be numeric but holds {len(bad)} non-numeric value(s), "
                    f"e.g. {str(bad.iloc[0])[:40]!r}"
                )
            values = values.astype(float)
            if np.isinf(values.to_numpy()).any():
                raise DataError(f"column '{name}' holds infinite values")
            typed[name] = values
        else:
            values = (
                raw.astype(object)
                .where(raw.notna(), np.nan)
                .map(lambda v: v if isinstance(v, float) and np.isnan(v) else str(v))
            )
            typed[name] = values
            if name in categories:
                new = values.notna() & ~values.isin(categories[name])
                if new.any():
                    unseen[name] = int(new.sum())
    extra = [str(c) for c in frame.columns if c not in set(names)]
    return pd.DataFrame(typed, index=frame.index)[names], InputCheck(extra, unseen)


def read_applicants(path: Path) -> pd.DataFrame:
    """Read a CSV (every cell as text, so the output repeats the input exactly) or Parquet file."""
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"input file {path.name} is empty") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"cannot read input file {path.name}: {first_line(error, default='')}") from None


def model_inputs(frame: pd.DataFrame, estimator: Any, signature: Any) -> tuple[pd.DataFrame, InputCheck]:
    """The model's typed inputs from applicant rows; logs the columns ignored and the values unseen."""
    features, check = prepare_input(frame, signature_columns(signature), known_categories(estimator))
    if check.extra_columns:
        logger.info(
            "ignoring %d input column(s) the model does not use: %s",
            len(check.extra_columns),
            ", ".join(check.extra_columns),
        )
    if check.unseen_total:
        logger.warning(
            "%d value(s) in %d column(s) were not seen in training and are scored as unknown: %s",
            check.unseen_total,
            len(check.unseen_categories),
            ", ".join(f"{column} ({count})" for column, count in check.unseen_categories.items()),
        )
    return features, check
