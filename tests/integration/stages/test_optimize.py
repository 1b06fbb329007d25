"""Stage 2 end to end on SQLite and PostgreSQL, checked by querying MLflow back."""

import io
import json
import logging
import re
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.pipeline import Pipeline

from pipeline import budget, cli, evaluation_report, final_model, inference, reporting_plan, tuning
from pipeline.data import load_dataset, split_dataset
from pipeline.errors import ConfigError
from pipeline.stages import optimize, research
from pipeline.tracking import keys, lookups, model_io, runs, session
from tests.conftest import PROJECT_ROOT, make_config, small_params

pytestmark = pytest.mark.integration

TEST_METRICS = [
    "test_roc_auc",
    "test_average_precision",
    "test_log_loss",
    "test_brier",
    "test_ks",
    "test_gini",
    "test_expected_cost",
    "test_tn",
    "test_fp",
    "test_fn",
    "test_tp",
]
PLOTS = [
    "roc_curve.png",
    "precision_recall.png",
    "calibration.png",
    "confusion_matrix.png",
    "cost_vs_threshold.png",
    "score_distribution.png",
    "permutation_importance.png",
]


def trial_runs(client: MlflowClient, experiment_id: str, study: str) -> list:
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{keys.TAG_OPTUNA_STUDY}` = '{study}'", max_results=1000
    )


def check_landed(uri: str, result: optimize.OptimizeResult, config) -> MlflowClient:
    client = MlflowClient(uri)
    parent = client.get_run(result.run_id)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert tags[keys.TAG_STAGE] == "optimize" and tags[keys.TAG_ROLE] == "stage"
    assert tags[keys.TAG_RESEARCH_RUN] == result.research_run_id
    assert tags[keys.TAG_DATASET_DIGEST] == result.dataset_digest
    families = json.loads(tags[keys.TAG_TUNED_FAMILIES])
    assert len(families) == config.optimize.top_k == len(result.families)
    assert tags[keys.TAG_BEST_FAMILY] == result.best_family
    # One tuned family, or the soft vote of all of them when it cross-validated better.
    assert result.best_family in [*families, "soft_vote(" + "+".join(families) + ")"]
    assert tags[keys.TAG_CALIBRATION] in {"none", "sigmoid", "isotonic"}
    assert float(tags[keys.TAG_THRESHOLD]) == result.threshold == metrics["threshold"]
    assert tags[keys.TAG_MODEL_URI] == f"models:/{tags[keys.TAG_MODEL_ID]}" == result.model_uri
    for name in [*TEST_METRICS, "cv_roc_auc", "cv_expected_cost"]:
        assert name in metrics, name
    assert 0.5 < metrics["test_roc_auc"] <= 1
    assert sum(metrics[k] for k in ("test_tn", "test_fp", "test_fn", "test_tp")) == 250
    # Planned and spent seconds of every step of the budget.
    steps = [keys.STAGE_RESEARCH, *(keys.BUDGET_STEP_TUNE + f for f in families), keys.BUDGET_STEP_FINAL]
    for step in [*steps, keys.BUDGET_STEP_TOTAL]:
        assert metrics[keys.METRIC_BUDGET_PLANNED + step] >= 0, step
        assert metrics[keys.METRIC_BUDGET_SPENT + step] >= 0, step
    assert metrics[keys.METRIC_BUDGET_PLANNED + keys.BUDGET_STEP_TOTAL] == config.budget_seconds
    assert [s.name for s in result.steps] == [*steps, keys.BUDGET_STEP_TOTAL]

    # Every trial is a nested run, once, tagged with its study and number.
    experiment_id = parent.info.experiment_id
    for outcome in result.families:
        assert tags[f"optimize.study.{outcome.family}"] == outcome.study_name
        trials = trial_runs(client, experiment_id, outcome.study_name)
        numbers = sorted(int(r.data.tags[keys.TAG_OPTUNA_TRIAL]) for r in trials)
        assert numbers == list(range(config.optimize.n_trials))
        for run in trials:
            assert run.data.tags[keys.TAG_ROLE] == "trial"
            assert run.data.tags[keys.TAG_FAMILY] == outcome.family
            assert run.data.params["family"] == outcome.family
            if run.info.status == "FINISHED":
                assert 0 < run.data.metrics["cv_roc_auc"] <= 1 and "cv_expected_cost" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {f"plots/{name}" for name in PLOTS} <= artifacts
    scores = pd.read_csv(
        io.StringIO(
            runs.download_artifact_text(
                session.TrackingSession(uri, experiment_id, "", client),
                result.run_id,
                keys.ARTIFACT_TEST_SCORES,
            )
        )
    )
    assert list(scores.columns) == ["row_index", "y_true", "score"] and len(scores) == 250
    return client


def reproduce_in_fresh_process(uri: str, model_uri: str, run_id: str, config_overrides: dict) -> dict:
    """Load the model by its models:/ URI in a new interpreter and score the recorded test rows."""
    script = textwrap.dedent(
        f"""
        import io, json, sys
        import numpy as np, pandas as pd
        from pipeline.data import load_dataset, split_dataset
        from pipeline.tracking import model_io
        from tests.conftest import make_config, small_params

        loaded = model_io.load_model({model_uri!r}, {uri!r})
        import mlflow
        text = mlflow.artifacts.load_text("runs:/{run_id}/{keys.ARTIFACT_TEST_SCORES}")
        recorded = pd.read_csv(io.StringIO(text))
        dataset = load_dataset(make_config(small_params(**{config_overrides!r})))
        scores = loaded.estimator.predict_proba(dataset.features.iloc[recorded["row_index"]])[:, 1]
        print(json.dumps({{
            "equal": bool(np.array_equal(scores, recorded["score"].to_numpy())),
            "max_diff": float(np.max(np.abs(scores - recorded["score"].to_numpy()))),
            "threshold": model_io.model_threshold({model_uri!r}),
            "type": type(loaded.estimator).__name__,
        }}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=PROJECT_ROOT
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture
def fit_spy(monkeypatch):
    """Records, in order, which dataset rows every Pipeline fit and predict_proba saw."""
    events: list[tuple[str, set[int]]] = []
    original_fit, original_predict = Pipeline.fit, Pipeline.predict_proba

    def fit(self, X, y=None, **kwargs):
        events.append(("fit", set(map(int, X.index))))
        return original_fit(self, X, y, **kwargs)

    def predict_proba(self, X, **kwargs):
        events.append(("predict", set(map(int, X.index))))
        return original_predict(self, X, **kwargs)

    monkeypatch.setattr(Pipeline, "fit", fit)
    monkeypatch.setattr(Pipeline, "predict_proba", predict_proba)
    return events


def test_optimize_on_sqlite_resumes_and_never_touches_the_test_part(sqlite_store, fit_spy):
    first_config = make_config(small_params(optimize={"n_trials": 2}))
    research_result = research.run(first_config)
    client = MlflowClient(sqlite_store)
    store = session.TrackingSession(sqlite_store, "", "", client)
    train, test = runs.read_split(store, research_result.run_id)
    train_rows, test_rows = set(train.tolist()), set(test.tolist())
    fit_spy.clear()

    first = optimize.run(first_config)
    assert first.research_run_id == research_result.run_id

    # The test part, as recorded by research, is never fitted on, and only scored after the last fit.
    fits = [i for i, (kind, _) in enumerate(fit_spy) if kind == "fit"]
    assert fits and all(fit_spy[i][1] <= train_rows for i in fits)
    touching_test = [i for i, (_, rows) in enumerate(fit_spy) if rows & test_rows]
    assert touching_test and min(touching_test) > max(fits)
    assert all(fit_spy[i][0] == "predict" for i in touching_test)

    # Rerun with a higher cap: the same studies resume, only the missing trials run, none twice.
    config = make_config(small_params(optimize={"n_trials": 4}))
    second = optimize.run(config)
    assert [o.study_name for o in second.families] == [o.study_name for o in first.families]
    assert all(o.trials_done == 4 and o.trials_run_now == 2 for o in second.families)
    assert all(o.trials_cap == 4 and o.stopped_by == "count" for o in second.families)
    check_landed(sqlite_store, second, config)
    summary = second.describe()
    assert f"winner {second.best_family}" in summary and "expected cost / applicant" in summary
    assert all(o.family in summary for o in second.families)

    # Studies live in a sibling file, not in MLflow's database.
    location = tuning.storage_location(sqlite_store, PROJECT_ROOT)
    assert location.url.endswith("mlflow-optuna.db")
    mlflow_tables = set(sqlalchemy.inspect(sqlalchemy.create_engine(sqlite_store)).get_table_names())
    assert "runs" in mlflow_tables and "studies" not in mlflow_tables

    loaded = reproduce_in_fresh_process(sqlite_store, second.model_uri, second.run_id, {})
    assert loaded["equal"], loaded
    assert loaded["threshold"] == second.threshold

    # Permutation importance ran on the model readied for scoring: what the logged model, read back
    # as scikit-learn gives it, reproduces on the same rows and repeats.
    logged = pd.read_csv(
        io.StringIO(runs.download_artifact_text(store, second.run_id, f"{keys.ARTIFACT_IMPORTANCE}.csv"))
    )
    metrics = client.get_run(second.run_id).data.metrics
    dataset = load_dataset(config)
    in_order = split_dataset(dataset, config.split.test_size, config.seed).test_index  # not sorted
    assert sorted(in_order) == sorted(test)
    estimator = model_io.load_model(second.model_uri).estimator
    for part in inference.parts(estimator):
        if getattr(part, "n_jobs", None) not in (None, 1):
            part.n_jobs = 1  # a forest's trees summed in one order, as when readied
    again, rows = evaluation_report.importance(
        estimator,
        dataset.features.iloc[in_order],
        dataset.target.iloc[in_order],
        int(metrics["importance_repeats"]),
        config.seed,
        int(metrics["importance_rows"]),
    )
    assert rows == metrics["importance_rows"] and list(again["feature"]) == list(logged["feature"])
    np.testing.assert_allclose(again["importance_mean"], logged["importance_mean"], rtol=0, atol=1e-12)
    # The reason codes' table counts the rejected applicants the plan gave reasons to.
    frequencies = pd.read_csv(
        io.StringIO(
            runs.download_artifact_text(store, second.run_id, f"{keys.ARTIFACT_REASON_FREQUENCIES}.csv")
        )
    )
    assert metrics["reason_rows"] >= 1
    assert (frequencies["rejected"] == metrics["reason_rows"]).all()


@pytest.mark.parametrize("half_written", [False, True], ids=["run-never-created", "run-created-not-closed"])
def test_crash_after_a_trial_resumes_without_lost_or_duplicate_runs(
    sqlite_store, small_config, monkeypatch, half_written
):
    research.run(small_config)
    calls = {"n": 0}
    original = runs.log_child_run

    def flaky(session, parent_run_id, run_name, tags, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second trial finished in Optuna, but its run never lands
            if half_written:  # the store went away after the run's first round trip
                session.client.create_run(
                    session.experiment_id,
                    run_name=run_name,
                    tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id},
                )
            raise RuntimeError("store went away")
        return original(session, parent_run_id, run_name, tags, **kwargs)

    monkeypatch.setattr(runs, "log_child_run", flaky)
    with pytest.raises(RuntimeError, match="store went away"):
        optimize.run(small_config)
    monkeypatch.setattr(runs, "log_child_run", original)

    client = MlflowClient(sqlite_store)
    failed = lookups.search_stage_runs(runs.connect(small_config), "optimize", status="FAILED")
    assert len(failed) == 1

    result = optimize.run(small_config)
    experiment_id = client.get_run(result.run_id).info.experiment_id
    half_written_runs = []
    for outcome in result.families:
        trials = trial_runs(client, experiment_id, outcome.study_name)
        numbers = [int(r.data.tags[keys.TAG_OPTUNA_TRIAL]) for r in trials if r.info.status != "FAILED"]
        assert sorted(numbers) == list(range(small_config.optimize.n_trials))
        half_written_runs += [r for r in trials if r.info.status == "FAILED"]
    # The half-written run was ended FAILED with its stage, and its trial was recorded again.
    assert len(half_written_runs) == int(half_written)


def write_config(tmp_path, **replacements) -> str:
    text = (PROJECT_ROOT / "params.yaml").read_text()
    text = text.replace("path: data/german_credit.csv", f"path: {PROJECT_ROOT}/data/german_credit.csv")
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return str(path)


def test_research_run_for_other_data_or_split_is_exit_2(sqlite_store, tmp_path, small_config, capsys):
    config_path = write_config(tmp_path)
    assert cli.main(["optimize", "--config", config_path, "--profile", "fast"]) == 2
    assert "no finished research run" in capsys.readouterr().err

    research_result = research.run(small_config)
    other_data = write_config(tmp_path, **{"drop: []": "drop: [telephone]"})
    code = cli.main(
        ["optimize", "--config", other_data, "--research-run-id", research_result.run_id, "--profile", "fast"]
    )
    assert code == 2
    assert "but the data now has digest" in capsys.readouterr().err

    # Same data, another seed: research held out other rows, so its ranking may have seen our test part.
    other_split = write_config(tmp_path, **{"seed: 42": "seed: 7"})
    assert cli.main(["optimize", "--config", other_split, "--profile", "fast"]) == 2
    assert "held out other test rows" in capsys.readouterr().err
    found = lookups.search_stage_runs(runs.connect(small_config), "optimize", status=None)
    assert found == []  # refused before any run was created


@pytest.mark.postgres
def test_optimize_on_postgres(postgres_store, small_config):
    research.run(small_config)
    result = optimize.run(small_config)
    check_landed(postgres_store, result, small_config)

    # Optuna has its own schema (and alembic_version) in the same database; MLflow's stays intact.
    inspector = sqlalchemy.inspect(sqlalchemy.create_engine(postgres_store))
    assert {"studies", "trials", "alembic_version"} <= set(inspector.get_table_names(schema="optuna"))
    public = set(inspector.get_table_names(schema="public"))
    assert "runs" in public and "studies" not in public
    client = MlflowClient(postgres_store)
    experiment_id = client.get_run(result.run_id).info.experiment_id
    client.set_terminated(client.create_run(experiment_id).info.run_id)
    assert len(client.search_runs([experiment_id], max_results=1000)) >= 2

    loaded = reproduce_in_fresh_process(postgres_store, result.model_uri, result.run_id, {})
    assert loaded["equal"], loaded


WORKER = textwrap.dedent(
    """
    import sys
    from pipeline import tuning
    from pipeline.data import load_dataset, split_dataset
    from pipeline.training import folds
    from tests.conftest import PROJECT_ROOT, make_config, small_params

    url, name, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = make_config(small_params())
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    x, y = dataset.features.iloc[split.train_index], dataset.target.iloc[split.train_index]
    objective = tuning.make_objective(
        "logistic_regression", config.optimize.search_spaces["logistic_regression"], x, y,
        folds(y, 3, config.seed), dataset.categorical, dataset.numeric, config.costs, config.seed,
    )
    study = tuning.open_study(tuning.open_storage(url, PROJECT_ROOT), name, seed=config.seed)
    print(tuning.tune(study, objective, cap, timeout_seconds=None))
    """
)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_processes_share_one_study_on_postgres(postgres_url):
    name, cap = "shared-study", 24
    # The first worker creates the schema and study; the others join it.
    tuning.open_study(tuning.open_storage(postgres_url, PROJECT_ROOT), name, seed=42)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, postgres_url, name, str(cap)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
        )
        for _ in range(2)
    ]
    ran = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
        ran.append(int(out.strip().splitlines()[-1]))

    study = tuning.open_study(tuning.open_storage(postgres_url, PROJECT_ROOT), name, seed=42)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(len(numbers)))  # unique and contiguous: none duplicated or lost
    assert len(tuning.done_trials(study)) == sum(ran) == len(numbers)
    assert all(n > 0 for n in ran)  # both really took part
    # The shared cap holds, give or take the trials already running when it was reached.
    assert cap <= len(numbers) <= cap + len(workers) - 1
    ids = {t._trial_id for t in study.trials}
    assert len(ids) == len(numbers)
    assert np.isfinite(study.best_value)


@pytest.mark.integration
def test_a_study_cut_short_by_its_time_limit_says_so(sqlite_store, caplog):
    research.run(make_config(small_params()))
    config = make_config(small_params(budget_seconds=20, optimize={"n_trials": 500, "top_k": 1}))
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.optimize"):
        result = optimize.run(config)
    (outcome,) = result.families
    assert outcome.stopped_by == "time" and outcome.trials_done < 500 and outcome.trials_cap == 500
    assert (
        f"tuning of {outcome.family} stopped by its time limit after {outcome.trials_done} of 500"
        in caplog.text
    )
    assert f"{outcome.trials_done}/500" in result.describe() and "time" in result.describe()
    families = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=result.run_id, artifact_path=f"{keys.ARTIFACT_FAMILIES}.csv", tracking_uri=sqlite_store
        )
    )
    assert families.loc[0, "stopped_by"] == "time" and families.loc[0, "trials_cap"] == 500


def test_a_new_study_starts_from_the_research_configuration_then_the_known_ones(sqlite_store):
    known = [{"C": 0.1}, {"C": 7.0, "class_weight": "balanced"}, {"C": 1.0e6}]  # the last outside
    raw = small_params(
        optimize={"top_k": 1, "n_trials": 4, "known_configurations": {"logistic_regression": known}}
    )
    raw["research"]["use"] = ["dummy_prior", "logistic_regression"]
    config = make_config(raw)
    research.run(config)
    (outcome,) = optimize.run(config).families
    assert outcome.family == "logistic_regression" and outcome.trials_done == 4
    location = tuning.storage_location(sqlite_store, PROJECT_ROOT)
    study = optuna.load_study(study_name=outcome.study_name, storage=location.url)
    trials = sorted(study.trials, key=lambda t: t.number)
    research_c = config.research.candidates["logistic_regression"].params["C"]
    assert [t.params["C"] for t in trials[:3]] == [research_c, 0.1, 7.0]
    assert trials[2].params["class_weight"] == "balanced"
    # The rest come from the sampler, inside the space (C = 1e6 is not queued).
    assert trials[3].params["C"] <= config.optimize.search_spaces["logistic_regression"]["C"].high


def test_a_known_configuration_naming_a_parameter_the_family_lacks_is_a_config_error(sqlite_store):
    raw = small_params(optimize={"known_configurations": {"logistic_regression": [{"max_dept": 3}]}})
    config = make_config(raw)
    research.run(config)
    with pytest.raises(ConfigError, match=r"known_configurations\.logistic_regression\[0\].*max_dept"):
        optimize.run(config)


def test_time_the_first_round_left_goes_to_a_family_it_skipped(sqlite_store, monkeypatch, caplog):
    research.run(make_config(small_params()))
    config = make_config(small_params(budget_seconds=120))
    # The first round skips every family after the first, as when their trials look too dear for
    # their shares; the first reaches its trial cap and leaves most of the budget.
    monkeypatch.setattr(
        budget, "skip_family", lambda share, trial, first: None if first else "skipped (test)"
    )
    with caplog.at_level(logging.INFO, logger="pipeline.stages.optimize"):
        result = optimize.run(config)
    first, second = result.families
    assert first.trials_done == first.trials_run_now == 3 and first.stopped_by == "count"
    assert second.trials_done == 3 and second.stopped_by == "count"
    assert (
        f"{second.family}: " in caplog.text and "s more of the budget, left by the first round" in caplog.text
    )
    steps = {step.name: step for step in result.steps}
    step = steps[keys.BUDGET_STEP_TUNE + second.family]
    assert step.stopped_by == "" and step.spent > 0 and step.planned > step.spent
    assert steps[keys.BUDGET_STEP_TOTAL].spent <= config.budget_seconds


def test_the_second_round_gives_a_skipped_family_its_first_trials_before_more_to_a_tuned_one(
    sqlite_store, monkeypatch, caplog
):
    research.run(make_config(small_params()))
    config = make_config(small_params(budget_seconds=120))
    # Round one: time ends the first family after its first trial (a study's first is never
    # stopped), and every family after it is skipped.
    monkeypatch.setattr(budget, "first_round_share", lambda *args: 0.01)
    monkeypatch.setattr(
        budget, "skip_family", lambda share, trial, first: None if first else "skipped (test)"
    )
    with caplog.at_level(logging.INFO, logger="pipeline.stages.optimize"):
        result = optimize.run(config)
    first, second = result.families
    given = re.findall(r"(\S+): \d+ s more of the budget, left by the first round", caplog.text)
    # The skipped family's first trials come before the one time stopped gets more.
    assert given == [second.family, first.family]
    assert first.trials_done == second.trials_done == 3
    steps = {step.name: step for step in result.steps}
    assert steps[keys.BUDGET_STEP_TOTAL].spent <= config.budget_seconds


def test_the_reserve_a_single_final_model_does_not_need_goes_to_its_family(sqlite_store, monkeypatch, caplog):
    research.run(make_config(small_params()))
    # Both families tune until time stops them; the better one is always judged clearly better than
    # the vote of both, so the final model is that family alone.
    config = make_config(small_params(budget_seconds=60, optimize={"n_trials": 500}))
    monkeypatch.setattr(
        final_model, "paired_gain", lambda candidate, reference: (candidate.summary()["cv_roc_auc_mean"], 0.0)
    )
    # A vote's refit held 15 s more per member than one family's, as forests' would.
    real_reserve = budget.final_reserve

    def dearer_votes(fold_seconds, *args, **kwargs):
        return real_reserve(fold_seconds, *args, **kwargs) + 15.0 * (len(fold_seconds) - 1)

    monkeypatch.setattr(budget, "final_reserve", dearer_votes)
    with caplog.at_level(logging.INFO, logger="pipeline.stages.optimize"):
        result = optimize.run(config)
    assert all(f.stopped_by == "time" for f in result.families)
    winner = min(result.families, key=lambda f: tuning.rank_key(f.metrics))
    assert result.best_family == winner.family
    more = rf"{winner.family}: (\d+) s more of the budget, left by the final step's reserve"
    given = re.search(more, caplog.text)
    assert given and int(given.group(1)) >= budget.EXTRA_ROUND_MIN_SECONDS
    steps = {step.name: step for step in result.steps}
    assert steps[keys.BUDGET_STEP_TUNE + winner.family].planned >= int(given.group(1))
    assert winner.planned_seconds == pytest.approx(steps[keys.BUDGET_STEP_TUNE + winner.family].planned)
    # The final step gets what a single family's refit needs, and the budget holds.
    total = steps[keys.BUDGET_STEP_TOTAL]
    assert total.spent <= config.budget_seconds + 15


def test_reason_codes_go_to_the_rejected_applicants_the_time_left_allows(sqlite_store, monkeypatch, caplog):
    """Each explained applicant is scored once per substituted copy: when those would not fit the
    final step's time, fewer rejected applicants get reasons, and the run says how many."""
    config = make_config(
        small_params(
            research={"use": ["dummy_prior", "logistic_regression"]},
            optimize={"top_k": 1, "n_trials": 1, "ensemble": False},
        )
    )
    research.run(config)
    monkeypatch.setattr(reporting_plan, "MIN_REASON_ROWS", 5)
    # Scoring measured at 100 s a row: no applicant's copies fit.
    monkeypatch.setattr(
        reporting_plan.ScoringCost, "from_calls", classmethod(lambda cls, *args: cls(0.0, 100.0))
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation_report"):
        result = optimize.run(config)
    given = re.search(r"reason codes for 5 of (\d+) rejected test applicants", caplog.text)
    assert given and int(given.group(1)) > 5
    frequencies = runs.load_artifact_frame(
        sqlite_store, result.run_id, f"{keys.ARTIFACT_REASON_FREQUENCIES}.csv"
    )
    assert (frequencies["rejected"] == 5).all() and frequencies["as_first_reason"].sum() <= 5
    assert mlflow.MlflowClient(sqlite_store).get_run(result.run_id).data.metrics["reason_rows"] == 5


def test_scorecard_family_is_researched_tuned_and_its_points_reproduce_the_logged_model(sqlite_store):
    """The woe_scorecard family through stages 1 and 2 on the default data: never calibrated, its
    table logged beside the model, and the points of that table give back the model's test scores."""
    from pipeline import reasons, scorecard, stability
    from pipeline.data import load_dataset, split_dataset
    from pipeline.tracking import model_io

    config = make_config(
        small_params(
            research={"use": ["dummy_prior", "woe_scorecard"]},
            optimize={"top_k": 1, "n_trials": 2, "ensemble": False},
        )
    )
    found = research.run(config)
    assert found.ranked_families == ["woe_scorecard"]
    uri = sqlite_store
    candidate_run = found.leaderboard.set_index("candidate").loc["woe_scorecard", "run_id"]
    assert runs.load_artifact_frame(uri, candidate_run, f"{keys.ARTIFACT_SCORECARD}.csv") is not None

    result = optimize.run(config)
    assert result.best_family == "woe_scorecard" and result.calibration == "none"
    table = runs.load_artifact_frame(uri, result.run_id, f"{keys.ARTIFACT_SCORECARD}.csv")
    test_scores = runs.load_artifact_frame(uri, result.run_id, keys.ARTIFACT_TEST_SCORES)
    model = model_io.load_model(result.model_uri)
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    test_x = dataset.features.iloc[test_scores["row_index"]]
    labels = scorecard.bin_labels(model.estimator, test_x)
    points = table.set_index(["characteristic", "bin"])["points"]
    score = sum(points.loc[list(zip([c] * len(labels), labels[c], strict=True))].to_numpy() for c in labels)
    scaling = scorecard.Scaling(**config.scorecard.model_dump())
    recomputed = scorecard.probability_from_score(score, scaling)
    assert abs(recomputed - test_scores["score"].to_numpy()).max() < 1e-6
    assert sorted(test_scores["row_index"]) == sorted(split.test_index)

    profile = stability.profile_from_metadata(model.metadata)
    assert set(profile["characteristics"]) == set(dataset.features.columns)
    frequencies = runs.load_artifact_frame(uri, result.run_id, f"{keys.ARTIFACT_REASON_FREQUENCIES}.csv")
    assert set(frequencies["method"]) == {reasons.METHOD_SCORECARD}
    rejected = int(frequencies["rejected"].iloc[0])
    assert frequencies["as_first_reason"].sum() == rejected  # every rejected applicant has a first reason


@pytest.mark.postgres
@pytest.mark.server
@pytest.mark.slow
def test_workers_share_studies_through_a_server_with_an_optuna_url(auth_server, postgres_url, tmp_path):
    """Two optimize workers tracking through a server share each family's study in PIPELINE_OPTUNA_URL."""
    from pipeline.settings import OPTUNA_URL_ENV
    from tests.integration.servers import ADMIN, WRITER, run_command, write_config

    experiment = f"optuna-{tmp_path.name[-12:]}"
    path = write_config(tmp_path, tracking={"experiment": experiment})
    research = run_command(auth_server, path, "research")
    assert research.returncode == 0, research.stderr[-3000:]
    env = auth_server.command_env(WRITER, **{OPTUNA_URL_ENV: postgres_url})
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "optimize", "--config", str(path)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err[-3000:]
        assert "do not share them" not in err

    with auth_server.as_user(ADMIN):
        client = MlflowClient(auth_server.url)
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        parents = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{keys.TAG_STAGE}` = 'optimize' and tags.`{keys.TAG_ROLE}` = 'stage'",
        )
        assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
        for parent in parents:
            assert parent.data.tags[keys.TAG_OPTUNA_SHARED] == "true"
            assert parent.data.tags[keys.TAG_OPTUNA_STORAGE] == postgres_url
        studies = {k: v for k, v in parents[0].data.tags.items() if k.startswith(keys.TAG_STUDY_PREFIX)}
        assert studies and studies == {
            k: v for k, v in parents[1].data.tags.items() if k.startswith(keys.TAG_STUDY_PREFIX)
        }
        storage = tuning.open_storage(postgres_url, PROJECT_ROOT)
        cap = small_params()["optimize"]["n_trials"]
        for name in studies.values():
            trials = client.search_runs(
                [experiment_id], filter_string=f"tags.`{keys.TAG_OPTUNA_STUDY}` = '{name}'", max_results=1000
            )
            recorded = {int(r.data.tags[keys.TAG_OPTUNA_TRIAL]) for r in trials}
            done = {t.number for t in tuning.done_trials(tuning.open_study(storage, name, seed=42))}
            # One study for both workers: every finished trial is recorded, and the shared cap holds
            # (give or take the one trial the other worker had running when it was reached).
            assert recorded == done
            assert cap <= len(done) <= cap + 1


def test_a_family_stage_1_sampled_is_tuned_and_refitted_on_the_same_sample(sqlite_store, caplog):
    config = make_config(small_params(optimize={"top_k": 1, "ensemble": False}))
    found = research.run(config)
    family = found.ranked_families[0]
    client = MlflowClient(sqlite_store)
    # As stage 1 records a family too slow for its share on every row (see test_selection).
    client.set_tag(found.run_id, keys.TAG_FAMILY_ROWS, json.dumps({family: 400}))
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.optimize"):
        result = optimize.run(config)
    assert result.best_family == family
    data = client.get_run(result.run_id).data
    assert data.metrics[keys.METRIC_TRAIN_ROWS] == 400
    assert "refitted on its sample of 400 of 750 training rows" in caplog.text
    # Its trials have a study of their own: their figures are on other rows than a full-part study's.
    settings, space = config.optimize, config.optimize.search_spaces[family]
    sampled = tuning.study_name(
        result.dataset_digest, family, space, settings.cv_folds, config.seed, config.costs, 400
    )
    assert data.tags[f"{keys.TAG_STUDY_PREFIX}{family}"] == sampled
    assert sampled != tuning.study_name(
        result.dataset_digest, family, space, settings.cv_folds, config.seed, config.costs
    )
    assert 0.5 < result.test_metrics["test_roc_auc"] <= 1.0  # the whole test part, scored once
