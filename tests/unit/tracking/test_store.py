"""pipeline.tracking.store: SQLAlchemy URLs, and cross-process locks on SQLite (one lock file per key,
exclusive while held)."""

import threading

import pytest

from pipeline.tracking.store import cross_process_lock, sqlalchemy_url, sqlite_lock_path


def test_every_key_has_its_own_lock_file(tmp_path):
    database = tmp_path / "mlflow.db"
    keys = ["mlflow-registry:loan-default", "mlflow-registry:loan default", "mlflow-store-setup"]
    paths = [sqlite_lock_path(database, key) for key in keys]
    assert len(set(paths)) == len(keys)
    assert all(p.parent == tmp_path and p.name.startswith("mlflow.db.") for p in paths)
    assert "/" not in sqlite_lock_path(database, "mlflow-registry:a/../../b").name


def _enters_while_held(uri: str, held_key: str, other_key: str, wait_seconds: float) -> bool:
    """Whether a second thread gets ``other_key`` within ``wait_seconds`` while ``held_key`` is held."""
    entered = threading.Event()

    def take_other() -> None:
        with cross_process_lock(uri, other_key):
            entered.set()

    with cross_process_lock(uri, held_key) as locked:
        assert locked
        thread = threading.Thread(target=take_other)
        thread.start()
        entered_while_held = entered.wait(timeout=wait_seconds)
    thread.join(timeout=10)
    assert entered.is_set()  # it always gets the lock once the holder lets go
    return entered_while_held


def test_same_key_waits_and_another_key_does_not(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not _enters_while_held(uri, "mlflow-registry:a", "mlflow-registry:a", wait_seconds=0.5)
    # Another key is free: the wait ends as soon as the thread is in (the bound only guards a hang).
    assert _enters_while_held(uri, "mlflow-registry:a", "mlflow-registry:b", wait_seconds=30)


def test_a_remote_server_offers_no_lock():
    with cross_process_lock("http://mlflow.example:5000", "mlflow-registry:a") as locked:
        assert locked is False


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_sqlalchemy_url(uri, expected):
    assert sqlalchemy_url(uri) == expected


def test_what_a_store_is():
    from pipeline.tracking.store import is_database, is_local_location, is_server

    for uri in (
        "http://mlflow:5000",
        "https://mlflow.example.com",
        "databricks",
        "databricks://profile",
        "azureml://x",
    ):
        assert is_server(uri) and not is_database(uri), uri
    assert not is_server("postgresql+psycopg2://u@h/db") and not is_server("sqlite:///x.db")
    assert is_local_location("/runner/work/mlartifacts") and is_local_location("file:///tmp/a")
    assert not is_local_location("s3://bucket/mlflow") and not is_local_location("mlflow-artifacts:/1")


def test_ui_links_open_the_model_training_view_without_credentials():
    from pipeline.tracking.store import ui_url

    assert ui_url("http://alice:s3cret@127.0.0.1:5000/", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert ui_url("https://mlflow.example.com/prefix", "3") == (
        "https://mlflow.example.com/prefix/#/experiments/3?workflowType=machine_learning"
    )
    assert ui_url("postgresql+psycopg2://u@h/db", "3") is None and ui_url("databricks", "3") is None


def refused(status: int, endpoint: str = "runs/create"):
    from mlflow.exceptions import MlflowException

    code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}[status]
    return MlflowException(
        f"API request to endpoint /api/2.0/mlflow/{endpoint} failed with error code {status} != 200. "
        "Response body: 'Permission denied'",
        error_code=code,
    )


@pytest.fixture
def as_user(monkeypatch):
    from pipeline.settings import TRACKING_PASSWORD_ENV, TRACKING_TOKEN_ENV, TRACKING_USERNAME_ENV

    def use(user: str | None = None, password: str | None = None, token: str | None = None) -> None:
        for name, value in (
            (TRACKING_USERNAME_ENV, user),
            (TRACKING_PASSWORD_ENV, password),
            (TRACKING_TOKEN_ENV, token),
        ):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    return use


def test_a_refused_call_is_one_line_naming_the_user_and_the_call(as_user):
    from pipeline.errors import AuthenticationFailedError, PermissionDeniedError
    from pipeline.tracking.store import access_error, store_error

    server = "http://bob:pw-in-uri@mlflow:5000"
    as_user("reader", "Sup3r-secret")
    denied = access_error(refused(403), server, run_id="r1", marked=True)
    assert isinstance(denied, PermissionDeniedError)
    assert str(denied) == (
        "user 'reader' may not call runs/create on http://bob:***@mlflow:5000; ask its admin for the "
        "permission; run r1 marked FAILED"
    )
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = refused(401)
    failed = store_error(wrapped, server)
    assert isinstance(failed, AuthenticationFailedError)
    assert str(failed) == "http://bob:***@mlflow:5000 refused the credentials of user 'reader'"
    assert "Sup3r-secret" not in str(denied) + str(failed)
    as_user(token="dapi-123456")
    assert "the token in MLFLOW_TRACKING_TOKEN" in str(access_error(refused(401), server))
    as_user()
    assert "asks for credentials: set MLFLOW_TRACKING_USERNAME" in str(access_error(refused(401), server))
    assert access_error(RuntimeError("Permission denied on a local file"), server) is None
