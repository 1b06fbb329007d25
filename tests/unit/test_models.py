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
