"""The CI workflow's guarantees: least privilege, no secrets on PRs, pinned actions, safe scripts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from tests.conftest import PROJECT_ROOT, project_params
from tests.github_actions import WORKFLOW_DIR, evaluate, expressions_in, load_workflow, substitute

WORKFLOW = load_workflow()
JOBS = WORKFLOW["jobs"]
COMMENT_WORKFLOW = load_workflow(WORKFLOW_DIR / "pr-comment.yml")
ALL_JOBS = {path.name: load_workflow(path)["jobs"] for path in sorted(WORKFLOW_DIR.glob("*.yml"))}
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


def step(name_part: str, steps: list[dict] = PIPELINE_STEPS) -> dict:
    matches = [s for s in steps if name_part in s.get("name", "")]
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


def test_permissions_are_read_only_at_the_top_and_only_the_deploy_job_may_push_packages():
    assert WORKFLOW["permissions"] == {"contents": "read"}
    for name, job in JOBS.items():
        granted = job.get("permissions", {})
        assert isinstance(granted, dict), f"job {name} uses a permission shorthand"
        writes = {scope for scope, level in granted.items() if level == "write"}
        assert writes == ({"packages"} if name == "deploy" else set()), f"job {name} asks for write access"
    assert JOBS["deploy"]["permissions"] == {"contents": "read", "packages": "write"}


def test_concurrency_groups_by_ref_and_cancels_only_pull_requests():
    concurrency = WORKFLOW["concurrency"]
    assert "github.ref" in concurrency["group"]
    cancel = expressions_in(concurrency["cancel-in-progress"])
    assert len(cancel) == 1
    assert evaluate(cancel[0], contexts("pull_request")) is True
    assert evaluate(cancel[0], contexts("push")) is False


def test_every_action_is_pinned_to_a_full_commit_sha():
    uses = [
        s["uses"] for jobs in ALL_JOBS.values() for job in jobs.values() for s in job["steps"] if "uses" in s
    ]
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
    for job_name, job in [(name, job) for jobs in ALL_JOBS.values() for name, job in jobs.items()]:
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
    ("event", "profile", "variable", "expected"),
    [
        ("pull_request", "", "", ""),
        ("push", "", "", ""),
        ("pull_request", "", "fast", "fast"),
        ("push", "", "fast", "fast"),
        ("workflow_dispatch", "", "", ""),
        ("workflow_dispatch", "fast", "", "fast"),
    ],
)
def test_pull_requests_run_main_s_profile_so_the_comparison_is_like_for_like(
    event, profile, variable, expected
):
    value = JOBS["pipeline"]["env"]["PIPELINE_PROFILE"]
    variables = {"PIPELINE_PROFILE": variable} if variable else {}
    assert substitute(value, contexts(event, profile=profile, variables=variables)) == expected


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


def configure(tmp_path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run the configure step with ``env``; its output and what it exported to later steps."""
    github_env = tmp_path / "github_env"
    github_env.write_text("")
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step("tracking store")["run"]],
        cwd=tmp_path,
        env=bash_env(PIPELINE_PROFILE="", GITHUB_ENV=str(github_env), GITHUB_WORKSPACE="/ws", **env),
        capture_output=True,
        text=True,
        check=True,
    )
    return done, dict(line.split("=", 1) for line in github_env.read_text().splitlines())


def test_configure_step_prefers_the_team_store_without_printing_it(tmp_path):
    team = "postgresql+psycopg2://team:hunter2@db.internal/mlflow"
    done, exported = configure(tmp_path, TEAM_TRACKING_URI=team, TEAM_ARTIFACT_ROOT="")
    assert exported["MLFLOW_TRACKING_URI"] == team
    assert exported["TRACKING_STORE"] == "team"
    assert "hunter2" not in done.stdout.replace(f"::add-mask::{team}", "")
    # No artifact root on the runner for a team store: the next step stops the job instead.
    assert "PIPELINE_ARTIFACT_ROOT" not in exported


@pytest.mark.parametrize(
    ("team", "team_root", "expected"),
    [
        ("", "", "/ws/mlartifacts"),  # the throwaway service: on the runner, uploaded at the end
        ("https://mlflow.example.com", "", None),  # a team server keeps its artifacts
        ("postgresql+psycopg2://t@db/mlflow", "s3://bucket/mlflow", "s3://bucket/mlflow"),
    ],
)
def test_configure_step_sets_the_artifact_root_only_where_the_runner_is_not_a_team_store(
    tmp_path, team, team_root, expected
):
    env = {"POSTGRES_USER": "m", "POSTGRES_PASSWORD": "p", "POSTGRES_HOST": "h", "POSTGRES_PORT": "1"}
    _, exported = configure(
        tmp_path, TEAM_TRACKING_URI=team, TEAM_ARTIFACT_ROOT=team_root, POSTGRES_DB="d", **env
    )
    assert exported.get("PIPELINE_ARTIFACT_ROOT") == expected


def test_the_store_check_before_stage_1_is_strict_only_for_a_team_store(tmp_path):
    script = step("Wait for the store")["run"]
    fake = tmp_path / "scripts" / "check_mlflow_status.py"
    fake.parent.mkdir()
    fake.write_text("import sys\nprint('args:' + ' '.join(sys.argv[1:]))\n")
    (tmp_path / "logs").mkdir()
    for store, flagged in (("team", True), ("service", False)):
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=bash_env(TRACKING_STORE=store),
            capture_output=True,
            text=True,
            check=True,
        )
        assert ("--team" in done.stdout) is flagged, store
    wait = [s.get("name") for s in PIPELINE_STEPS].index("Wait for the store")
    first_stage = next(i for i, s in enumerate(PIPELINE_STEPS) if "mlflow-loan-rm" in s.get("run", ""))
    assert wait < first_stage


def test_team_credentials_and_artifact_root_never_reach_pull_requests():
    env = JOBS["pipeline"]["env"]
    secrets = {
        name: SENTINEL
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    }
    variables = {"PIPELINE_TEAM_ARTIFACT_ROOT": "s3://bucket/mlflow"}
    for key in (*secrets, "TEAM_ARTIFACT_ROOT"):
        on_push = substitute(env[key], contexts("push", secrets=secrets, variables=variables))
        assert on_push in (SENTINEL, "s3://bucket/mlflow"), key
        assert substitute(env[key], contexts("pull_request", secrets=secrets, variables=variables)) == "", key


def test_only_the_throwaway_stores_artifacts_are_uploaded():
    upload = step("Upload the logged MLflow artifacts")
    assert upload["if"] == "env.TRACKING_STORE == 'service'"


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


# --- The pull-request comment workflow ------------------------------------------------------------


def test_the_comment_workflow_runs_after_the_pipeline_and_only_for_pull_requests():
    on = COMMENT_WORKFLOW["on"]
    assert set(on) == {"workflow_run"}  # never pull_request_target: it would hand PR code a write token
    assert on["workflow_run"] == {"workflows": ["pipeline"], "types": ["completed"]}
    (job,) = COMMENT_WORKFLOW["jobs"].values()
    condition = expressions_in(job["if"])[0] if "${{" in job["if"] else job["if"]
    assert condition == "github.event.workflow_run.event == 'pull_request'"


def test_only_the_comment_job_writes_to_pull_requests_and_only_deploy_to_packages():
    assert COMMENT_WORKFLOW["permissions"] == {}
    writes = {
        (workflow, name): {key for key, value in job.get("permissions", {}).items() if value == "write"}
        for workflow, jobs in ALL_JOBS.items()
        for name, job in jobs.items()
        if "write" in job.get("permissions", {}).values()
    }
    assert writes == {
        ("pr-comment.yml", "comment"): {"pull-requests"},
        ("pipeline.yml", "deploy"): {"packages"},
    }
    assert JOBS["pipeline"]["permissions"] == {"contents": "read", "actions": "read"}


def test_the_comment_workflow_never_checks_out_or_runs_the_pull_request_s_code():
    (job,) = COMMENT_WORKFLOW["jobs"].values()
    checkouts = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@")]
    for checkout in checkouts:
        options = checkout.get("with", {})
        assert "ref" not in options and "repository" not in options  # the default branch, nothing else
        assert options.get("persist-credentials") is False
    for entry in job["steps"]:
        for expression in expressions_in(entry):
            assert "head" not in expression and "pull_request" not in expression, expression
    downloads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact@")]
    assert [d["with"]["name"] for d in downloads] == ["pr-summary"]
    assert all("workflow_run.id" in d["with"]["run-id"] for d in downloads)


def test_the_pipeline_publishes_the_summary_the_comment_workflow_reads():
    upload = step("Upload the pull request's summary")
    assert upload["with"]["name"] == "pr-summary"
    keep = step("Keep the pull request's number")
    assert "pull_request.number" in keep["env"]["PR_NUMBER"]
    assert "pr-summary/number" in keep["run"] and "pr-summary/summary.md" in keep["run"]
    (job,) = COMMENT_WORKFLOW["jobs"].values()
    post = next(s for s in job["steps"] if "run" in s)
    assert "--summary pr-summary/summary.md --number-file pr-summary/number" in post["run"]


# --- The deploy job ---------------------------------------------------------------------------------

DEPLOY = JOBS["deploy"]
DEPLOY_STEPS = DEPLOY["steps"]


@pytest.mark.parametrize(
    ("event", "ref", "runs"),
    [
        ("push", "refs/heads/main", True),
        ("push", "refs/heads/feature", False),
        ("pull_request", "refs/pull/1/merge", False),
        ("workflow_dispatch", "refs/heads/main", False),
    ],
)
def test_deploy_runs_after_the_pipeline_on_pushes_to_main_only(event, ref, runs):
    assert DEPLOY["needs"] == "pipeline"
    assert DEPLOY["environment"] == "production"  # where a repository can require an approval
    context = contexts(event)
    context["github"]["ref"] = ref
    assert bool(evaluate(DEPLOY["if"], context)) is runs


def test_deploy_reads_the_team_store_only_on_pushes():
    expression = expressions_in(DEPLOY["env"]["TEAM_TRACKING_URI"])[0]
    secrets = {"MLFLOW_TRACKING_URI": "postgresql+psycopg2://team:pw@db/mlflow"}
    assert evaluate(expression, contexts("push", secrets=secrets)) == secrets["MLFLOW_TRACKING_URI"]
    assert evaluate(expression, contexts("pull_request", secrets=secrets)) in ("", None, False)


@pytest.mark.parametrize(("variable", "pushed"), [("", False), ("false", False), ("true", True)])
def test_the_image_is_pushed_only_when_the_repository_variable_says_so(variable, pushed):
    value = substitute(
        DEPLOY["env"]["PUSH_IMAGE"], contexts("push", variables={"PIPELINE_PUSH_IMAGE": variable})
    )
    condition = step("Push the serving image", DEPLOY_STEPS)["if"]
    assert evaluate(condition, {"env": {"DEPLOY_STORE": "team", "PUSH_IMAGE": value}}) is pushed
    assert evaluate(condition, {"env": {"DEPLOY_STORE": "none", "PUSH_IMAGE": value}}) is False


def test_every_docker_step_needs_the_team_store_and_the_token_goes_through_stdin():
    for entry in DEPLOY_STEPS:
        if "docker" in entry.get("run", ""):
            assert "env.DEPLOY_STORE == 'team'" in entry["if"], entry["name"]
    push = step("Push the serving image", DEPLOY_STEPS)
    assert "--password-stdin" in push["run"]
    assert "REGISTRY_TOKEN" not in push["run"].split("--password-stdin")[1]


def run_configure_step(tmp_path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    github_env = tmp_path / "github_env"
    github_env.touch()
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path)  # the step reads the model name from it
    done = subprocess.run(
        [
            "bash",
            "--noprofile",
            "--norc",
            "-eo",
            "pipefail",
            "-c",
            step("team's tracking store", DEPLOY_STEPS)["run"],
        ],
        cwd=tmp_path,
        env=bash_env(GITHUB_ENV=str(github_env), **env),
        capture_output=True,
        text=True,
        check=True,
    )
    return done, dict(line.split("=", 1) for line in github_env.read_text().splitlines())


def test_deploy_without_a_team_store_says_so_and_skips_the_rest(tmp_path):
    done, exported = run_configure_step(tmp_path, TEAM_TRACKING_URI="")
    assert exported == {"DEPLOY_STORE": "none"}
    assert "nothing to deploy" in done.stdout
    later = DEPLOY_STEPS[DEPLOY_STEPS.index(step("team's tracking store", DEPLOY_STEPS)) + 1 :]
    assert all("env.DEPLOY_STORE == 'team'" in entry["if"] for entry in later if "run" in entry)


def test_deploy_configure_step_masks_the_store_and_names_the_image(tmp_path):
    team = "postgresql+psycopg2://team:hunter2@db.internal/mlflow"
    done, exported = run_configure_step(
        tmp_path, TEAM_TRACKING_URI=team, GITHUB_REPOSITORY="Team/Loan-MLOps", GITHUB_SHA="abc123"
    )
    assert exported["MLFLOW_TRACKING_URI"] == team
    assert exported["DEPLOY_STORE"] == "team"
    assert exported["MODEL_NAME"] == load_config(PROJECT_ROOT / "params.yaml").registration.model_name
    assert exported["IMAGE"] == "ghcr.io/team/loan-mlops/loan-default-scoring:abc123"
    assert f"::add-mask::{team}" in done.stdout
    assert "hunter2" not in done.stdout.replace(f"::add-mask::{team}", "")


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
