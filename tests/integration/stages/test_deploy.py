"""Continuous delivery end to end: deploy behind a real scoring server, reruns, a failing smoke test,
rollback, and the alias history every move leaves."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import cli, smoke
from pipeline.errors import LookupFailedError
from pipeline.stages import deploy, register, results, rollback
from pipeline.tracking import keys, lookups, registry, runs
from tests.conftest import PROJECT_ROOT, make_config, small_params
from tests.integration.fakes import fake_optimize_run, fake_research_run, weak_then_strong

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "loan-default-classifier"


@pytest.fixture
def config(sqlite_store):
    return make_config(small_params(register={"min_test_roc_auc": 0.5}))


def aliases(uri: str) -> dict[str, str]:
    return {
        alias: str(version) for alias, version in MlflowClient(uri).get_registered_model(NAME).aliases.items()
    }


def stage_runs(config, stage: str, status: str | None = None) -> list:
    return lookups.search_stage_runs(runs.connect(config), stage, status=status)


def test_deploy_rerun_next_champion_rollback_and_the_alias_history(
    sqlite_store, config, monkeypatch, tmp_path
):
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "team/loan-mlops")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    weak, strong = weak_then_strong(config)
    assert register.run(config, optimize_run_id=weak).decision == "promoted"

    first = deploy.run(config)
    assert aliases(sqlite_store) == {"champion": "1", "production": "1"}
    assert [check.name for check in first.release.checks] == list(smoke.CHECKS)
    assert all(check.passed for check in first.release.checks)
    [run] = stage_runs(config, keys.STAGE_DEPLOY)
    assert run.info.run_id == first.release.run_id
    assert run.data.tags[keys.TAG_DEPLOY_OUTCOME] == keys.DEPLOY_DEPLOYED
    assert run.data.tags[keys.TAG_DEPLOY_VERSION] == "1"
    assert run.data.tags[keys.TAG_DEPLOY_FROM_VERSION] == ""
    assert {f"smoke_{name}_seconds" for name in smoke.CHECKS} <= set(run.data.metrics)
    assert run.data.metrics["smoke_checks_passed"] == len(smoke.CHECKS)
    recorded = json.loads(
        runs.download_artifact_text(runs.connect(config), run.info.run_id, keys.ARTIFACT_SMOKE_TEST)
    )
    assert [check["name"] for check in recorded["checks"]] == list(smoke.CHECKS)

    # Nothing new: no server, no run, nothing moved.
    again = deploy.run(config)
    assert again.release is None and "already @production" in again.describe()
    assert len(stage_runs(config, keys.STAGE_DEPLOY, status=None)) == 1

    assert register.run(config, optimize_run_id=strong).decision == "promoted"
    assert aliases(sqlite_store) == {"champion": "2", "previous": "1", "production": "1"}
    second = deploy.run(config)
    assert second.release.from_version == "1"
    assert aliases(sqlite_store) == {"champion": "2", "previous": "1", "production": "2"}

    back = rollback.run(config)
    assert (back.version, back.from_version) == ("1", "2")
    assert aliases(sqlite_store) == {"champion": "1", "previous": "1", "production": "1"}
    [rolled] = stage_runs(config, keys.STAGE_ROLLBACK)
    assert rolled.data.tags[keys.TAG_DEPLOY_OUTCOME] == keys.DEPLOY_DEPLOYED
    assert deploy.run(config).release is None  # the withdrawn version does not come straight back
    with pytest.raises(LookupFailedError, match="no production version before v1"):
        rollback.run(config)

    moves = registry.alias_history(runs.connect(config), NAME)
    assert [(m.alias, m.from_version, m.to_version, m.actor) for m in moves] == [
        ("champion", None, "1", "register"),
        ("production", None, "1", "deploy"),
        ("previous", None, "1", "register"),
        ("champion", "1", "2", "register"),
        ("production", "1", "2", "deploy"),
        ("production", "2", "1", "rollback"),
        ("champion", "2", "1", "rollback"),
    ]
    assert {m.ci_run_url for m in moves} == {"https://github.com/team/loan-mlops/actions/runs/42"}
    assert all(m.git_commit and m.run_id and m.reason for m in moves)
    assert moves[1].run_id == first.release.run_id
    assert "passed the smoke test" in moves[1].reason

    # The results stage and its summary show it.
    report = results.run(config, output_dir=tmp_path / "reports")
    shown = report.views.alias_history
    assert shown["alias"].tolist()[:2] == ["champion", "production"]  # newest first
    assert len(shown) == len(moves)
    assert (tmp_path / "reports" / "views" / "alias_history.csv").is_file()
    assert f"Production: `{NAME}` version 1" in report.summary


def drifted_copy_of(config, version: str, folder: Path) -> str:
    """A new version of ``version`` whose shipped scoring code halves every probability: what the
    server runs then differs from batch scoring, which the smoke test must catch."""
    client = MlflowClient()
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(folder)))
    code = local / "code" / "pipeline" / "scoring.py"
    text = code.read_text()
    marker = "columns = _decision_columns(probabilities, "
    assert text.count(marker) == 1
    code.write_text(text.replace(marker, "columns = _decision_columns(probabilities * 0.5, "))
    session = runs.connect(config)
    run = client.create_run(session.experiment_id, run_name="drifted-copy")
    client.log_artifacts(run.info.run_id, str(local), "drifted")
    client.set_terminated(run.info.run_id)
    return str(client.create_model_version(NAME, f"runs:/{run.info.run_id}/drifted", run.info.run_id).version)


def test_a_version_failing_the_smoke_test_leaves_production_where_it_was(
    sqlite_store, config, tmp_path, capsys
):
    research_id = fake_research_run(config, {"dummy": 0.5})
    assert register.run(config, optimize_run_id=fake_optimize_run(config, research_id)).version == "1"
    session = runs.connect(config)
    setup = registry.MoveReason("test setup", "as if deployed earlier", None, "none")
    registry.move_alias(session, NAME, keys.ALIAS_PRODUCTION, "1", setup)
    drifted = drifted_copy_of(config, "1", tmp_path / "copy")
    registry.move_alias(session, NAME, keys.ALIAS_CHAMPION, drifted, setup)

    raw = small_params(register={"min_test_roc_auc": 0.5})
    raw["dataset"]["path"] = str(PROJECT_ROOT / raw["dataset"]["path"])
    config_path = tmp_path / "params.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    code = cli.main(["deploy", "--quiet", "--config", str(config_path)])
    stderr = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(stderr) == 1
    assert stderr[0].startswith(
        f"deploy failed: v{drifted} failed the smoke test (input_example: probabilities"
    )
    assert "held_out_rows: probabilities differ from batch scoring" in stderr[0]
    assert stderr[0].endswith("@production stays at v1")
    assert aliases(sqlite_store) == {"champion": drifted, "production": "1"}

    [failed] = stage_runs(config, keys.STAGE_DEPLOY, status="FAILED")
    assert failed.data.tags[keys.TAG_DEPLOY_OUTCOME] == keys.DEPLOY_FAILED
    assert "held_out_rows" in failed.data.tags[keys.TAG_DEPLOY_REASON]
    assert "held_out_rows" in failed.data.tags[keys.TAG_FAILURE_REASON]
    checks = json.loads(runs.download_artifact_text(session, failed.info.run_id, keys.ARTIFACT_SMOKE_TEST))[
        "checks"
    ]
    verdicts = {check["name"]: check["passed"] for check in checks}
    assert verdicts == {
        "ping": True,
        "input_example": False,
        "held_out_rows": False,
        "malformed_request": True,
    }
    assert not [m for m in registry.alias_history(session, NAME) if m.actor == keys.STAGE_DEPLOY]


def test_nothing_to_deploy_without_a_champion(sqlite_store, config):
    result = deploy.run(config)
    assert result.release is None
    assert "has no @champion" in result.describe()
    assert stage_runs(config, keys.STAGE_DEPLOY, status=None) == []
