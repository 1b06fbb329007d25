"""pipeline.tracking.runs: MLflow's standard run tags, which its UI shows as the run's user and source."""

from pipeline.tracking import keys
from pipeline.tracking.runs import source_tags

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_local_run_names_its_user_command_and_commit(no_ci):
    tags = source_tags(f"{COMMIT}-dirty", "optimize")
    assert tags == {
        keys.TAG_MLFLOW_USER: "writer",
        keys.TAG_SOURCE_NAME: "python -m pipeline optimize",
        keys.TAG_SOURCE_TYPE: keys.SOURCE_TYPE_LOCAL,
        keys.TAG_SOURCE_GIT_COMMIT: COMMIT,  # MLflow's tag holds the commit itself
    }
    assert keys.TAG_SOURCE_GIT_COMMIT not in source_tags("unknown", "research")


def test_a_ci_run_links_its_job_and_repository(no_ci, monkeypatch):
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/loan-mlops")
    monkeypatch.setenv("GITHUB_RUN_ID", "77")
    tags = source_tags(COMMIT, "register")
    assert tags[keys.TAG_SOURCE_TYPE] == keys.SOURCE_TYPE_JOB
    assert tags[keys.TAG_CI_RUN_URL] == "https://github.com/acme/loan-mlops/actions/runs/77"
    assert tags[keys.TAG_SOURCE_GIT_REPO] == "https://github.com/acme/loan-mlops"
