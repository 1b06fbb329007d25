"""The CI workflow's guarantees: least privilege, no secrets on PRs, pinned actions, safe scripts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from tests.conftest import PROJECT_ROOT, project_params
from tests.github_actions import evaluate, expressions_in, load_workflow, substitute

WORKFLOW = load_workflow()
JOBS = WORKFLOW["jobs"]
PIPELINE_STEPS = JOBS["pipeline"]["steps"]
SENTINEL = "s3cret-sentinel"


def contexts(event: str, profile: str = "", secrets: dict | None = None, variables: dict | None = None):
    return {
        "github": {"event_name": event, "ref": "refs/heads/feature", "workspace": "/ws"},
        "inputs": {"profile": profile} if event == "workflow_dispatch" else {},
        "secrets": secrets or {},
        "vars": variables or {},
        "env": WORKFLOW.get("env", {}),
    }


def step(name_part: str) -> dict:
    matches = [s for s in PIPELINE_STEPS if name_part in s.get("name", "")]
    assert len(matches) == 1, f"expected one step named like {name_part!r}"
    return matches[0]


def bash_env(**extra: str) -> dict[str, str]:
    """A minimal environment with this venv's python first on PATH, as setup-python gives."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **extra}


def test_triggers_are_push_to_main_pull_request_dispatch_with_profile_and_a_weekly_schedule():
    on = WORKFLOW["on"]
    assert set(on) == {"push", "pull_request", "workflow_dispatch", "schedule"}
    (schedule,) = on["schedule"]
    assert schedule["cron"].split()[2:] == ["*", "*", "1"]  # weekly, on Mondays
    assert "pull_request_target" not in on  # would run PR code with the base repo's secrets
    assert on["push"]["branches"] == ["main"]
    assert "profile" in on["workflow_dispatch"]["inputs"]


def test_permissions_are_read_only_at_the_top_and_never_widened():
    assert WORKFLOW["permissions"] == {"contents": "read"}
    for name, job in JOBS.items():
        granted = job.get("permissions", {})
        assert isinstance(granted, dict), f"job {name} uses a permission shorthand"
        assert "write" not in granted.values(), f"job {name} asks for write access"


def test_concurrency_groups_by_ref_and_cancels_only_pull_requests():
    concurrency = WORKFLOW["concurrency"]
    assert "github.ref" in concurrency["group"]
    cancel = expressions_in(concurrency["cancel-in-progress"])
    assert len(cancel) == 1
    assert evaluate(cancel[0], contexts("pull_request")) is True
    assert evaluate(cancel[0], contexts("push")) is False


def test_every_action_is_pinned_to_a_full_commit_sha():
    uses = [s["uses"] for job in JOBS.values() for s in job["steps"] if "uses" in s]
    assert uses
    for reference in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", reference), reference


def test_services_are_official_postgres_images_with_a_health_check():
    for name in ("test", "pipeline"):
        service = JOBS[name]["services"]["postgres"]
        assert re.fullmatch(r"postgres:\d+", service["image"])
        assert "pg_isready" in service["options"]


def test_run_scripts_hold_no_expressions():
    # ${{ }} inside a script is pasted in before bash runs: an injection risk and a secret in the log.
    for job_name, job in JOBS.items():
        for entry in job["steps"]:
            assert "${{" not in entry.get("run", ""), f"{job_name}: {entry.get('name')}"


def test_secrets_reach_steps_only_through_env():
    for job_name, job in JOBS.items():
        for entry in job["steps"]:
            for expression in expressions_in(entry.get("with", {})):
                assert "secrets." not in expression, f"{job_name}: {entry.get('name')}"


@pytest.mark.parametrize("event", ["pull_request"])
def test_pull_requests_see_no_secret_but_the_throwaway_database_password(event):
    every_secret = {
        name: SENTINEL
        for expression in expressions_in(WORKFLOW)
        for name in re.findall(r"secrets\.(\w+)", expression)
    }
    assert "MLFLOW_TRACKING_URI" in every_secret
    for job in JOBS.values():
        for key, value in job.get("env", {}).items():
            if key in ("POSTGRES_PASSWORD", "PGPASSWORD"):
                continue  # the service container's own password: it guards nothing else
            rendered = substitute(value, contexts(event, secrets=every_secret))
            assert SENTINEL not in rendered, f"{key} carries a secret on {event}"


def test_team_tracking_store_is_used_on_main_but_never_on_pull_requests():
    expression = expressions_in(JOBS["pipeline"]["env"]["TEAM_TRACKING_URI"])[0]
    secrets = {"MLFLOW_TRACKING_URI": "postgresql+psycopg2://team:pw@db/mlflow"}
    assert evaluate(expression, contexts("push", secrets=secrets)) == secrets["MLFLOW_TRACKING_URI"]
    assert evaluate(expression, contexts("pull_request", secrets=secrets)) in ("", None, False)
    assert evaluate(expression, contexts("push")) in ("", None, False)


@pytest.mark.parametrize(
    ("event", "profile", "expected"),
    [
        ("pull_request", "", "fast"),
        ("push", "", ""),
        ("workflow_dispatch", "", ""),
        ("workflow_dispatch", "fast", "fast"),
    ],
)
def test_profile_is_fast_for_pull_requests_and_chosen_on_dispatch(event, profile, expected):
    value = JOBS["pipeline"]["env"]["PIPELINE_PROFILE"]
    assert substitute(value, contexts(event, profile=profile)) == expected


def test_profiles_the_workflow_names_exist_and_an_empty_one_means_none(monkeypatch):
    assert "fast" in project_params()["profiles"]
    monkeypatch.setenv("PIPELINE_PROFILE", "")
    assert load_config(PROJECT_ROOT / "params.yaml").profile is None
    monkeypatch.setenv("PIPELINE_PROFILE", "fast")
    assert load_config(PROJECT_ROOT / "params.yaml").profile == "fast"


def test_the_four_stages_are_named_steps_in_order():
    scripts = [s.get("run", "") for s in PIPELINE_STEPS]
    commands = ["mlflow-loan-rm", "mlflow-loan-om", "mlflow-loan-register", "mlflow-results"]
    positions = [next(i for i, text in enumerate(scripts) if command in text) for command in commands]
    assert positions == sorted(positions)
    assert len(set(positions)) == 4
    report = next(i for i, text in enumerate(scripts) if "python -m pipeline report" in text)
    assert report > positions[-1]


@pytest.mark.parametrize(("variable", "flagged"), [("", False), ("false", False), ("true", True)])
def test_fail_on_reject_only_when_the_repository_variable_says_so(tmp_path, variable, flagged):
    expression = JOBS["pipeline"]["env"]["FAIL_ON_REJECT"]
    value = substitute(expression, contexts("push", variables={"PIPELINE_FAIL_ON_REJECT": variable}))
    fake = tmp_path / "bin" / "mlflow-loan-register"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "args:$*"\n')
    fake.chmod(0o755)
    (tmp_path / "logs").mkdir()
    env = bash_env(FAIL_ON_REJECT=value)
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    script = step("mlflow-loan-register")["run"]
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert ("--fail-on-reject" in done.stdout) is flagged
    assert (tmp_path / "logs" / "register.log").read_text() == done.stdout


def test_configure_step_masks_the_password_and_exports_a_quoted_uri(tmp_path):
    password = "p@ss:w/rd%1"
    github_env = tmp_path / "github_env"
    github_env.touch()
    env = bash_env(
        POSTGRES_USER="mlflow",
        POSTGRES_PASSWORD=password,
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT="5432",
        POSTGRES_DB="mlflow",
        TEAM_TRACKING_URI="",
        PIPELINE_PROFILE="fast",
        GITHUB_ENV=str(github_env),
    )
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step("tracking store")["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    exported = dict(line.split("=", 1) for line in github_env.read_text().splitlines())
    uri = exported["MLFLOW_TRACKING_URI"]
    assert uri == "postgresql+psycopg2://mlflow:p%40ss%3Aw%2Frd%251@127.0.0.1:5432/mlflow"
    assert exported["TRACKING_STORE"] == "service"
    # The runner hides whatever follows ::add-mask::; nothing else may show the secret.
    shown = [line for line in done.stdout.splitlines() if not line.startswith("::add-mask::")]
    assert f"::add-mask::{uri}" in done.stdout
    assert not any(password in line or "p%40ss" in line for line in shown + done.stderr.splitlines())


def test_configure_step_prefers_the_team_store_without_printing_it(tmp_path):
    github_env = tmp_path / "github_env"
    github_env.touch()
    team = "postgresql+psycopg2://team:hunter2@db.internal/mlflow"
    env = bash_env(TEAM_TRACKING_URI=team, PIPELINE_PROFILE="", GITHUB_ENV=str(github_env))
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step("tracking store")["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"MLFLOW_TRACKING_URI={team}" in github_env.read_text().splitlines()
    assert "TRACKING_STORE=team" in github_env.read_text().splitlines()
    assert "hunter2" not in done.stdout.replace(f"::add-mask::{team}", "")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("github.event_name == 'PULL_REQUEST'", True),  # GitHub compares strings ignoring case
        ("github.event_name != 'push' && 'a' || 'b'", "a"),
        ("!(github.event_name == 'push')", True),
        ("inputs.missing || 'default'", "default"),
        ("'it''s'", "it's"),
    ],
)
def test_expression_stand_in_follows_github_semantics(expression, expected):
    assert evaluate(expression, contexts("pull_request")) == expected


def test_expression_stand_in_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match="supported"):
        evaluate("contains(github.ref, 'main')", contexts("push"))
    with pytest.raises(ValueError, match="no stand-in"):
        evaluate("runner.os", contexts("push"))


# --- The weekly stability monitor ---------------------------------------------------------------------

MONITOR = JOBS["monitor"]


@pytest.mark.parametrize(
    ("event", "data", "runs"),
    [("schedule", "data/new.csv", True), ("schedule", "", False), ("push", "data/new.csv", False)],
)
def test_monitor_runs_only_on_schedule_when_a_variable_names_the_data(event, data, runs):
    variables = {"PIPELINE_MONITOR_DATA": data} if data else {}
    assert bool(evaluate(MONITOR["if"], contexts(event, variables=variables))) is runs  # truthiness, as `if:`


@pytest.mark.parametrize("job", ["test", "pipeline"])
def test_the_schedule_runs_nothing_but_the_monitor(job):
    assert evaluate(JOBS[job]["if"], contexts("schedule")) is False
    assert evaluate(JOBS[job]["if"], contexts("push")) is True


def test_monitor_gets_the_team_store_only_on_schedule():
    secrets = {"MLFLOW_TRACKING_URI": SENTINEL}
    value = MONITOR["env"]["MLFLOW_TRACKING_URI"]
    assert substitute(value, contexts("schedule", secrets=secrets)) == SENTINEL
    assert substitute(value, contexts("push", secrets=secrets)) in ("", "false")


def run_monitor_step(folder, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The monitor job's step script, run as the runner runs it."""
    (script,) = [s["run"] for s in MONITOR["steps"] if "pipeline monitor" in s.get("run", "")]
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(("model", "exit_code"), [("", 0), ("models:/m@challenger", 3)])
def test_monitor_step_passes_the_data_and_model_and_keeps_exit_3(tmp_path, model, exit_code):
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "args:$*"\nexit {exit_code}\n')
    fake.chmod(0o755)
    env = bash_env(
        MLFLOW_TRACKING_URI="sqlite:///x.db", MONITOR_DATA="data/new applicants.csv", MONITOR_MODEL=model
    )
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    done = run_monitor_step(tmp_path, env)
    assert done.returncode == exit_code  # a shifted population fails the job through tee
    expected = "args:-m pipeline monitor --input data/new applicants.csv"
    assert done.stdout.strip() == expected + (f" --model {model}" if model else "")
    assert (tmp_path / "logs" / "monitor.log").read_text() == done.stdout


def test_monitor_step_without_the_team_store_fails_with_one_error(tmp_path):
    done = run_monitor_step(
        tmp_path, bash_env(MLFLOW_TRACKING_URI="", MONITOR_DATA="x.csv", MONITOR_MODEL="")
    )
    assert done.returncode == 1
    assert done.stdout.startswith("::error::the monitor needs the team's tracking store")
