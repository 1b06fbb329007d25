import importlib

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.errors import ConfigError
from pipeline.models import (
    FAMILIES,
    FOREST_MAX_BYTES,
    FOREST_MAX_SAMPLES,
    FOREST_NODE_BYTES,
    NATIVE_MAX_LEVELS,
    ONEHOT_MAX_LEVELS,
    ROW_LIMITS,
    build_estimator,
    row_limit_reason,
    size_settings,
    validate_params,
)
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_fits_and_gives_probabilities(family):
    config = load_config(PROJECT_ROOT / "params.yaml")
    dataset = load_dataset(config)
    estimator = build_estimator(family, {}, dataset.categorical, dataset.numeric, seed=0)
    features = dataset.features.iloc[:300]
    estimator.fit(features, dataset.target.iloc[:300])
    unseen = features.iloc[:5].assign(purpose="space travel")
    proba = estimator.predict_proba(unseen)
    assert proba.shape == (5, 2)


def test_unknown_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) for random_forest: n_trees"):
        validate_params("random_forest", {"n_trees": 3}, "research.candidates.rf.params")


def test_scorecard_survives_the_skops_round_trip_with_a_string_column():
    """Pickle-free, trusting only the types listed in code, with a pandas ``str`` categorical column."""
    import numpy as np
    import pandas as pd
    import skops.io

    from pipeline.models import TRUSTED_TYPES

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "purpose": pd.array(rng.choice(["car", "tv", "repairs", "education"], 600), dtype="str"),
            "amount": rng.normal(3000, 800, 600),
        }
    )
    target = ((frame["purpose"] == "education") | (frame["amount"] > 3600)).astype(int)
    target[rng.random(600) < 0.1] ^= 1
    model = build_estimator("woe_scorecard", {}, ["purpose"], ["amount"], seed=0).fit(frame, target)
    data = skops.io.dumps(model)
    assert set(skops.io.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES)
    loaded = skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))


def test_scorecard_binning_settings_are_parameters():
    estimator = build_estimator(
        "woe_scorecard", {"max_n_bins": 3, "min_iv": 0.0, "monotonic_trend": None, "C": 0.5}, ["a"], ["b"], 0
    )
    binning = estimator.named_steps["binning"]
    assert binning.max_n_bins == 3
    assert binning.selection_criteria is None  # min_iv 0: no selection
    assert binning.binning_fit_params == {"b": {"monotonic_trend": None}}
    assert estimator.named_steps["model"].C == 0.5
    validate_params("woe_scorecard", {"max_n_bins": 4, "C": 1.0}, "here")
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) for woe_scorecard: bins"):
        validate_params("woe_scorecard", {"bins": 4}, "here")


# --- One-hot encoding at any size -------------------------------------------------------------------


def _rare_levels_table(n_rows: int, seed: int = 0):
    """An employer column of a few common levels and many rare ones, beside one numeric column."""
    rng = np.random.default_rng(seed)
    common = rng.choice(["acme", "globex", "initech"], size=n_rows)
    rare = np.array([f"employer-{i}" for i in range(n_rows)])
    employer = np.where(rng.random(n_rows) < 0.3, rare, common)
    features = pd.DataFrame({"employer": employer, "income": rng.lognormal(10, 1, n_rows)})
    target = pd.Series((rng.random(n_rows) < 0.2).astype(int))
    return features, target


def test_rare_levels_share_one_column():
    features, target = _rare_levels_table(5000)
    model = build_estimator("logistic_regression", {}, ["employer"], ["income"], seed=0)
    model.fit(features, target)
    encoded = model.named_steps["preprocess"].transform(features)
    # Three common employers, one infrequent column for about 1,500 one-row employers, the income.
    assert encoded.shape == (5000, 3 + 1 + 1)
    encoder = model.named_steps["preprocess"].named_transformers_["categorical"].named_steps["encode"]
    assert len(encoder.infrequent_categories_[0]) > 1000
    # A new employer at scoring time is scored as an infrequent one.
    unseen = features.iloc[:3].assign(employer="never-seen")
    assert np.allclose(
        model.predict_proba(unseen), model.predict_proba(features.iloc[:3].assign(employer="employer-1"))
    )


def test_a_column_of_many_frequent_levels_is_capped_and_encoded_sparse():
    rng = np.random.default_rng(1)
    features = pd.DataFrame({"zip": rng.integers(0, 500, 20_000).astype(str), "income": rng.random(20_000)})
    model = build_estimator("logistic_regression", {}, ["zip"], ["income"], seed=0)
    encoded = model.named_steps["preprocess"].fit_transform(features)
    assert encoded.shape[1] == ONEHOT_MAX_LEVELS + 1
    assert sparse.issparse(encoded) and encoded.nnz == 2 * len(features)


def test_small_tables_keep_every_level_and_a_dense_encoding():
    config = load_config(PROJECT_ROOT / "params.yaml")
    dataset = load_dataset(config)
    model = build_estimator("logistic_regression", {}, dataset.categorical, dataset.numeric, seed=0)
    encoded = model.named_steps["preprocess"].fit_transform(dataset.features.iloc[:600])
    levels = sum(dataset.features[c].iloc[:600].nunique() for c in dataset.categorical)
    assert not sparse.issparse(encoded)
    assert encoded.shape[1] == levels + len(dataset.numeric)


def test_naive_bayes_gets_a_dense_encoding_at_any_size():
    features, target = _rare_levels_table(5000)
    model = build_estimator("naive_bayes", {}, ["employer"], ["income"], seed=0).fit(features, target)
    assert not sparse.issparse(model.named_steps["preprocess"].transform(features))


def test_knn_is_left_out_above_its_row_limit_with_a_reason():
    limit = ROW_LIMITS["knn"]
    assert row_limit_reason("knn", limit) is None
    reason = row_limit_reason("knn", limit + 1)
    assert reason is not None and f"{limit:,}" in reason and "knn" in reason
    assert row_limit_reason("logistic_regression", 10 * limit) is None


def test_a_native_categorical_of_more_levels_than_histgradientboosting_takes_still_fits():
    rng = np.random.default_rng(2)
    n_rows = 30_000
    features = pd.DataFrame({"zip": rng.integers(0, 900, n_rows).astype(str), "income": rng.random(n_rows)})
    target = pd.Series((rng.random(n_rows) < 0.2).astype(int))
    model = build_estimator("hist_gradient_boosting", {"max_iter": 5}, ["zip"], ["income"], seed=0)
    model.fit(features, target)
    codes = model.named_steps["preprocess"].transform(features)[:, 0]
    assert codes.max() == NATIVE_MAX_LEVELS - 1  # 254 frequent levels, then one for the rest
    assert model.predict_proba(features.iloc[:3].assign(zip="never-seen")).shape == (3, 2)


@pytest.mark.parametrize("family", ["random_forest", "extra_trees"])
def test_forests_grow_each_tree_on_a_capped_sample_above_the_row_cap(family):
    small = build_estimator(family, {}, [], ["x"], seed=0, n_rows=FOREST_MAX_SAMPLES).named_steps["model"]
    default = build_estimator(family, {}, [], ["x"], seed=0).named_steps["model"]
    assert small.get_params() == default.get_params()  # unchanged up to the cap
    large = build_estimator(family, {}, [], ["x"], seed=0, n_rows=4 * FOREST_MAX_SAMPLES).named_steps["model"]
    assert large.bootstrap and large.max_samples == pytest.approx(0.25)
    chosen = build_estimator(family, {"max_samples": 0.5}, [], ["x"], seed=0, n_rows=10**7)
    assert chosen.named_steps["model"].max_samples == 0.5  # the parameters win
    assert size_settings("lightgbm", 10**7) == {}


@pytest.mark.parametrize("family", ["random_forest", "extra_trees"])
def test_a_forest_above_the_row_cap_is_kept_under_its_memory_cap(family):
    assert (
        build_estimator(family, {}, [], ["x"], seed=0, n_rows=FOREST_MAX_SAMPLES)
        .named_steps["model"]
        .max_leaf_nodes
        is None
    )  # nothing changes up to the row cap
    n_rows = 4 * FOREST_MAX_SAMPLES
    few, many = (
        build_estimator(family, {"n_estimators": n}, [], ["x"], seed=0, n_rows=n_rows).named_steps["model"]
        for n in (100, 500)
    )
    assert few.max_leaf_nodes // 5 == many.max_leaf_nodes  # the leaves are shared out among the trees
    assert 500 * many.max_leaf_nodes * 2 * FOREST_NODE_BYTES <= FOREST_MAX_BYTES
    chosen = build_estimator(family, {"max_leaf_nodes": 50_000}, [], ["x"], seed=0, n_rows=n_rows)
    assert chosen.named_steps["model"].max_leaf_nodes == 50_000  # the parameters win

    # The cap's account of a node holds for a fitted forest: its node records and class values.
    rng = np.random.default_rng(0)
    features = pd.DataFrame({"x": rng.normal(size=2_000)})
    target = pd.Series((features["x"] + rng.normal(size=2_000) > 0).astype(int))
    model = build_estimator(family, {"n_estimators": 5}, [], ["x"], seed=0).fit(features, target)
    for tree in model.named_steps["model"].estimators_:
        state = tree.tree_.__getstate__()
        assert (state["nodes"].nbytes + state["values"].nbytes) / tree.tree_.node_count <= FOREST_NODE_BYTES


def test_modules_of_families_are_their_estimators_and_the_preprocessing():
    from pipeline.models import modules_of

    modules = modules_of(["lightgbm", "random_forest", "extra_trees", "woe_scorecard"])
    assert {"lightgbm", "sklearn.ensemble", "sklearn.linear_model", "optbinning"} <= set(modules)
    assert {"sklearn.pipeline", "sklearn.compose", "sklearn.preprocessing"} <= set(modules)
    assert len(modules) == len(set(modules))
    assert "optbinning" not in modules_of(["logistic_regression"])
    for name in modules_of(FAMILIES):
        importlib.import_module(name)  # every one is a real module
