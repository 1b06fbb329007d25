"""restore-baseline: main's published store restored into an empty database, compared against for real."""

from __future__ import annotations

import shutil

import pytest

from pipeline import pgtools
from pipeline.errors import ConfigError
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV
from pipeline.stages import baseline, register
from pipeline.tracking import keys, model_io, registry, runs
from tests.conftest import make_config, small_params, throwaway_database
from tests.integration.fakes import fake_optimize_run, fake_research_run

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def main_database():
    """A second throwaway database on the same server, standing for main's service container."""
    with throwaway_database("loan_mlops_main") as url:
        yield url


def publish_main(main_uri: str, tmp_path, monkeypatch) -> tuple:
    """Main's run: a champion registered, then its dump and artifacts laid out as the download does."""
    main_artifacts = tmp_path / "main-runner" / "mlartifacts"
    monkeypatch.setenv(TRACKING_URI_ENV, main_uri)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(main_artifacts))
    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    research_id = fake_research_run(config, {"dummy": 0.5})
    champion = register.run(config, optimize_run_id=fake_optimize_run(config, research_id))
    assert champion.decision == "promoted"
    download = tmp_path / "downloaded"
    (download / "mlflow-db").mkdir(parents=True)
    pgtools.run("pg_dump", main_uri, ["--format=custom", "--file=mlflow.dump"], cwd=download / "mlflow-db")
    (download / "mlflow-db" / "artifact_root.txt").write_text(f"{main_artifacts}\n")
    shutil.copytree(main_artifacts, download / "mlartifacts")
    shutil.rmtree(tmp_path / "main-runner")  # main's runner is gone: only the download is left
    return config, download, champion.version, research_id


def test_main_champion_is_restored_and_the_gate_compares_against_it(
    main_database, postgres_url, tmp_path, monkeypatch
):
    config, download, champion_version, research_id = publish_main(main_database, tmp_path, monkeypatch)
    monkeypatch.setenv(TRACKING_URI_ENV, postgres_url)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(tmp_path / "pr-runner" / "mlartifacts"))

    result = baseline.run(config, download, source_url="https://example.test/runs/1")
    assert result.restored and result.champion_version == champion_version
    assert result.relocated >= 3  # the experiment, the runs and the model version at least
    assert "baseline restored" in result.describe()

    # The restored champion loads from this runner's folder, not main's (which is gone).
    session = runs.connect(config)
    champion = registry.alias_version(session, config.registration.model_name, keys.ALIAS_CHAMPION)
    loaded = model_io.load_model(f"models:/{config.registration.model_name}@{keys.ALIAS_CHAMPION}")
    assert str(champion.version) == champion_version and loaded.threshold > 0
    experiment = session.client.get_experiment(session.experiment_id)
    assert str(tmp_path / "pr-runner") in experiment.artifact_location
    assert '"restored": true' in experiment.tags[keys.TAG_BASELINE]

    # The pull request's challenger is judged against main's champion, on the same test rows.
    challenger = register.run(
        config, optimize_run_id=fake_optimize_run(config, research_id, numeric_only=["age"])
    )
    assert challenger.outcome.champion_version == champion_version
    table = challenger.outcome.evidence.table.set_index("metric")
    assert table.loc["roc_auc", "champion"] > 0 and table.loc["roc_auc", "challenger"] > 0


def test_nothing_to_restore_is_said_plainly_and_succeeds(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv(TRACKING_URI_ENV, postgres_url)
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(tmp_path / "mlartifacts"))
    config = make_config(small_params())
    result = baseline.run(config, tmp_path / "not-downloaded")
    assert not result.restored
    assert "mlflow-db/mlflow.dump" in result.reason and "no successful run on main yet" in result.reason
    assert result.describe().startswith("no baseline: nothing to compare with")
    session = runs.connect(config)
    tag = session.client.get_experiment(session.experiment_id).tags[keys.TAG_BASELINE]
    assert '"restored": false' in tag


def test_a_non_postgres_store_is_refused(sqlite_store, tmp_path):
    with pytest.raises(ConfigError, match="restores into a PostgreSQL tracking store"):
        baseline.run(make_config(small_params()), tmp_path)
