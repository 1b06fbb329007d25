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
