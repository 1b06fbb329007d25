import pytest

from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES, build_estimator, validate_params
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
