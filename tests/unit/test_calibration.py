"""Calibration kept only when out-of-fold log loss improves without costing ranking."""

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from pipeline.calibration import (
    NONE,
    calibrated,
    choose_method,
    cross_calibrate,
    fold_roc_auc,
    oof_log_loss,
    select_calibration,
)
from pipeline.config import CostConfig
from pipeline.evaluation import best_threshold
from pipeline.training import folds

COSTS = CostConfig(false_negative=5, false_positive=1)


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ({NONE: 0.50, "sigmoid": 0.48, "isotonic": 0.49}, "sigmoid"),
        ({NONE: 0.50, "sigmoid": 0.52, "isotonic": 0.47}, "isotonic"),
        ({NONE: 0.50, "sigmoid": 0.51, "isotonic": 0.55}, NONE),  # calibration hurts
        ({NONE: 0.50, "sigmoid": 0.50}, NONE),  # a tie is not an improvement
        ({NONE: 0.50, "sigmoid": 0.50 - 1e-6}, NONE),  # nor is noise in the last digits
        ({NONE: 0.50}, NONE),  # no methods configured
    ],
)
def test_calibration_chosen_only_when_it_lowers_log_loss(losses, expected):
    assert choose_method(losses) == expected


@pytest.mark.parametrize(
    ("aucs", "max_loss", "expected"),
    [
        ({NONE: 0.80, "sigmoid": 0.80, "isotonic": 0.79}, 0.001, "sigmoid"),  # isotonic ranks worse
        ({NONE: 0.80, "sigmoid": 0.80, "isotonic": 0.7995}, 0.001, "isotonic"),  # within the allowance
        ({NONE: 0.80, "sigmoid": 0.80, "isotonic": 0.79}, 0.02, "isotonic"),
        ({NONE: 0.80, "sigmoid": 0.70, "isotonic": 0.70}, 0.001, NONE),  # both cost ranking
    ],
)
def test_calibration_that_costs_roc_auc_is_not_chosen(aucs, max_loss, expected):
    losses = {NONE: 0.50, "sigmoid": 0.49, "isotonic": 0.47}
    assert choose_method(losses, aucs, max_loss) == expected


def test_sigmoid_keeps_every_folds_ranking_and_isotonic_ties_lower_it():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    scores = 1 / (1 + np.exp(-(1.5 * y + rng.normal(0, 1.2, 400))))
    splits = folds(pd.Series(y), 4, seed=0)
    before = fold_roc_auc(y, scores, splits)
    assert fold_roc_auc(y, cross_calibrate(y, scores, splits, "sigmoid"), splits) == pytest.approx(before)
    assert fold_roc_auc(y, cross_calibrate(y, scores, splits, "isotonic"), splits) < before


@pytest.fixture(scope="module")
def redundant_data():
    """Three informative features, each copied twice: naive Bayes double-counts and is overconfident."""
    rng = np.random.default_rng(0)
    n = 600
    z = rng.normal(size=(n, 3))
    copies = [z, z + 0.05 * rng.normal(size=(n, 3)), z + 0.05 * rng.normal(size=(n, 3))]
    features = pd.DataFrame(np.hstack(copies), columns=[f"x{i}" for i in range(9)])
    probability = 1 / (1 + np.exp(-(z @ np.array([1.0, -0.8, 0.5]))))
    target = pd.Series((rng.uniform(size=n) < probability).astype(int))
    return features, target, folds(target, 3, seed=0)


def test_overconfident_model_gets_calibrated(redundant_data):
    features, target, splits = redundant_data
    choice = select_calibration(
        GaussianNB(), features, target, splits, ["sigmoid", "isotonic"], COSTS, seed=0
    )
    assert choice.method in {"sigmoid", "isotonic"}
    assert choice.log_losses[choice.method] < choice.log_losses[NONE] - 0.05
    assert choice.roc_aucs[choice.method] >= choice.roc_aucs[NONE] - 0.001
    # The chosen option's out-of-fold scores are the ones its log loss was measured on.
    assert oof_log_loss(target.to_numpy(), choice.oof_scores) == pytest.approx(
        choice.log_losses[choice.method]
    )
    assert not np.isnan(choice.oof_scores).any()


def test_calibration_that_does_not_help_is_not_used(redundant_data):
    features, target, splits = redundant_data
    model = LogisticRegression(max_iter=1000)
    choice = select_calibration(model, features, target, splits, ["isotonic"], COSTS, seed=0)
    assert choice.log_losses["isotonic"] > choice.log_losses[NONE]
    assert choice.method == NONE
    # The threshold then comes from the uncalibrated model's out-of-fold scores.
    assert choice.threshold == best_threshold(target.to_numpy(), choice.oof_scores, COSTS)[0]


def test_calibrated_wrapper_uses_seeded_folds():
    wrapped = calibrated(LogisticRegression(), "sigmoid", n_folds=4, seed=7)
    assert isinstance(wrapped, CalibratedClassifierCV)
    assert wrapped.method == "sigmoid"
    assert wrapped.cv.n_splits == 4 and wrapped.cv.random_state == 7 and wrapped.cv.shuffle


def test_cross_calibration_never_uses_a_folds_own_labels():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    scores = np.clip(0.5 * y + rng.normal(0.25, 0.2, 200), 0.01, 0.99)
    splits = folds(pd.Series(y), 4, seed=0)
    for method in ("sigmoid", "isotonic"):
        before = cross_calibrate(y, scores, splits, method)
        flipped = y.copy()
        first_valid = splits[0][1]
        flipped[first_valid] = 1 - flipped[first_valid]
        after = cross_calibrate(flipped, scores, splits, method)
        # The first fold's calibrated scores depend only on the other folds' labels.
        np.testing.assert_array_equal(before[first_valid], after[first_valid])
        assert not np.array_equal(before, after)
        assert ((before >= 0) & (before <= 1)).all()


class _DoubledMargin(LogisticRegression):
    """A decision function that is not its probabilities' log-odds."""

    def decision_function(self, X):
        return 2.0 * super().decision_function(X)


def _lightgbm():
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=30, num_leaves=7, random_state=0, verbose=-1)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
@pytest.mark.parametrize(
    "make",
    [GaussianNB, lambda: LogisticRegression(max_iter=1000), _lightgbm, lambda: _DoubledMargin(max_iter=1000)],
    ids=["probabilities", "log-odds", "lightgbm", "other-decision-function"],
)
def test_fitting_on_the_tuned_folds_scores_builds_the_model_a_full_fit_on_those_folds_would(
    redundant_data, method, make
):
    """The calibrator sees what scikit-learn's would: a decision function where the model has one
    (log-odds of the out-of-fold probabilities), else the probabilities; when the decision function
    is something else, the folds are fitted again."""
    from sklearn.model_selection import cross_val_predict

    from pipeline.calibration import fit_on_scores

    features, target, splits = redundant_data
    oof = cross_val_predict(make(), features, target, cv=splits, method="predict_proba")[:, 1]
    quick = fit_on_scores(calibrated(make(), method, n_folds=3, seed=0), features, target, oof)
    # scikit-learn's own: the folds fitted again for the same out-of-fold scores.
    full = CalibratedClassifierCV(make(), method=method, cv=splits, ensemble=False).fit(features, target)
    np.testing.assert_allclose(quick.predict_proba(features), full.predict_proba(features), atol=1e-9)
    np.testing.assert_array_equal(quick.predict(features), full.predict(features))
    assert list(quick.feature_names_in_) == list(features.columns) and quick.n_features_in_ == 9
    assert quick.get_params()["cv"].n_splits == 3  # calibrated()'s parameters


def test_a_model_fitted_on_scores_stores_and_loads_with_the_trusted_types(redundant_data, tmp_path):
    import skops.io

    from pipeline.calibration import fit_on_scores
    from pipeline.models import TRUSTED_TYPES

    features, target, _ = redundant_data
    oof = np.full(len(target), 0.3)
    oof[target.to_numpy() == 1] = 0.6
    quick = fit_on_scores(calibrated(_lightgbm(), "isotonic", n_folds=3, seed=0), features, target, oof)
    skops.io.dump(quick, tmp_path / "model.skops")
    loaded = skops.io.load(tmp_path / "model.skops", trusted=list(TRUSTED_TYPES))
    np.testing.assert_array_equal(loaded.predict_proba(features), quick.predict_proba(features))


def test_fitting_on_scores_refuses_an_unknown_method(redundant_data):
    from pipeline.calibration import fit_on_scores

    features, target, _ = redundant_data
    model = CalibratedClassifierCV(GaussianNB(), method="temperature")
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_on_scores(model, features, target, np.full(len(target), 0.5))


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
@pytest.mark.parametrize(
    "make", [GaussianNB, lambda: LogisticRegression(max_iter=1000)], ids=["probabilities", "log-odds"]
)
def test_a_method_is_judged_on_the_scores_the_shipped_form_gives_each_held_out_fold(
    redundant_data, method, make
):
    """For a model with a decision function the final calibrator sees log-odds (fit_on_scores), so
    the choice must judge a calibrator on log-odds too, not one on probabilities."""
    from sklearn.model_selection import cross_val_predict

    from pipeline.calibration import fit_on_scores
    from pipeline.training import CVResult

    features, target, splits = redundant_data
    y = target.to_numpy()
    oof = cross_val_predict(make(), features, target, cv=splits, method="predict_proba")[:, 1]
    uncalibrated = CVResult(oof, best_threshold(y, oof, COSTS)[0], [], 0.0, 0.0)
    choice = select_calibration(make(), features, target, splits, [method], COSTS, uncalibrated=uncalibrated)
    shipped = np.full(len(y), np.nan)
    for train, valid in splits:
        # The final form, fitted on the other folds' rows and out-of-fold scores, scoring this fold.
        model = fit_on_scores(
            calibrated(make(), method, n_folds=3, seed=0),
            features.iloc[train],
            target.iloc[train],
            oof[train],
        )
        shipped[valid] = model.predict_proba(features.iloc[valid])[:, 1]
    assert choice.log_losses[method] == pytest.approx(oof_log_loss(y, shipped), abs=1e-12)
    assert choice.roc_aucs[method] == pytest.approx(fold_roc_auc(y, shipped, splits), abs=1e-12)
