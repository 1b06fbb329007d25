"""Permutation importance on a capped, seeded sample of the test part."""

import numpy as np
import pandas as pd

from pipeline import evaluation_report
from pipeline.models import build_estimator


def _table(n_rows: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=n_rows)
    features = pd.DataFrame({"signal": signal, "noise": rng.normal(size=n_rows)})
    target = pd.Series((signal + rng.normal(scale=0.5, size=n_rows) > 1).astype(int))
    return features, target


def test_importance_scores_a_capped_sample_and_says_how_many_rows():
    features, target = _table(5000)
    model = build_estimator("logistic_regression", {}, [], ["signal", "noise"], seed=0).fit(features, target)
    frame, rows = evaluation_report.importance(model, features, target, repeats=2, seed=0, max_rows=500)
    assert rows == 500
    assert frame["feature"].tolist() == ["signal", "noise"]
    assert frame.loc[0, "importance_mean"] > 0.1
    # Seeded: the same sample, the same figures.
    again, _ = evaluation_report.importance(model, features, target, repeats=2, seed=0, max_rows=500)
    pd.testing.assert_frame_equal(frame, again)


def test_importance_below_the_cap_scores_every_row():
    features, target = _table(300)
    model = build_estimator("logistic_regression", {}, [], ["signal", "noise"], seed=0).fit(features, target)
    _, rows = evaluation_report.importance(model, features, target, repeats=1, seed=0, max_rows=10_000)
    assert rows == 300
