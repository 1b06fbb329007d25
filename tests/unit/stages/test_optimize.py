"""Stage 2 without a store: the report's notes on what the budget cut short."""

import pandas as pd

from pipeline import presentation


def test_the_report_says_which_steps_the_budget_cut_short():
    steps = pd.DataFrame(
        [
            {"step": "research", "planned_seconds": 18.0, "spent_seconds": 20.0, "stopped_by": "time"},
            {"step": "tune.lightgbm", "planned_seconds": 10.0, "spent_seconds": 10.4, "stopped_by": "time"},
            {"step": "tune.knn", "planned_seconds": 2.0, "spent_seconds": 0.0, "stopped_by": "skipped"},
            {"step": "final", "planned_seconds": 15.0, "spent_seconds": 12.0, "stopped_by": None},
        ]
    )
    notes = presentation.budget_notes(steps)
    assert notes == [
        "research: stopped by time after 20 s of 18 s",
        "tune.lightgbm: stopped by time after 10 s of 10 s",
        "tune.knn: skipped, its one trial could not fit its 2 s",
    ]
    assert presentation.budget_notes(steps.iloc[3:]) == []
