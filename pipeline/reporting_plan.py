"""The final step's reporting plan (pure): how many test rows permutation importance scores, with how
many repeats, and how many rejected applicants get reason codes, within the time the budget leaves.

Both are planned from one measured figure, what a scoring call of the final model costs
(``ScoringCost``: a fixed part and a part per row), so they hold at any data size; stage 2 times the
calls, these functions decide, and the run records the rows each got.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Permutation importance on fewer rows than this says little; it gets them even when time is up.
MIN_IMPORTANCE_ROWS = 200
MAX_IMPORTANCE_ROWS = 5_000


@dataclass(frozen=True)
class ScoringCost:
    """Seconds of one scoring call as a fixed part and a part per row, from two timed calls (a few
    rows and many): a forest's or a vote's call has a fixed cost that fewer rows do not remove."""

    fixed: float
    per_row: float

    @classmethod
    def from_calls(cls, small_rows: int, small_seconds: float, rows: int, seconds: float) -> ScoringCost:
        if rows <= small_rows:  # one size measured: all of it counts as fixed
            return cls(max(small_seconds, seconds), 0.0)
        per_row = max(0.0, seconds - small_seconds) / (rows - small_rows)
        return cls(max(0.0, small_seconds - per_row * small_rows), per_row)

    def seconds(self, rows: int) -> float:
        return self.fixed + self.per_row * rows


def importance_plan(
    cost: ScoringCost, n_rows: int, n_features: int, repeats: int, seconds_left: float
) -> tuple[int, int]:
    """Test rows and repeats for permutation importance (``n_features * repeats`` scorings) that fit
    ``seconds_left``: as many rows as fit (at least ``MIN_IMPORTANCE_ROWS``, at most
    ``MAX_IMPORTANCE_ROWS``); when even those do not fit, fewer repeats (at least one)."""
    floor = min(n_rows, MIN_IMPORTANCE_ROWS)
    ceiling = min(n_rows, MAX_IMPORTANCE_ROWS)
    scorings = max(1, n_features * repeats)
    per_scoring = max(0.0, seconds_left) / scorings
    if cost.per_row > 0:
        affordable = (per_scoring - cost.fixed) / cost.per_row
    else:
        affordable = ceiling if cost.fixed <= per_scoring else 0
    if affordable >= floor:
        return int(min(ceiling, affordable)), repeats
    fitting = int(max(0.0, seconds_left) // max(1e-9, n_features * cost.seconds(floor)))
    return floor, max(1, min(repeats, fitting))


# Reason codes for fewer rejected applicants than this say little; they get them even when time is up.
MIN_REASON_ROWS = 200


def reason_seconds(cost: ScoringCost, applicants: int, scored_per_applicant: int, batch_rows: int) -> float:
    """Predicted seconds of reason codes by substitution for ``applicants``: each scored with its
    substituted copies (``scored_per_applicant`` rows), in calls of at most ``batch_rows`` rows."""
    if applicants <= 0 or scored_per_applicant <= 0:
        return 0.0
    calls = math.ceil(applicants / max(1, batch_rows // scored_per_applicant))
    return calls * cost.fixed + applicants * scored_per_applicant * cost.per_row


def reason_rows(
    cost: ScoringCost, applicants: int, scored_per_applicant: int, batch_rows: int, seconds: float
) -> int:
    """How many of ``applicants`` get reason codes within ``seconds``: all that fit, at least
    ``MIN_REASON_ROWS`` (or all there are)."""
    needed = reason_seconds(cost, applicants, scored_per_applicant, batch_rows)
    if needed <= max(0.0, seconds):
        return applicants
    fitting = int(max(0.0, seconds) / (needed / applicants))
    return max(min(applicants, MIN_REASON_ROWS), fitting)


@dataclass(frozen=True)
class ReportingPlan:
    """The final step's reporting on the test part: permutation importance and reason codes."""

    importance_rows: int
    importance_repeats: int
    reason_rows: int


def reporting_plan(
    cost: ScoringCost,
    test_rows: int,
    n_features: int,
    repeats: int,
    rejected: int,
    scored_per_applicant: int,
    batch_rows: int,
    seconds_left: float,
) -> ReportingPlan:
    """Permutation importance (:func:`importance_plan`) and reason codes for the ``rejected``
    applicants (:func:`reason_rows`) within ``seconds_left``: each gets half, and what one needs
    less than its half goes to the other."""
    seconds = max(0.0, seconds_left)
    importance_need = max(1, n_features * repeats) * cost.seconds(min(test_rows, MAX_IMPORTANCE_ROWS))
    reasons_need = reason_seconds(cost, rejected, scored_per_applicant, batch_rows)
    for_reasons = min(reasons_need, max(seconds / 2, seconds - importance_need))
    rows, repeats_kept = importance_plan(cost, test_rows, n_features, repeats, seconds - for_reasons)
    return ReportingPlan(
        rows, repeats_kept, reason_rows(cost, rejected, scored_per_applicant, batch_rows, for_reasons)
    )
