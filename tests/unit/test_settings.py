from pipeline.settings import redact, redact_uri


def test_passwords_are_masked():
    uri = "postgresql+psycopg2://mlflow:p%40ss@db.example:5432/mlflow"
    assert redact_uri(uri) == "postgresql+psycopg2://mlflow:***@db.example:5432/mlflow"
    assert "p%40ss" not in redact(f"failed to reach {uri} twice")
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_the_tracking_servers_password_and_token_are_masked_wherever_they_appear(monkeypatch):
    from pipeline.settings import TRACKING_PASSWORD_ENV, TRACKING_TOKEN_ENV

    monkeypatch.setenv(TRACKING_PASSWORD_ENV, "Wr1ter-pass")
    monkeypatch.setenv(TRACKING_TOKEN_ENV, "dapi-0123456789")
    text = redact(
        "login Wr1ter-pass failed; header Authorization: Bearer dapi-0123456789 and token dapi-0123456789"
    )
    assert "Wr1ter-pass" not in text and "dapi-0123456789" not in text
    assert redact("Authorization: Basic d3JpdGVyOnB3") == "Authorization: Basic ***"
    assert redact("use basic authentication") == "use basic authentication"  # ordinary words stay


def test_a_short_secret_is_not_masked_inside_words(monkeypatch):
    from pipeline.settings import TRACKING_PASSWORD_ENV

    monkeypatch.setenv(TRACKING_PASSWORD_ENV, "pw")
    assert redact("the pwd folder") == "the pwd folder"


def test_ci_run_url_and_the_user_runs_record(no_ci, monkeypatch):
    from pipeline.settings import TRACKING_USERNAME_ENV, ci_repository_url, ci_run_url, run_user

    monkeypatch.delenv(TRACKING_USERNAME_ENV)
    assert ci_run_url() is None and ci_repository_url() is None
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/loan-mlops")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    assert ci_run_url() == "https://github.com/acme/loan-mlops/actions/runs/42"
    monkeypatch.setenv("GITHUB_RUN_ATTEMPT", "2")
    assert ci_run_url() == "https://github.com/acme/loan-mlops/actions/runs/42/attempts/2"
    assert ci_repository_url() == "https://github.com/acme/loan-mlops"
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    assert run_user() == "octocat"
    monkeypatch.setenv(TRACKING_USERNAME_ENV, "writer")
    assert run_user() == "writer"  # who the tracking server knows wins
