"""Stage 2 without a store: what stage 1 left of the budget, the report's notes, and permutation
importance on a capped, seeded sample of the test part."""

import numpy as np
import pandas as pd

from pipeline import presentation
from pipeline.models import build_estimator
from pipeline.stages import optimize


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


def _table(n_rows: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=n_rows)
    features = pd.DataFrame({"signal": signal, "noise": rng.normal(size=n_rows)})
    target = pd.Series((signal + rng.normal(scale=0.5, size=n_rows) > 1).astype(int))
    return features, target


def test_importance_scores_a_capped_sample_and_says_how_many_rows():
    features, target = _table(5000)
    model = build_estimator("logistic_regression", {}, [], ["signal", "noise"], seed=0).fit(features, target)
    frame, rows = optimize._importance(model, features, target, repeats=2, seed=0, max_rows=500)
    assert rows == 500
    assert frame["feature"].tolist() == ["signal", "noise"]
    assert frame.loc[0, "importance_mean"] > 0.1
    # Seeded: the same sample, the same figures.
    again, _ = optimize._importance(model, features, target, repeats=2, seed=0, max_rows=500)
    pd.testing.assert_frame_equal(frame, again)


def test_importance_below_the_cap_scores_every_row():
    features, target = _table(300)
    model = build_estimator("logistic_regression", {}, [], ["signal", "noise"], seed=0).fit(features, target)
    _, rows = optimize._importance(model, features, target, repeats=1, seed=0, max_rows=10_000)
    assert rows == 300
