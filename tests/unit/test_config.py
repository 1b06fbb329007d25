import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from pipeline import models
from pipeline.config import Family, PipelineConfig, config_from_mapping, load_config
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES
from tests.conftest import PROJECT_ROOT, make_config, project_params, small_params


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
        (lambda raw: raw["monitor"].update(watch=0.3), "monitor: 'watch' (0.3) must be below 'shift'"),
        (lambda raw: raw["scorecard"].update(pdo=0), "scorecard.pdo"),
        (lambda raw: raw["reason_codes"].update(count=0), "reason_codes.count"),
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


# --- names MLflow filters can express ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("tracking", "experiment", "bell\x07name", "control characters"),
        ("tracking", "experiment", "line\nbreak", "control characters"),
        ("tracking", "experiment", " padded", "leading or trailing whitespace"),
        ("tracking", "experiment", "both ' and \"", "both quote characters"),
        ("register", "model_name", "team/model", "cannot contain '/' or ':'"),
        ("register", "model_name", "models:x", "cannot contain '/' or ':'"),
        ("register", "model_name", "..", "must not read as a path"),
        ("register", "model_name", "a\u200bb", "control characters"),
        ("register", "model_name", "   ", "leading or trailing whitespace"),
        ("register", "model_name", "trailing\\", "ends with a backslash"),
    ],
)
def test_config_rejects_bad_names(section, key, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make_config(small_params(**{section: {key: value}}))
    assert str(caught.value).startswith(f"{section if section == 'tracking' else 'register'}.{key}:")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", ["O'Brien", "a\\b", "'; DROP TABLE runs; --", "ünï ✓"])
def test_config_accepts_names_mlflow_accepts(value):
    config = make_config(small_params(tracking={"experiment": value}, register={"model_name": value}))
    assert config.tracking.experiment == value
    assert config.registration.model_name == value


# --- outputs stay inside the project ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"results": {"output_dir": "/etc"}}, "results.output_dir: /etc is outside the project folder"),
        ({"results": {"output_dir": "../../elsewhere"}}, "results.output_dir: ../../elsewhere is outside"),
        ({"tracking": {"artifact_location": "/var/tmp/art"}}, "tracking.artifact_location: /var/tmp/art is"),
        ({"tracking": {"artifact_location": "file:///srv/art"}}, "tracking.artifact_location: /srv/art is"),
        (
            {"tracking": {"artifact_location": "mlartifacts/../../x"}},
            "tracking.artifact_location: mlartifacts",
        ),
    ],
)
def test_outputs_outside_the_project_are_rejected(tmp_path, overrides, message):
    import yaml

    raw = small_params(**overrides)
    raw["dataset"]["path"] = str(Path(__file__).resolve().parents[2] / "data" / "german_credit.csv")
    config = tmp_path / "project" / "params.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(raw))
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "research", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2, completed.stderr
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("config error: ") and message in line, line


@pytest.mark.parametrize(
    "overrides",
    [
        {"results": {"output_dir": "reports/nested"}},
        {"tracking": {"artifact_location": "s3://bucket/mlflow"}},
        {"tracking": {"artifact_location": "mlartifacts"}},
    ],
)
def test_outputs_inside_the_project_or_remote_are_accepted(overrides):
    config = make_config(small_params(**overrides))
    assert config.results.output_dir and config.tracking.artifact_location


# --- One source of defaults -----------------------------------------------------------------------


def _drift(model: type, written: dict, where: str) -> list[str]:
    """Keys ``params.yaml`` sets to another value than the typed config's default."""
    by_key = {(field.alias or name): (name, field) for name, field in model.model_fields.items()}
    drift = []
    for key, value in written.items():
        if key not in by_key:
            drift.append(f"{where}{key}: not a config key")
            continue
        _, field = by_key[key]
        if (
            isinstance(value, dict)
            and isinstance(field.annotation, type)
            and hasattr(field.annotation, "model_fields")
        ):
            drift += _drift(field.annotation, value, f"{where}{key}.")
            continue
        if field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        if default in (None, {}, []):  # no default: the value must be configured (dataset path, spaces)
            continue
        same = default == value or str(default) == str(value)  # paths and numbers written as text
        if not same:
            drift.append(f"{where}{key}: params.yaml {value!r}, config default {default!r}")
    return drift


def test_params_yaml_and_config_defaults_agree():
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw.pop("profiles")
    assert _drift(PipelineConfig, raw, "") == []


def test_a_drifted_default_is_caught():
    assert _drift(PipelineConfig, {"optimize": {"n_trials": 7}, "seed": 42}, "") == [
        "optimize.n_trials: params.yaml 7, config default 40"
    ]


def test_model_families_are_defined_once():
    families = typing.get_args(Family)
    assert families == FAMILIES
    assert set(families) == set(models._FAMILIES)
