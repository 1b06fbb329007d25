"""Search spaces, study naming and storage, the CV objective, pruning and resume. No MLflow."""

import logging
import math
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from pipeline import tuning
from pipeline.config import CostConfig, SearchParam, config_from_mapping
from pipeline.errors import ConfigError
from pipeline.settings import OPTUNA_URL_ENV
from pipeline.tracking import store
from pipeline.training import folds
from tests.conftest import project_params

COSTS = CostConfig()


def space(**params) -> dict[str, SearchParam]:
    return {name: SearchParam(**spec) for name, spec in params.items()}


# --- Search spaces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "int", "low": 1, "high": 10, "step": 0}, "'step' must be positive"),
        ({"type": "int", "low": 1.5, "high": 10}, "whole-number"),
        ({"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}, "cannot be combined"),
        ({"type": "float", "low": 1.0}, "needs 'low' and 'high'"),
        ({"type": "categorical", "choices": [1, 2], "low": 0}, "takes no 'low'"),
        ({"type": "uniform", "low": 0, "high": 1}, "type"),
    ],
)
def test_bad_search_ranges_are_config_errors(spec, message):
    raw = project_params()
    raw["optimize"]["search_spaces"]["knn"]["n_neighbors"] = spec
    with pytest.raises(ConfigError, match=message) as error:
        config_from_mapping(raw)
    assert "optimize.search_spaces.knn.n_neighbors" in str(error.value)


def test_search_space_for_unknown_family_is_a_config_error():
    raw = project_params()
    raw["optimize"]["search_spaces"]["svm"] = {"C": {"type": "float", "low": 0.1, "high": 1}}
    with pytest.raises(ConfigError, match=r"optimize\.search_spaces\.svm"):
        config_from_mapping(raw)


def test_shipped_spaces_name_real_parameters_and_unknown_ones_fail():
    config = config_from_mapping(project_params())
    tuning.validate_spaces(config.optimize.search_spaces, ["random_forest", "lightgbm"])
    with pytest.raises(ConfigError, match=r"unknown parameter.*max_dept"):
        tuning.validate_spaces({"random_forest": space(max_dept={"type": "int", "low": 2, "high": 5})}, [])
    with pytest.raises(ConfigError, match="no search space for knn"):
        tuning.validate_spaces({"random_forest": config.optimize.search_spaces["random_forest"]}, ["knn"])


def test_suggest_respects_types_bounds_and_steps():
    declared = space(
        n={"type": "int", "low": 100, "high": 500, "step": 50},
        rate={"type": "float", "low": 0.01, "high": 0.3, "log": True},
        weight={"type": "categorical", "choices": [None, "balanced"]},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        params = tuning.suggest(study.ask(), declared)
        assert isinstance(params["n"], int) and 100 <= params["n"] <= 500 and params["n"] % 50 == 0
        assert 0.01 <= params["rate"] <= 0.3
        assert params["weight"] in (None, "balanced")


def test_study_name_is_keyed_by_data_space_and_settings_not_budget():
    base = space(C={"type": "float", "low": 0.01, "high": 10, "log": True})
    name = tuning.study_name("abc", "logistic_regression", base, cv_folds=5, seed=42, costs=COSTS)
    assert name.startswith("optimize-abc-logistic_regression-")
    assert name == tuning.study_name("abc", "logistic_regression", dict(base), 5, 42, CostConfig())
    wider = space(C={"type": "float", "low": 0.001, "high": 10, "log": True})
    others = {
        tuning.study_name("abd", "logistic_regression", base, 5, 42, COSTS),
        tuning.study_name("abc", "logistic_regression", wider, 5, 42, COSTS),
        tuning.study_name("abc", "logistic_regression", base, 3, 42, COSTS),
        tuning.study_name("abc", "logistic_regression", base, 5, 7, COSTS),
        tuning.study_name("abc", "logistic_regression", base, 5, 42, CostConfig(false_negative=10)),
    }
    assert name not in others and len(others) == 5


# --- Storage --------------------------------------------------------------------------------------


def test_storage_on_sqlite_is_a_sibling_file(monkeypatch, tmp_path):
    monkeypatch.delenv(OPTUNA_URL_ENV, raising=False)
    location = tuning.storage_location(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    assert location.url == f"sqlite:///{tmp_path}/mlflow-optuna.db"
    assert location.schema is None


def test_storage_on_postgres_is_its_own_schema_and_url_is_redacted(monkeypatch):
    monkeypatch.delenv(OPTUNA_URL_ENV, raising=False)
    url = "postgresql+psycopg2://mlflow:s3cret@db:5432/mlflow"
    location = tuning.storage_location(url, Path("."))
    assert location.url == url and location.schema == "optuna"
    assert location.engine_kwargs == {
        "connect_args": {"options": "-csearch_path=optuna", "connect_timeout": store.CONNECT_TIMEOUT_SECONDS},
        "pool_size": 1,  # trials and the heartbeat: two connections per process at most
        "max_overflow": 1,
    }
    assert "s3cret" not in location.safe_url


def test_storage_for_a_tracking_server_and_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv(OPTUNA_URL_ENV, raising=False)
    assert tuning.storage_location("http://mlflow:5000", tmp_path).url == f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(ConfigError, match=OPTUNA_URL_ENV):
        tuning.storage_location("mysql://u@h/db", tmp_path)
    monkeypatch.setenv(OPTUNA_URL_ENV, f"sqlite:///{tmp_path}/elsewhere.db")
    assert tuning.storage_location("mysql://u@h/db", tmp_path).url.endswith("elsewhere.db")


# --- Objective, pruning, resume -------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_part():
    rng = np.random.default_rng(1)
    n = 300
    features = pd.DataFrame(
        {"income": rng.normal(50, 10, n), "age": rng.integers(18, 70, n).astype(float)}
    ).assign(purpose=rng.choice(["car", "home", "other"], n).astype(object))
    logit = 0.08 * (50 - features["income"]) + (features["purpose"] == "other") - 0.5
    target = pd.Series((rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int), name="default")
    # Labels that are not 0..n-1, as the stage passes the training rows with their dataset positions.
    features.index = target.index = np.arange(n) * 3 + 1
    return features, target, folds(target, 3, seed=0)


def objective_for(train_part, family: str, searched: dict, pruning=True, **options):
    """An objective over the small table's three folds, for ``family`` searching ``searched``."""
    features, target, splits = train_part
    return tuning.make_objective(
        family,
        searched,
        features,
        target,
        splits,
        ["purpose"],
        ["income", "age"],
        COSTS,
        seed=0,
        pruning=pruning,
        **options,
    )


def lr_objective(train_part, pruning=True, **budget):
    searched = space(C={"type": "float", "low": 0.01, "high": 10, "log": True})
    return objective_for(train_part, "logistic_regression", searched, pruning=pruning, **budget)


def test_objective_reports_each_fold_and_records_cv_metrics(train_part):
    study = tuning.open_study(optuna.storages.InMemoryStorage(), "s", seed=0, pruning=True)
    study.optimize(lr_objective(train_part), n_trials=2)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert sorted(trial.intermediate_values) == [0, 1, 2]
        metrics = tuning.trial_metrics(trial)
        assert metrics["cv_roc_auc"] == pytest.approx(trial.value)
        assert math.isclose(metrics["cv_roc_auc"], metrics["cv_roc_auc_mean"])
        assert 0 < metrics["cv_expected_cost"] == metrics["cv_expected_cost_mean"]
        assert 0 <= metrics["cv_threshold"] <= 1.0 + 1e-9


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruned_trial_stops_after_first_fold(train_part):
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(lr_objective(train_part), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]
    assert set(tuning.trial_metrics(trial)) == {"cv_roc_auc_partial"}
    assert tuning.best_trial(study) is None


def test_interrupted_study_resumes_to_exactly_the_cap(train_part, tmp_path):
    storage_url = f"sqlite:///{tmp_path}/studies.db"
    objective = lr_objective(train_part)

    first = tuning.open_study(optuna.storages.RDBStorage(storage_url), "resume", seed=3)
    assert tuning.tune(first, objective, n_trials=2, timeout_seconds=None) == 2

    # A new process: same name, storage reopened; raising the cap to 4 runs only the 2 missing.
    again = tuning.open_study(optuna.storages.RDBStorage(storage_url), "resume", seed=3)
    assert tuning.remaining_trials(again, 4) == 2
    seen = []
    assert tuning.tune(again, objective, 4, None, callbacks=[lambda s, t: seen.append(t.number)]) == 2
    assert seen == [2, 3]
    assert [t.number for t in again.trials] == [0, 1, 2, 3]
    assert tuning.tune(again, objective, 4, None) == 0  # at the cap: nothing to do


# --- The time budget: enqueued configurations, the deadline inside a trial, CV kept for reuse ------


def test_known_configurations_are_the_first_trials_of_a_new_study(train_part):
    c_space = space(
        C={"type": "float", "low": 0.01, "high": 10, "log": True},
        class_weight={"type": "categorical", "choices": [None, "balanced"]},
    )
    study = tuning.open_study(optuna.storages.InMemoryStorage(), "known", seed=0)
    known = [{"C": 1.0, "class_weight": "balanced"}, {"C": 0.1, "penalty_not_in_space": 3}, {"C": 500.0}]
    assert tuning.enqueue_known(study, known, c_space) == 2  # C=500 is outside the space: left out
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]
    assert waiting == [{"C": 1.0, "class_weight": "balanced"}, {"C": 0.1}]
    study.optimize(lr_objective(train_part), n_trials=2)
    assert study.trials[0].params["C"] == 1.0 and study.trials[1].params["C"] == 0.1
    # A study with history (a resume) gets nothing more.
    assert tuning.enqueue_known(study, known, c_space) == 0


def test_a_trial_past_its_deadline_is_stopped_but_never_the_first_complete_one(train_part):
    keep = tuning.BestCV()
    past = lr_objective(train_part, deadline=0.0, keep=keep)  # time.monotonic() is far beyond 0
    study = tuning.open_study(optuna.storages.InMemoryStorage(), "late", seed=0)
    study.optimize(past, n_trials=5)
    first, second = study.trials  # the second stopped the study: no third started
    assert first.state == TrialState.COMPLETE  # one model per family, whatever the time
    assert second.state == TrialState.PRUNED and second.user_attrs[tuning.STOPPED_ATTR] == "time"
    assert keep.number == 0 and keep.result_of(tuning.best_trial(study)) is keep.result


def test_a_trial_stops_between_folds_when_the_next_fold_would_end_past_the_deadline(train_part):
    study = tuning.open_study(optuna.storages.InMemoryStorage(), "folds", seed=0, pruning=False)
    study.optimize(lr_objective(train_part, pruning=False), n_trials=1)  # a complete one first

    # Its first fold is predicted at an hour: the trial stops before fitting anything.
    objective = lr_objective(train_part, pruning=False, deadline=time.monotonic() + 60, fold_seconds=3600)
    study.optimize(objective, n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[1].intermediate_values == {}


def test_a_configuration_the_deadline_cut_short_is_queued_again_first(train_part):
    study = tuning.open_study(optuna.storages.InMemoryStorage(), "again", seed=0, pruning=False)
    c_space = space(C={"type": "float", "low": 0.01, "high": 10, "log": True})
    assert tuning.enqueue_known(study, [{"C": 1.0}, {"C": 0.1}], c_space) == 2
    study.optimize(lr_objective(train_part, pruning=False), n_trials=1)  # C=1.0 completes
    # C=0.1's fold is predicted at an hour: the deadline stops it before it asked for its parameters.
    late = lr_objective(train_part, pruning=False, deadline=time.monotonic() + 60, fold_seconds=3600)
    study.optimize(late, n_trials=3)
    (cut,) = study.get_trials(states=(TrialState.PRUNED,))
    assert cut.user_attrs[tuning.STOPPED_ATTR] == "time" and cut.params == {}
    # One stopped between folds has its parameters; one pruned for its score is not the clock's.
    c = optuna.distributions.FloatDistribution(0.01, 10, log=True)
    for C, stopped in ((3.0, {tuning.STOPPED_ATTR: "time"}), (5.0, {})):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.PRUNED, params={"C": C}, distributions={"C": c}, user_attrs=stopped
            )
        )

    # More time for the family: the two the clock cut short are its next trials, queued once each.
    assert tuning.requeue_stopped_by_time(study) == 2
    assert tuning.requeue_stopped_by_time(study) == 0
    study.optimize(lr_objective(train_part, pruning=False), n_trials=2)
    assert [(t.state, t.params) for t in study.trials[-2:]] == [
        (TrialState.COMPLETE, {"C": 0.1}),
        (TrialState.COMPLETE, {"C": 3.0}),
    ]
    assert tuning.requeue_stopped_by_time(study) == 0  # both completed: nothing left to finish


def test_best_cv_keeps_the_best_result_in_best_trial_order(train_part):
    keep = tuning.BestCV()
    study = tuning.open_study(optuna.storages.InMemoryStorage(), "keep", seed=0)
    study.optimize(lr_objective(train_part, keep=keep), n_trials=4)
    best = tuning.best_trial(study)
    assert keep.number == best.number
    assert keep.result.summary()["cv_roc_auc_mean"] == pytest.approx(best.value)
    assert keep.result_of(study.trials[(best.number + 1) % 4]) is None


def test_best_trial_breaks_auc_ties_on_cost():
    study = optuna.create_study(direction="maximize")
    distributions = {"C": optuna.distributions.FloatDistribution(0.01, 10)}
    for number, (auc, cost) in enumerate([(0.78, 0.60), (0.80, 0.58), (0.80, 0.55), (0.79, 0.40)]):
        study.add_trial(
            optuna.trial.create_trial(
                value=auc,
                params={"C": 1.0 + number},
                distributions=distributions,
                user_attrs={tuning.METRICS_ATTR: {"cv_roc_auc_mean": auc, "cv_expected_cost_mean": cost}},
            )
        )
    assert tuning.best_trial(study).params == {"C": 3.0}


@pytest.mark.parametrize(
    ("our_level", "optuna_shows"),
    [(logging.INFO, ["error"]), (logging.DEBUG, ["warning", "error"])],
)
def test_optuna_logs_through_ours_only_errors_unless_debugging(caplog, capfd, our_level, optuna_shows):
    caplog.set_level(our_level, logger="pipeline")
    tuning.open_study(optuna.storages.InMemoryStorage(), "quiet", seed=1)
    capfd.readouterr()
    # Our own handler on the root logger (pytest's also sit on loggers that did not propagate).
    received: list[str] = []
    ours = logging.Handler()
    ours.emit = lambda record: received.append(record.getMessage())
    logging.getLogger().addHandler(ours)
    try:
        optuna_logger = logging.getLogger("optuna.storages")
        optuna_logger.warning("warning")
        optuna_logger.error("error")
    finally:
        logging.getLogger().removeHandler(ours)
    assert received == optuna_shows
    assert capfd.readouterr().err == ""  # not printed a second time by Optuna's own handler


def test_where_the_studies_are_shared(monkeypatch, tmp_path):
    monkeypatch.delenv(OPTUNA_URL_ENV, raising=False)
    assert tuning.storage_location("postgresql+psycopg2://u@h/db", tmp_path).shared is True
    assert tuning.storage_location(f"sqlite:///{tmp_path}/mlflow.db", tmp_path).shared is False
    local = tuning.storage_location("https://mlflow.example.com", tmp_path)
    assert local.shared is False and local.url == f"sqlite:///{tmp_path}/optuna.db"
    # Workers tracking through a server share studies through a PostgreSQL Optuna URL.
    monkeypatch.setenv(OPTUNA_URL_ENV, "postgresql+psycopg2://optuna:s3cret@db/studies")
    shared = tuning.storage_location("https://mlflow.example.com", tmp_path)
    assert shared.shared is True and shared.schema == "optuna"
    assert "s3cret" not in shared.safe_url


@pytest.mark.parametrize(("pruning", "model_jobs", "fold_jobs"), [(True, 4, 1), (False, 1, 4)])
def test_the_cores_go_to_the_model_or_to_the_folds_never_both(
    train_part, monkeypatch, pruning, model_jobs, fold_jobs
):
    asked: dict[str, int] = {}
    build, validate = tuning.build_estimator, tuning.cross_validate

    def spy_build(*args, n_jobs=1, **kwargs):
        asked["model"] = n_jobs
        return build(*args, n_jobs=n_jobs, **kwargs)

    def spy_validate(*args, n_jobs=1, **kwargs):
        asked["folds"] = n_jobs
        return validate(*args, n_jobs=1, **kwargs)

    monkeypatch.setattr(tuning, "build_estimator", spy_build)
    monkeypatch.setattr(tuning, "cross_validate", spy_validate)
    searched = space(n_estimators={"type": "int", "low": 5, "high": 6})
    objective = objective_for(train_part, "random_forest", searched, pruning=pruning, n_jobs=4)
    optuna.create_study(direction="maximize").optimize(objective, n_trials=1)
    assert asked == {"model": model_jobs, "folds": fold_jobs}


def test_a_new_study_queues_the_research_candidates_then_the_known_configurations():
    raw = project_params()
    raw["research"]["candidates"]["lightgbm_small"] = {"family": "lightgbm", "params": {"n_estimators": 50}}
    raw["research"]["use"] = ["dummy_prior", "lightgbm_small"]
    config = config_from_mapping(raw)
    reference, queued = tuning.first_configurations(config, "lightgbm")
    assert reference == {"n_estimators": 50}  # the one stage 1 timed: in the portfolio
    known = raw["optimize"]["known_configurations"]["lightgbm"]
    assert queued == [raw["research"]["candidates"]["lightgbm"]["params"], {"n_estimators": 50}, *known]
    # A family without known configurations queues its research candidate's alone.
    assert tuning.first_configurations(config, "naive_bayes") == (
        raw["research"]["candidates"]["naive_bayes"]["params"],
        [raw["research"]["candidates"]["naive_bayes"]["params"]],
    )
