from pipeline.settings import redact, redact_uri


def test_passwords_are_masked():
    uri = "postgresql+psycopg2://mlflow:p%40ss@db.example:5432/mlflow"
    assert redact_uri(uri) == "postgresql+psycopg2://mlflow:***@db.example:5432/mlflow"
    assert "p%40ss" not in redact(f"failed to reach {uri} twice")
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
