"""Stage 3 end to end: the gate, aliases, idempotent reruns, crash recovery, concurrent registrations."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.errors import LookupFailedError
from pipeline.stages import register, research
from pipeline.tracking import keys, lookups, model_io, registry, runs
from tests.conftest import PROJECT_ROOT, make_config, small_params
from tests.integration.fakes import fake_optimize_run, fake_research_run, weak_then_strong

pytestmark = pytest.mark.integration

NAME = "loan-default-classifier"


def versions(uri: str) -> list:
    return sorted(MlflowClient(uri).search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))


def alias(uri: str, name: str) -> str | None:
    try:
        return str(MlflowClient(uri).get_model_version_by_alias(NAME, name).version)
    except Exception:
        return None


def test_first_registration_promotes_then_reruns_and_equal_challengers_are_rejected(
    sqlite_store, small_config
):
    research_id = research.run(small_config).run_id
    first = fake_optimize_run(small_config, research_id)

    result = register.run(small_config, optimize_run_id=first)
    assert result.decision == "promoted"
    assert result.version == "1"
    assert result.exit_code == 0
    assert "no champion yet" in result.outcome.reason
    assert alias(sqlite_store, "champion") == "1"
    tags = versions(sqlite_store)[0].tags
    assert tags[keys.VTAG_STATUS] == "done"
    assert tags[keys.VTAG_DECISION] == "promoted"
    assert tags["optimize_run_id"] == first
    assert tags["research_run_id"] == research_id
    assert float(tags["threshold"]) == pytest.approx(model_io.model_threshold(f"models:/{NAME}@champion"))
    assert tags[keys.TAG_GIT_COMMIT]
    # Floors were checked against the real research run's baselines.
    floors = {c.name: c for c in result.outcome.gate_decision.floors}
    assert floors["beats_dummy"].required is not None
    assert floors["beats_logistic_regression"].required is not None
    stage_run = MlflowClient(sqlite_store).get_run(result.run_id)
    assert stage_run.data.tags[keys.TAG_REGISTER_DECISION] == "promoted"
    assert stage_run.data.tags[keys.TAG_REGISTER_VERSION] == "1"
    assert stage_run.data.tags[keys.TAG_REGISTER_OPTIMIZE_RUN] == first

    # Same optimization run again: nothing new, the earlier decision reported.
    again = register.run(small_config, optimize_run_id=first)
    assert again.decision == "already_registered"
    assert again.version == "1"
    assert again.outcome.reason.startswith("promoted")
    assert len(versions(sqlite_store)) == 1

    # An identical model from another optimization run cannot improve on the champion.
    second = fake_optimize_run(small_config, research_id)
    rejected = register.run(small_config, optimize_run_id=second, fail_on_reject=True)
    assert rejected.decision == "rejected"
    assert rejected.exit_code == 1
    assert rejected.version == "2"
    assert rejected.outcome.figures["probability_of_improvement"] == 0.0
    assert alias(sqlite_store, "champion") == "1"
    assert alias(sqlite_store, "challenger") == "2"
    v2 = versions(sqlite_store)[1].tags
    assert v2[keys.VTAG_DECISION] == "rejected"
    assert "not better than the champion" in v2[keys.VTAG_REASON]
    assert v2[keys.VTAG_CHAMPION_VERSION] == "1"
    assert float(v2["gate.probability_of_improvement"]) == 0.0
    client = MlflowClient(sqlite_store)
    decision = json.loads(
        runs.download_artifact_text(runs.connect(small_config), rejected.run_id, keys.ARTIFACT_GATE_DECISION)
    )
    assert decision["decision"] == "rejected"
    assert decision["champion_version"] == "1"
    artifacts = {a.path for a in client.list_artifacts(rejected.run_id, "gate")}
    assert artifacts == {
        keys.ARTIFACT_GATE_DECISION,
        keys.ARTIFACT_BOOTSTRAP,
        keys.ARTIFACT_COMPARISON,
        keys.ARTIFACT_CONFUSION,
    }
    # Equal challenger and champion: every difference is zero, and no side is named better.
    comparison = pd.read_csv(
        io.StringIO(
            runs.download_artifact_text(runs.connect(small_config), rejected.run_id, keys.ARTIFACT_COMPARISON)
        )
    )
    assert (comparison["difference"] == 0).all() and (comparison["better"] == "unclear").all()
    assert [a.path for a in client.list_artifacts(rejected.run_id, "plots")] == [keys.PLOT_BOOTSTRAP]
    metrics = client.get_run(rejected.run_id).data.metrics
    assert metrics["champion_test_roc_auc"] == pytest.approx(metrics["challenger_test_roc_auc"])
    # A rerun of a rejected registration still fails the pull-request check.
    assert register.run(small_config, optimize_run_id=second, fail_on_reject=True).exit_code == 1


def test_better_challenger_is_promoted_and_old_champion_archived(sqlite_store):
    config = make_config(small_params(register={"min_test_roc_auc": 0.5, "mirror_stages": True}))
    weak, strong = weak_then_strong(config)
    first = register.run(config, optimize_run_id=weak)
    assert first.decision == "promoted"
    notes = first.outcome.gate_decision.notes
    assert any("no logistic_regression candidate" in note for note in notes)

    # The champion was trained on "other data": the report must say so.
    MlflowClient(sqlite_store).set_model_version_tag(NAME, "1", keys.TAG_DATASET_DIGEST, "0000000000000000")
    second = register.run(config)  # latest optimization run = strong
    assert second.optimize_run_id == strong
    assert second.decision == "promoted", second.outcome.reason
    assert second.outcome.figures["roc_auc_gain"] > 0.05
    assert second.outcome.figures["probability_of_improvement"] >= 0.9
    assert second.outcome.other_data is True
    assert alias(sqlite_store, "champion") == "2"
    assert alias(sqlite_store, "previous") == "1"
    old, new = versions(sqlite_store)
    assert old.tags["archived"] == "true"
    # register.mirror_stages also moves the deprecated registry stages.
    assert (old.current_stage, new.current_stage) == ("Archived", "Production")
    tags = MlflowClient(sqlite_store).get_run(second.run_id).data.tags
    assert tags[keys.TAG_REGISTER_OTHER_DATA] == "true"
    assert "trained on another dataset digest" in second.describe()


def test_floor_failure_rejects_without_a_champion(sqlite_store):
    config = make_config(small_params(register={"min_test_roc_auc": 0.99}))
    research_id = fake_research_run(config, {"dummy": 0.5, "logistic_regression": 0.7})
    optimize_id = fake_optimize_run(config, research_id)
    result = register.run(config, optimize_run_id=optimize_id)
    assert result.decision == "rejected"
    assert "floor not met" in result.outcome.reason
    assert "minimum 0.9900" in result.outcome.reason
    assert alias(sqlite_store, "champion") is None
    assert alias(sqlite_store, "challenger") == "1"
    assert result.exit_code == 0  # a decision either way exits 0 without --fail-on-reject


def register_until_crash(config, monkeypatch, step: str) -> str:
    """Register a fresh optimize run with ``registry.<step>`` failing; returns the optimize run id."""
    optimize_id = fake_optimize_run(config, fake_research_run(config, {"dummy": 0.5}))

    def crash(*args, **kwargs):
        raise RuntimeError(f"simulated crash in {step}")

    with monkeypatch.context() as patch:
        patch.setattr(registry, step, crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            register.run(config, optimize_run_id=optimize_id)
    return optimize_id


def test_crash_between_register_and_alias_is_finished_on_rerun(sqlite_store, monkeypatch):
    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    optimize_id = register_until_crash(config, monkeypatch, "move_alias")
    [left] = versions(sqlite_store)
    assert left.tags[keys.VTAG_STATUS] == "pending"
    assert alias(sqlite_store, "champion") is None
    failed = lookups.search_stage_runs(runs.connect(config), "register", status="FAILED")
    assert len(failed) == 1

    result = register.run(config, optimize_run_id=optimize_id)
    assert result.decision == "promoted"
    assert result.outcome.resumed is True
    [finished] = versions(sqlite_store)
    assert str(finished.version) == str(left.version)
    assert finished.tags[keys.VTAG_STATUS] == "done"
    assert alias(sqlite_store, "champion") == str(left.version)


def test_rejected_then_interrupted_version_promoted_on_rerun_is_no_longer_challenger(
    sqlite_store, monkeypatch
):
    strict = make_config(small_params(register={"min_test_roc_auc": 0.999}))
    # Rejected: the challenger alias moves, then the crash comes before the gate tags.
    optimize_id = register_until_crash(strict, monkeypatch, "set_version_tags")
    [left] = versions(sqlite_store)
    assert left.tags[keys.VTAG_STATUS] == "pending"
    assert alias(sqlite_store, "challenger") == str(left.version)

    # The floor is lowered before the rerun: the same version is now promoted.
    relaxed = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    result = register.run(relaxed, optimize_run_id=optimize_id)
    assert result.decision == "promoted" and result.outcome.resumed is True
    assert alias(sqlite_store, "champion") == str(left.version)
    assert alias(sqlite_store, "challenger") is None
    [finished] = versions(sqlite_store)
    assert finished.tags[keys.VTAG_STATUS] == "done"


def test_optimize_run_on_other_test_data_is_refused(sqlite_store):
    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    research_id = fake_research_run(config, {"dummy": 0.5})
    optimize_id = fake_optimize_run(config, research_id)
    other_split = make_config(small_params(seed=7, register={"min_test_roc_auc": 0.5}))
    with pytest.raises(LookupFailedError, match="tested on test part"):
        register.run(other_split, optimize_run_id=optimize_id)
    assert versions(sqlite_store) == []


def test_missing_or_wrong_optimize_run_is_a_lookup_error(sqlite_store, small_config):
    with pytest.raises(LookupFailedError, match="no finished optimization run"):
        register.run(small_config)
    research_id = fake_research_run(small_config, {"dummy": 0.5})
    with pytest.raises(LookupFailedError, match="is not a parent run of the optimize stage"):
        register.run(small_config, optimize_run_id=research_id)


# --- Concurrency: separate processes racing on one store ------------------------------------------


def _write_config(tmp_path, raw) -> str:
    raw["dataset"]["path"] = str(PROJECT_ROOT / raw["dataset"]["path"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _race(config_path: str, run_ids: list[str], env: dict | None = None) -> list[subprocess.CompletedProcess]:
    env = dict(os.environ) if env is None else env
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                "register",
                "--quiet",
                "--config",
                config_path,
                "--optimize-run-id",
                run_id,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=PROJECT_ROOT,
        )
        for run_id in run_ids
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def _check_race(uri: str, config, tmp_path) -> None:
    config_path = _write_config(tmp_path, small_params(register={"min_test_roc_auc": 0.5}))
    weak, strong = weak_then_strong(config)

    # Same optimization run twice at once: one version, one "already registered".
    same = _race(config_path, [weak, weak])
    assert [r.returncode for r in same] == [0, 0], [r.stderr for r in same]
    outputs = " ".join(r.stdout for r in same)
    assert outputs.count("PROMOTED") == 1
    assert outputs.count("ALREADY REGISTERED") == 1
    assert len(versions(uri)) == 1

    # Two different runs at once (one of them already registered): exactly one new version.
    different = _race(config_path, [strong, weak])
    assert [r.returncode for r in different] == [0, 0], [r.stderr for r in different]
    found = versions(uri)
    assert sorted(v.tags["optimize_run_id"] for v in found) == sorted([weak, strong])
    assert all(v.tags[keys.VTAG_STATUS] == "done" for v in found)
    assert alias(uri, "champion") == next(
        str(v.version) for v in found if v.tags["optimize_run_id"] == strong
    )


@pytest.mark.slow
def test_concurrent_registrations_on_sqlite(sqlite_store, tmp_path):
    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    _check_race(sqlite_store, config, tmp_path)


@pytest.mark.postgres
@pytest.mark.slow
def test_concurrent_registrations_on_postgres(postgres_store, tmp_path):
    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    _check_race(postgres_store, config, tmp_path)


@pytest.mark.postgres
@pytest.mark.server
@pytest.mark.slow
def test_three_registrations_at_once_through_a_server(auth_server, tmp_path):
    """No lock through a server: the marker tag, the re-read and the turns in version order must do."""
    from pipeline.config import load_config
    from tests.integration.servers import ADMIN, WRITER, write_config

    model = f"race-{tmp_path.name[-12:]}"
    path = write_config(
        tmp_path, tracking={"experiment": model}, register={"model_name": model, "min_test_roc_auc": 0.5}
    )
    config = load_config(path)
    with auth_server.as_user(WRITER):
        research_id = fake_research_run(config, {"dummy": 0.5})
        weak = fake_optimize_run(config, research_id, numeric_only=["duration_months"])
        strong = fake_optimize_run(config, research_id)
        other = fake_optimize_run(config, research_id, family="naive_bayes")
    env = auth_server.command_env(WRITER)

    def registered() -> list:
        with auth_server.as_user(ADMIN):
            found = MlflowClient(auth_server.url).search_model_versions(f"name = '{model}'")
            champion = MlflowClient(auth_server.url).get_model_version_by_alias(model, "champion")
        return sorted(found, key=lambda v: int(v.version)), str(champion.version)

    # The same optimization run three times at once: one version, registered once.
    same = _race(str(path), [weak, weak, weak], env)
    assert [r.returncode for r in same] == [0, 0, 0], [r.stderr for r in same]
    outputs = " ".join(r.stdout for r in same)
    assert outputs.count("PROMOTED") == 1 and outputs.count("ALREADY REGISTERED") == 2
    found, champion = registered()
    assert [v.tags["optimize_run_id"] for v in found] == [weak] and champion == str(found[0].version)

    # Three at once again, two of them new: one version per run, each judged against the champion the
    # registrations before it left, so the promotions form one chain and one version is champion.
    mixed = _race(str(path), [strong, other, weak], env)
    assert [r.returncode for r in mixed] == [0, 0, 0], [r.stderr for r in mixed]
    found, champion = registered()
    assert sorted(v.tags["optimize_run_id"] for v in found) == sorted([weak, strong, other])
    assert all(v.tags[keys.VTAG_STATUS] == "done" for v in found)
    holder = str(found[0].version)
    for version in found[1:]:
        assert version.tags[keys.VTAG_CHAMPION_VERSION] == holder, version.tags
        if version.tags[keys.VTAG_DECISION] == "promoted":
            holder = str(version.version)
    assert champion == holder


@pytest.mark.slow
def test_registers_the_real_optimize_stage_output(sqlite_store, small_config):
    from pipeline.stages import optimize

    research_id = research.run(small_config).run_id
    optimized = optimize.run(small_config, research_run_id=research_id)
    result = register.run(small_config)  # finds the optimization run through MLflow
    assert result.optimize_run_id == optimized.run_id
    assert result.decision in {"promoted", "rejected"}
    # The stage re-scores the logged model: it must reproduce stage 2's recorded test metrics.
    assert result.outcome.figures["challenger_test_roc_auc"] == pytest.approx(
        optimized.test_metrics["test_roc_auc"], abs=1e-9
    )
    assert result.outcome.figures["challenger_test_expected_cost"] == pytest.approx(
        optimized.test_metrics["test_expected_cost"], abs=1e-9
    )
    assert not result.outcome.gate_decision.notes  # both baselines present, scores reproduced
    [version] = versions(sqlite_store)
    assert version.tags[keys.VTAG_STATUS] == "done"
    assert float(version.tags["threshold"]) == pytest.approx(optimized.threshold)
    expected_alias = "champion" if result.decision == "promoted" else "challenger"
    assert alias(sqlite_store, expected_alias) == "1"


@pytest.mark.postgres
def test_postgres_registry_lock_is_exclusive(postgres_url):
    import threading

    from pipeline.errors import TrackingUnavailableError
    from pipeline.tracking import store

    held, release, outcome = threading.Event(), threading.Event(), {}

    def holder():
        with store.advisory_lock(postgres_url, "model-a"):
            held.set()
            release.wait(timeout=60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(timeout=60)
        with (
            pytest.raises(TrackingUnavailableError, match="could not take the lock"),
            store.advisory_lock(postgres_url, "model-a", timeout_seconds=0.2),
        ):
            pass
        with store.advisory_lock(postgres_url, "model-b", timeout_seconds=5):  # other keys are free
            outcome["other_key"] = True
    finally:
        release.set()
        thread.join()
    with store.advisory_lock(postgres_url, "model-a", timeout_seconds=5):  # freed on exit
        outcome["after_release"] = True
    assert outcome == {"other_key": True, "after_release": True}
