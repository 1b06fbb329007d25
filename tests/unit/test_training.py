"""pipeline.training: seeded stratified folds, out-of-fold scores, and the threshold and fold metrics
taken from them."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pipeline.config import CostConfig
from pipeline.evaluation import best_threshold, expected_cost
from pipeline.training import cross_validate, folds, positive_scores, result_from_scores, stratified_sample

COSTS = CostConfig(false_negative=5, false_positive=1)
N_ROWS, N_POSITIVE = 90, 30

# What every RecordingClassifier did, in order: ("fit", rows, labels) and ("predict", fitted rows, rows).
LOG: list[tuple] = []


class RecordingClassifier(ClassifierMixin, BaseEstimator):
    """Scores each row with its own ``signal`` column and logs which rows it was fitted on and scored.

    ``cross_validate`` clones the estimator per fold, so the log is kept outside the instances."""

    def fit(self, features, target):
        self.rows_ = frozenset(features["row"].tolist())
        self.classes_ = np.array([0, 1])
        LOG.append(("fit", self.rows_, dict(zip(features["row"], target, strict=True))))
        return self

    def predict_proba(self, features):
        LOG.append(("predict", self.rows_, frozenset(features["row"].tolist())))
        signal = features["signal"].to_numpy(dtype=float)
        return np.column_stack([1 - signal, signal])


@pytest.fixture(autouse=True)
def clear_log():
    LOG.clear()
    yield
    LOG.clear()


@pytest.fixture
def data():
    """90 rows, a third of them positive, shuffled; ``signal`` ranks positives higher but not perfectly."""
    rng = np.random.default_rng(11)
    target = pd.Series(rng.permutation([1] * N_POSITIVE + [0] * (N_ROWS - N_POSITIVE)), name="default")
    signal = np.clip(0.3 + 0.3 * target.to_numpy() + rng.normal(0, 0.15, N_ROWS), 0.01, 0.99)
    features = pd.DataFrame({"row": np.arange(N_ROWS), "signal": signal})
    return features, target


def test_folds_are_seeded_stratified_and_cover_every_row_once(data):
    _, target = data
    splits = folds(target, 3, seed=4)
    assert len(splits) == 3
    again = folds(target, 3, seed=4)
    for (train, valid), (train_again, valid_again) in zip(splits, again, strict=True):
        np.testing.assert_array_equal(train, train_again)
        np.testing.assert_array_equal(valid, valid_again)
    other = folds(target, 3, seed=5)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(splits, other, strict=True))
    # Every row is validated exactly once, and never in the fold it trains.
    np.testing.assert_array_equal(np.sort(np.concatenate([valid for _, valid in splits])), np.arange(N_ROWS))
    for train, valid in splits:
        assert not set(train) & set(valid)
        assert len(train) + len(valid) == N_ROWS
        # Stratified: each fold holds a third of the positives and a third of the negatives.
        assert target.iloc[valid].sum() == N_POSITIVE // 3
        assert len(valid) == N_ROWS // 3


def test_cross_validate_scores_every_row_out_of_fold(data):
    features, target = data
    splits = folds(target, 3, seed=0)
    result = cross_validate(RecordingClassifier(), features, target, splits, COSTS)

    fits = [entry for entry in LOG if entry[0] == "fit"]
    predictions = [entry for entry in LOG if entry[0] == "predict"]
    # One model per fold, fitted on exactly that fold's training rows with their own labels.
    assert [entry[1] for entry in fits] == [frozenset(train.tolist()) for train, _ in splits]
    for _, rows, labels in fits:
        assert labels == {row: target.iloc[row] for row in rows}
    # Each model scores only its fold's validation rows, none of which it was fitted on.
    assert [entry[2] for entry in predictions] == [frozenset(valid.tolist()) for _, valid in splits]
    for _, fitted_on, scored in predictions:
        assert not fitted_on & scored
    # Every row's out-of-fold score is its own, put back in its own position.
    assert not np.isnan(result.oof_scores).any()
    np.testing.assert_array_equal(result.oof_scores, features["signal"].to_numpy())


def test_threshold_and_fold_metrics_come_from_the_pooled_out_of_fold_scores(data):
    features, target = data
    splits = folds(target, 3, seed=0)
    result = cross_validate(RecordingClassifier(), features, target, splits, COSTS)
    y, oof = target.to_numpy(), result.oof_scores
    # One threshold, chosen on all rows together ...
    assert result.threshold == best_threshold(y, oof, COSTS)[0]
    # ... then every fold is judged at it, on its own validation rows.
    assert len(result.per_fold) == len(splits)
    for metrics, (_, valid) in zip(result.per_fold, splits, strict=True):
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y[valid], oof[valid]))
        assert metrics["expected_cost"] == pytest.approx(
            expected_cost(y[valid], oof[valid], result.threshold, COSTS)
        )
        rejected = oof[valid] >= result.threshold
        assert metrics["tp"] == np.sum(rejected & (y[valid] == 1))
        assert metrics["fn"] == np.sum(~rejected & (y[valid] == 1))
        assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == len(valid)
    summary = result.summary()
    assert summary["cv_threshold"] == result.threshold
    assert summary["cv_roc_auc_mean"] == pytest.approx(np.mean([m["roc_auc"] for m in result.per_fold]))
    assert summary["cv_roc_auc_std"] == pytest.approx(np.std([m["roc_auc"] for m in result.per_fold], ddof=1))
    assert summary["fit_seconds"] >= 0 and summary["predict_seconds"] >= 0


def test_result_from_scores_agrees_with_cross_validate(data):
    features, target = data
    splits = folds(target, 3, seed=2)
    result = cross_validate(LogisticRegression(), features[["signal"]], target, splits, COSTS)
    again = result_from_scores(target.to_numpy(), result.oof_scores, splits, COSTS)
    np.testing.assert_array_equal(again.oof_scores, result.oof_scores)
    assert again.threshold == result.threshold
    assert again.per_fold == result.per_fold
    assert (again.fit_seconds, again.predict_seconds) == (0.0, 0.0)


def test_positive_scores_is_the_second_column_of_predict_proba(data):
    features, target = data
    scored = features.iloc[:5]
    np.testing.assert_array_equal(
        positive_scores(RecordingClassifier().fit(features, target), scored), scored["signal"].to_numpy()
    )
    model = LogisticRegression().fit(features[["signal"]], target)
    assert model.classes_.tolist() == [0, 1]
    probabilities = model.predict_proba(features[["signal"]])
    np.testing.assert_array_equal(positive_scores(model, features[["signal"]]), probabilities[:, 1])
    assert not np.allclose(probabilities[:, 1], probabilities[:, 0])


def test_on_fold_is_called_once_per_fold_in_order_with_the_running_mean_auc(data):
    features, target = data
    splits = folds(target, 3, seed=0)
    calls = []
    result = cross_validate(
        RecordingClassifier(), features, target, splits, COSTS, on_fold=lambda i, auc: calls.append((i, auc))
    )
    assert [i for i, _ in calls] == [0, 1, 2]
    aucs = [metrics["roc_auc"] for metrics in result.per_fold]
    for i, running in calls:
        assert running == pytest.approx(np.mean(aucs[: i + 1]))
    # Folds run one by one here, with the same outcome as without the callback.
    plain = cross_validate(RecordingClassifier(), features, target, splits, COSTS)
    np.testing.assert_array_equal(result.oof_scores, plain.oof_scores)
    assert result.threshold == plain.threshold


def test_on_fold_raising_stops_before_the_next_fold_is_fitted(data):
    features, target = data
    splits = folds(target, 3, seed=0)

    class Pruned(Exception):
        pass

    def prune_after_second(i, _auc):
        if i == 1:
            raise Pruned

    with pytest.raises(Pruned):
        cross_validate(RecordingClassifier(), features, target, splits, COSTS, on_fold=prune_after_second)
    fitted = [entry[1] for entry in LOG if entry[0] == "fit"]
    assert fitted == [frozenset(train.tolist()) for train, _ in splits[:2]]


def test_a_raced_out_candidate_is_scored_on_the_folds_it_ran_only(data):
    """Racing runs some folds first; their result (and threshold) come from those rows alone."""
    from pipeline.training import result_from_folds, run_folds

    features, target = data
    splits = folds(target, 3, seed=0)
    y = target.to_numpy()
    first = run_folds(RecordingClassifier(), features, target, splits, [0])
    partial = result_from_folds(y, first, splits, COSTS)
    assert len(partial.per_fold) == 1
    scored = ~np.isnan(partial.oof_scores)
    np.testing.assert_array_equal(np.flatnonzero(scored), np.sort(splits[0][1]))
    assert partial.threshold == best_threshold(y[scored], partial.oof_scores[scored], COSTS)[0]
    # The other folds added later give exactly the one-go cross-validation.
    rest = run_folds(RecordingClassifier(), features, target, splits, [1, 2], n_jobs=1)
    whole = result_from_folds(y, rest + first, splits, COSTS)
    at_once = cross_validate(RecordingClassifier(), features, target, splits, COSTS)
    np.testing.assert_array_equal(whole.oof_scores, at_once.oof_scores)
    assert whole.threshold == at_once.threshold and whole.per_fold == at_once.per_fold


def test_a_stratified_sample_is_seeded_sorted_and_keeps_the_classes_in_proportion():
    y = pd.Series(np.r_[np.ones(300, dtype=int), np.zeros(2_700, dtype=int)]).sample(frac=1, random_state=3)
    rows = stratified_sample(y, 1_000, seed=7)
    assert len(rows) == 1_000 and len(set(rows)) == 1_000 and np.all(np.diff(rows) > 0)
    assert y.iloc[rows].sum() == 100  # 10 % positives, as in the whole
    assert np.array_equal(rows, stratified_sample(y, 1_000, seed=7))
    assert not np.array_equal(rows, stratified_sample(y, 1_000, seed=8))
    # Asked for all the rows or more: every position, in order.
    assert np.array_equal(stratified_sample(y, 5_000, seed=7), np.arange(3_000))


def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


def test_fold_workers_start_ahead_with_their_modules_and_the_folds_reuse_them():
    from joblib import Parallel, delayed

    from pipeline.training import start_fold_workers

    assert start_fold_workers(1, ["colorsys"], folds=5) is None  # folds run in this process: nothing to start
    assert start_fold_workers(2, ["colorsys"], folds=1) is None  # one fold at a time: no worker needed
    started = start_fold_workers(2, ["colorsys"], folds=5)  # a module nothing else here imports
    started.join(timeout=300)
    assert not started.is_alive()
    # The folds' next parallel call runs in the workers started ahead, which hold the module already.
    assert any(Parallel(n_jobs=2)(delayed(_imported)("colorsys") for _ in range(2)))
