from pathlib import Path

import pytest

from pipeline.config import config_from_mapping, load_config
from pipeline.errors import ConfigError
from tests.conftest import PROJECT_ROOT, project_params


def test_shipped_params_load():
    config = load_config(PROJECT_ROOT / "params.yaml")
    assert config.dataset.target == "default"
    assert len(config.research.portfolio) >= 9
    assert config.registration.model_name == "loan-default-classifier"
    assert config.resolve("data") == PROJECT_ROOT / "data"


def test_fast_profile_trims_portfolio_and_overrides_params():
    config = load_config(PROJECT_ROOT / "params.yaml", profile="fast")
    assert config.profile == "fast"
    assert list(config.research.portfolio) == [
        "dummy_prior",
        "logistic_regression",
        "random_forest",
        "hist_gradient_boosting",
    ]
    assert config.research.portfolio["random_forest"].params["n_estimators"] == 100
    assert config.research.portfolio["random_forest"].params["min_samples_leaf"] == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw["research"].update(cv_folds=1), "research.cv_folds"),
        (lambda raw: raw["research"].update(cv_folds="five"), "research.cv_folds"),
        (lambda raw: raw.update(colour="blue"), "colour: unknown key"),
        (lambda raw: raw["dataset"].update(surprise=1), "dataset.surprise: unknown key"),
        (lambda raw: raw["split"].update(test_size=1.5), "split.test_size"),
        (lambda raw: raw["costs"].update(false_negative=-1), "costs.false_negative"),
        (
            lambda raw: raw["optimize"].update(calibration_max_auc_loss=-0.1),
            "optimize.calibration_max_auc_loss",
        ),
        (lambda raw: raw["dataset"].update(query="select 1"), "exactly one of 'path' or 'query'"),
        (lambda raw: raw["research"].update(use=["nope"]), "unknown candidates: nope"),
        (lambda raw: raw["research"].update(use=["logistic_regression"]), "'dummy' baseline"),
        (lambda raw: raw["research"]["candidates"]["knn"].update(family="svm"), "family"),
        (
            lambda raw: raw["optimize"]["search_spaces"]["knn"].update(
                n_neighbors={"type": "int", "low": 9, "high": 3}
            ),
            "must be below",
        ),
        (
            lambda raw: raw["optimize"]["search_spaces"]["knn"].update(weights={"type": "categorical"}),
            "choices",
        ),
        (
            lambda raw: raw["optimize"]["search_spaces"]["logistic_regression"].update(
                C={"type": "float", "low": 0, "high": 1, "log": True}
            ),
            "log-scale",
        ),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(mutate, message):
    raw = project_params()
    mutate(raw)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_mapping(raw)


def test_unknown_profile_is_an_error():
    with pytest.raises(ConfigError, match="profile 'nightly' is not defined"):
        config_from_mapping(project_params(), profile="nightly")


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("research: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    error = ConfigError("two\nlines")
    assert str(error) == "two lines"
