"""Shared fixtures: configs, throwaway tracking stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import PipelineConfig, config_from_mapping
from pipeline.settings import ARTIFACT_ROOT_ENV, REQUIRE_POSTGRES_ENV, TRACKING_URI_ENV, TRACKING_USERNAME_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_DSN = os.environ.get("PIPELINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


# Session fixtures that are dear to build, and the test files that use them. Under pytest-xdist
# (`make test` runs two workers with `--dist loadgroup`) each group's files go to one worker, so each
# fixture is built once. xdist's own `xdist_group` marks do not reach its scheduler under pytest 9.2
# (it renames the node id's attribute that xdist rewrites), so the scheduler below groups by file.
SHARED_FIXTURE_FILES = {
    "server_pipeline": ("tests/integration/test_mlflow_ui.py", "tests/integration/test_server.py"),
    "champion_store": (
        "tests/integration/test_serving.py",
        "tests/integration/stages/test_smoke_test.py",
        "tests/integration/tracking/test_scorer.py",
    ),
    "results_store": (
        "tests/integration/stages/test_results.py",
        "tests/integration/stages/test_report.py",
        "tests/integration/tracking/test_snapshot.py",
    ),
}
FILE_GROUPS = {path: group for group, paths in SHARED_FIXTURE_FILES.items() for path in paths}


def pytest_collection_modifyitems(items):
    """A test using a shared fixture from a file not listed with it would build the fixture again."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        for fixture in SHARED_FIXTURE_FILES.keys() & set(getattr(item, "fixturenames", ())):
            if FILE_GROUPS.get(path) != fixture:
                raise pytest.UsageError(
                    f"{path} uses {fixture}: list it in SHARED_FIXTURE_FILES (tests/conftest.py)"
                )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: the files sharing a fixture are one unit of work, every other test its own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return FILE_GROUPS.get(nodeid.split("::", 1)[0], nodeid)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(autouse=True)
def drop_command_log_handlers():
    """Commands run in-process point the root logger at that test's captured stderr: undo it after."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in before:  # basicConfig's, not pytest's
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def no_ci(monkeypatch):
    """No GitHub Actions variables, and the tracking server's user ``writer``."""
    for name in (
        "GITHUB_SERVER_URL",
        "GITHUB_REPOSITORY",
        "GITHUB_RUN_ID",
        "GITHUB_RUN_ATTEMPT",
        "GITHUB_ACTOR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(TRACKING_USERNAME_ENV, "writer")


def project_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def small_params(**overrides) -> dict:
    """The shipped params with a small, fast portfolio and budgets."""
    raw = project_params()
    raw["research"]["cv_folds"] = 3
    raw["research"]["use"] = ["dummy_prior", "logistic_regression", "decision_tree", "naive_bayes"]
    raw["optimize"].update({"top_k": 2, "cv_folds": 3, "n_trials": 3, "permutation_repeats": 1})
    raw["register"]["bootstrap_samples"] = 200
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    return raw


def german_like(n_rows: int, target: str = "default") -> pd.DataFrame:
    """A small seeded loan-like table: one numeric and one categorical column and a 1-in-3 target."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "amount": rng.normal(3000, 500, n_rows),
            "purpose": rng.choice(["car", "tv", "repairs"], n_rows),
            target: (np.arange(n_rows) % 3 == 0).astype(int),
        }
    )


def make_config(raw: dict, root: Path = PROJECT_ROOT) -> PipelineConfig:
    return config_from_mapping(raw, root=root)


@pytest.fixture
def small_config() -> PipelineConfig:
    return make_config(small_params())


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """An empty SQLite store with MLflow's schema, made once: MLflow's migrations take seconds per store."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("migrated-sqlite")
    path = folder / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{path}", str(folder / "mlruns")).engine.dispose()
    return path


@pytest.fixture
def sqlite_store(migrated_sqlite, tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store (a copy of ``migrated_sqlite``) and artifact folder for one test."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(migrated_sqlite, path)
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(  # where a new store would put the Default experiment: beside itself
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(tmp_path / "mlruns/0"),),
        )
    uri = f"sqlite:///{path}"
    monkeypatch.setenv(TRACKING_URI_ENV, uri)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(tmp_path / "artifacts"))
    return uri


def _postgres_admin():
    import psycopg2

    connection = psycopg2.connect(POSTGRES_ADMIN_DSN, connect_timeout=3)
    connection.autocommit = True
    return connection


@contextmanager
def throwaway_database(prefix: str = "loan_mlops_test") -> Iterator[str]:
    """Create a database on the local server and yield its URL; drop it afterwards.

    Skips when no server answers, unless PIPELINE_REQUIRE_POSTGRES=1 (as in CI).
    """
    try:
        admin = _postgres_admin()
    except Exception as error:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"PostgreSQL required but unreachable: {error}")
        pytest.skip(f"PostgreSQL not reachable: {error}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture
def postgres_url():
    """A throwaway database on the local PostgreSQL server, for one test."""
    with throwaway_database() as url:
        yield url


@pytest.fixture
def postgres_store(postgres_url, tmp_path, monkeypatch) -> str:
    monkeypatch.setenv(TRACKING_URI_ENV, postgres_url)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(tmp_path / "artifacts"))
    return postgres_url


@pytest.fixture
def pg_cluster():
    """A started throwaway PostgreSQL cluster (tests/pgcluster.py) the test may stop and restart."""
    from tests.pgcluster import ClusterUnavailable, PgCluster

    try:
        cluster = PgCluster().init()
        cluster.start()
    except (ClusterUnavailable, RuntimeError) as error:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"cannot start a throwaway PostgreSQL cluster: {error}")
        pytest.skip(f"cannot start a throwaway PostgreSQL cluster: {error}")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def results_store(tmp_path_factory):
    """A SQLite store with a real research run and faked stages 2-3 (tests/integration/fake_store.py),
    built once for the results and notebook tests; they point MLFLOW_TRACKING_URI at ``.uri``."""
    from tests.integration.fake_store import populate

    folder = tmp_path_factory.mktemp("results_store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRACKING_URI_ENV, uri)
        patch.setenv(ARTIFACT_ROOT_ENV, str(folder / "artifacts"))
        return populate(make_config(small_params()), uri)


@dataclass(frozen=True)
class ChampionStore:
    """A store whose registered model has a champion (version 1); see the ``champion_store`` fixture."""

    uri: str
    folder: Path
    config: PipelineConfig
    model_name: str

    @property
    def version_uri(self) -> str:
        return f"models:/{self.model_name}/1"


@pytest.fixture(scope="session")
def champion_store(tmp_path_factory) -> ChampionStore:
    """A SQLite store where version 1 of the model is champion and a weaker version 2 the rejected
    challenger (faked stages 1-2, the real register), built once for the scoring and serving tests.
    Tests must not move its aliases."""
    from pipeline.stages import register
    from tests.integration.fakes import weak_then_strong

    folder = tmp_path_factory.mktemp("champion_store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRACKING_URI_ENV, uri)
        patch.setenv(ARTIFACT_ROOT_ENV, str(folder / "artifacts"))
        weak, strong = weak_then_strong(config)
        decisions = [register.run(config, optimize_run_id=run_id).decision for run_id in (strong, weak)]
    assert decisions == ["promoted", "rejected"]
    return ChampionStore(uri, folder, config, config.registration.model_name)


@pytest.fixture(scope="session")
def champion_server(champion_store, tmp_path_factory):
    """Version 1 of the champion store behind a real scoring server for the whole session; its URL."""
    from pipeline import serving

    log = tmp_path_factory.mktemp("serving") / "server.log"
    with serving.scoring_server(champion_store.version_uri, champion_store.uri, 240, log) as (url, _):
        yield url
    assert serving.request(f"{url}/ping", timeout=5).status == 0, "the server outlived its block"


@pytest.fixture
def use_champion_store(champion_store, monkeypatch) -> ChampionStore:
    """Point this test's MLflow (the environment and the client's global URI) at the champion store."""
    import mlflow

    monkeypatch.setenv(TRACKING_URI_ENV, champion_store.uri)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(champion_store.folder / "artifacts"))
    mlflow.set_tracking_uri(champion_store.uri)
    return champion_store


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory):
    """A real ``mlflow server`` with basic auth, a PostgreSQL backend store in a throwaway database and
    proxied artifacts (tests/integration/servers.py), shared by the session; users ``writer`` (creates
    what it uses) and ``reader`` (may read everything, change nothing). Tests keep to their own
    experiment and registered model names."""
    from tests.integration.servers import READER, WRITER, start_server

    with throwaway_database("loan_mlops_server") as backend:
        server = start_server(backend, tmp_path_factory.mktemp("mlflow-server"), auth=True)
        try:
            server.add_user(WRITER)
            server.add_user(READER)
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def server_pipeline(auth_server, tmp_path_factory):
    """Every command of the pipeline run once through ``auth_server`` as its writer (in order, each
    in its own process, with every process command line on the machine recorded meanwhile)."""
    from tests.integration.servers import serve_pipeline

    return serve_pipeline(auth_server, tmp_path_factory.mktemp("server-pipeline"))
