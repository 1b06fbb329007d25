"""pipeline.inference: a loaded model readied for few rows gives scikit-learn's probabilities exactly."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import VotingClassifier

from pipeline import inference
from pipeline.models import build_estimator
from tests.conftest import PROJECT_ROOT

SMALL = {
    "random_forest": {"n_estimators": 15, "min_samples_leaf": 2},
    "extra_trees": {"n_estimators": 15, "min_samples_leaf": 2},
    "lightgbm": {"n_estimators": 20, "verbose": -1},
    "hist_gradient_boosting": {"max_iter": 20},
}


@pytest.fixture(scope="module")
def german():
    """The shipped table with gaps in a number and a text column, and rows to score that also hold a
    category never seen in training."""
    frame = pd.read_csv(PROJECT_ROOT / "data" / "german_credit.csv")
    target = frame.pop("default")
    categorical = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in frame.columns if c not in categorical]
    frame = frame.astype({c: float for c in numeric}).astype({c: object for c in categorical})
    frame.loc[frame.index % 7 == 0, numeric[0]] = np.nan
    frame.loc[frame.index % 11 == 0, categorical[0]] = np.nan
    rows = frame.head(60).copy()
    rows.loc[rows.index[:5], categorical[1]] = "a value never seen"
    return frame, target, categorical, numeric, rows


def _on_one_thread(model):
    """A copy of ``model`` as scikit-learn predicts on one thread: the reference (several threads
    sum a forest's trees in another order, which moves the last bits)."""
    reference = copy.deepcopy(model)
    for part in inference.parts(reference):
        if type(part).__module__.startswith("sklearn.") and getattr(part, "n_jobs", None):
            part.n_jobs = 1
    return reference


def _fitted(family: str, german, calibrated: bool):
    frame, target, categorical, numeric, _ = german
    model = build_estimator(family, SMALL.get(family, {}), categorical, numeric, 0, n_jobs=2)
    if calibrated:
        model = CalibratedClassifierCV(model, cv=2, method="sigmoid", ensemble=False)
    return model.fit(frame, target)


@pytest.mark.parametrize(
    ("family", "calibrated"),
    [
        ("random_forest", False),
        ("random_forest", True),
        ("extra_trees", False),
        ("logistic_regression", True),  # imputer + scaler, imputer + sparse one-hot
        ("naive_bayes", False),  # dense one-hot
        ("hist_gradient_boosting", False),  # native categories, numbers passed through
        ("lightgbm", False),
        ("decision_tree", False),
    ],
)
def test_readied_models_give_scikit_learns_probabilities_bit_for_bit(german, family, calibrated):
    rows = german[4]
    model = _fitted(family, german, calibrated)
    untouched = _on_one_thread(model)
    readied = inference.for_few_rows(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "X does not have valid feature names"
        for batch in (rows, rows.head(1)):
            assert np.array_equal(readied.predict_proba(batch), untouched.predict_proba(batch))


def test_a_soft_vote_readied_twice_is_unchanged(german):
    frame, target, categorical, numeric, rows = german
    vote = VotingClassifier(
        [
            ("forest", build_estimator("random_forest", SMALL["random_forest"], categorical, numeric, 0)),
            ("linear", build_estimator("logistic_regression", {}, categorical, numeric, 0)),
        ],
        voting="soft",
        n_jobs=2,
    ).fit(frame, target)
    expected = _on_one_thread(vote).predict_proba(rows)
    readied = inference.for_few_rows(inference.for_few_rows(vote))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(readied.predict_proba(rows), expected)
    assert readied.n_jobs == 1
    assert all(getattr(part, "n_jobs", None) in (None, 1) for part in inference.parts(readied))


def test_the_fast_paths_are_taken_and_anything_else_goes_to_scikit_learn(german):
    categorical, rows = german[2], german[4]
    model = inference.for_few_rows(_fitted("random_forest", german, calibrated=False))
    forest = model.named_steps["model"]
    preprocess = model.named_steps["preprocess"]
    assert isinstance(vars(forest)["predict_proba"], inference._TreeByTreeProbabilities)
    encoder = preprocess.named_transformers_["categorical"]
    assert isinstance(vars(encoder)["transform"], inference._TransformByArray)
    # Columns in another order than fitted: the encoder's own method, which names the problem.
    shuffled = rows[categorical[::-1]]
    with pytest.raises(ValueError, match="feature names"):
        encoder.transform(shuffled)
    given = rows[categorical]
    assert np.array_equal(encoder.transform(given), type(encoder).transform(encoder, given))
