"""The smoke test's pure parts: request bodies, and judging what the scoring server answered.

A version passes when the server answers ``/ping``; scores the logged input example and held-out
rows exactly as batch scoring does (every probability within the tolerance, the same decisions and
threshold); and answers a request that lacks a column the model needs with HTTP 400 saying so.
Pure: frames and answers in, verdicts out; the HTTP is :mod:`pipeline.serving`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline import scoring

PING = "ping"
INPUT_EXAMPLE = "input_example"
HELD_OUT_ROWS = "held_out_rows"
MALFORMED_REQUEST = "malformed_request"
START = "start"  # the server itself: recorded as a failed check when it does not come up
CHECKS = (PING, INPUT_EXAMPLE, HELD_OUT_ROWS, MALFORMED_REQUEST)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    seconds: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failures(checks: Sequence[Check]) -> str:
    """The failed checks on one line; empty when every check passed."""
    return "; ".join(f"{check.name}: {check.detail}" for check in checks if not check.passed)


def _plain(value: Any) -> Any:
    """A JSON value for one cell: numpy scalars as Python numbers, missing as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def _rows(frame: pd.DataFrame) -> list[list[Any]]:
    return [[_plain(value) for value in row] for row in frame.itertuples(index=False, name=None)]


def split_body(frame: pd.DataFrame) -> str:
    """A ``dataframe_split`` request body (floats written exactly: Python's shortest repr)."""
    return json.dumps({"dataframe_split": {"columns": [str(c) for c in frame.columns], "data": _rows(frame)}})


def records_body(frame: pd.DataFrame) -> str:
    """A ``dataframe_records`` request body."""
    columns = [str(c) for c in frame.columns]
    return json.dumps({"dataframe_records": [dict(zip(columns, row, strict=True)) for row in _rows(frame)]})


def malformed_body(
    frame: pd.DataFrame, columns: Sequence[scoring.InputColumn]
) -> tuple[str, tuple[str, ...]]:
    """A request the server must refuse, and the words its refusal must hold.

    The rows without the first column the model requires (the refusal must say it is missing and
    name it: the schema the message also lists names every column); when every column is
    optional, a body that is not JSON.
    """
    required = [c.name for c in columns if c.required and c.name in frame.columns]
    if not required:
        return '{"dataframe_split": ', ("JSON",)
    return split_body(frame.drop(columns=[required[0]])), ("missing", f"'{required[0]}'")


def judge_scores(expected: pd.DataFrame, status: int, answer: Any, tolerance: float) -> tuple[bool, str]:
    """Whether the server's answer to scoring ``expected``'s rows equals batch scoring.

    ``answer`` is the parsed JSON body (``{"predictions": [{...}, ...]}``).
    """
    if status != 200:
        return False, f"HTTP {status}"
    try:
        served = pd.DataFrame(answer["predictions"])
        served = served[list(scoring.OUTPUT_COLUMNS)]
    except (KeyError, TypeError, ValueError) as error:
        return (
            False,
            f"the answer is not one row per applicant with {list(scoring.OUTPUT_COLUMNS)}: {error!r}",
        )
    if len(served) != len(expected):
        return False, f"{len(served)} predictions for {len(expected)} rows"
    probability = pd.to_numeric(served[scoring.PROBABILITY_COLUMN], errors="coerce").to_numpy(dtype=float)
    wanted = expected[scoring.PROBABILITY_COLUMN].to_numpy(dtype=float)
    difference = float(np.max(np.abs(probability - wanted))) if len(wanted) else 0.0
    if not np.isfinite(difference) or difference > tolerance:
        return (
            False,
            f"probabilities differ from batch scoring by up to {difference:.3g} (tolerance {tolerance:g})",
        )
    decisions = (
        served[scoring.DECISION_COLUMN].to_numpy() != expected[scoring.DECISION_COLUMN].to_numpy()
    ).sum()
    if decisions:
        return False, f"{decisions} decision(s) differ from batch scoring"
    thresholds = pd.to_numeric(served[scoring.THRESHOLD_COLUMN], errors="coerce").to_numpy(dtype=float)
    if not np.allclose(
        thresholds, expected[scoring.THRESHOLD_COLUMN].to_numpy(dtype=float), rtol=0, atol=tolerance
    ):
        return False, "the threshold differs from the recorded one"
    return True, f"{len(expected)} rows as batch scoring (largest difference {difference:.3g})"


def judge_refusal(status: int, message: str, words: Sequence[str]) -> tuple[bool, str]:
    """Whether a malformed request got HTTP 400 with a message holding every one of ``words``."""
    if status != 400:
        return False, f"HTTP {status} instead of 400"
    absent = [word for word in words if word not in message]
    if absent:
        return False, f"HTTP 400 without {', '.join(absent)} in its message"
    return True, f"HTTP 400 saying {' '.join(words)}"
