"""Stability monitoring end to end: a registered champion, new applicants, a monitor run in MLflow."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import cli, stability
from pipeline.queries import history, tables
from pipeline.stages import monitor, register
from tests.conftest import PROJECT_ROOT, make_config, small_params
from tests.integration.fakes import fake_optimize_run, fake_research_run

pytestmark = pytest.mark.integration

GERMAN = PROJECT_ROOT / "data" / "german_credit.csv"


@pytest.fixture
def champion(sqlite_store, tmp_path):
    """A registered champion (with its training profile), and the config file it was made with."""
    raw = small_params(register={"min_test_roc_auc": 0.5})
    raw["dataset"]["path"] = str(GERMAN)
    config = make_config(raw)
    research_id = fake_research_run(config, {"dummy": 0.5})
    version = register.run(config, optimize_run_id=fake_optimize_run(config, research_id)).version
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config, path, str(version)


def _write(tmp_path, frame: pd.DataFrame, name: str):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_same_population_is_stable_and_logged_against_the_version(champion, sqlite_store, tmp_path):
    config, _, version = champion
    applicants = pd.read_csv(GERMAN, dtype=str)
    result = monitor.run(config, _write(tmp_path, applicants, "new.csv"), output_dir=tmp_path / "out")
    assert result.exit_code == 0
    assert result.status == stability.STABLE and result.version == version
    assert result.summary.iloc[0]["name"] == stability.SCORE
    assert result.summary["index"].max() < 0.10  # the training part against the whole table
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"stability.csv", "bins.csv", "stability.png"}
    written = pd.read_csv(tmp_path / "out" / "stability.csv")
    assert written["name"].tolist() == result.summary["name"].tolist()

    run = MlflowClient(sqlite_store).get_run(result.run_id)
    assert run.data.tags["pipeline.stage"] == "monitor" and run.info.status == "FINISHED"
    assert run.data.tags["monitor.version"] == version
    assert run.data.tags["monitor.model_name"] == config.registration.model_name
    assert run.data.tags["monitor.status"] == "stable"
    assert run.data.metrics["score_psi"] == pytest.approx(result.summary.iloc[0]["index"])
    assert run.data.metrics["rows"] == len(applicants)
    assert "csi_duration_months" in run.data.metrics
    artifacts = {a.path for a in MlflowClient(sqlite_store).list_artifacts(result.run_id, "monitor")}
    assert {"monitor/stability.csv", "monitor/bins.csv", "monitor/stability.png"} <= artifacts


def test_shifted_file_exits_3_and_the_report_view_shows_the_latest_run(
    champion, sqlite_store, tmp_path, capsys
):
    config, config_path, version = champion
    applicants = pd.read_csv(GERMAN, dtype=str)
    shifted = applicants.assign(duration_months=(applicants["duration_months"].astype(int) * 3).astype(str))
    path = _write(tmp_path, shifted, "shifted.csv")
    capsys.readouterr()
    code = cli.main(["monitor", "--quiet", "--config", str(config_path), "--input", str(path)])
    out = capsys.readouterr().out
    assert code == monitor.EXIT_SHIFTED
    assert "population shifted" in out and "duration_months" in out

    store = tables.open_store(sqlite_store)
    try:
        latest = history.monitor_results(store, tables.experiment_id(store, config.tracking.experiment))
    finally:
        store.close()
    assert latest[["model_name", "version", "population"]].values.tolist() == [
        [config.registration.model_name, version, "shifted"]
    ]
    assert latest.iloc[0]["max_csi"] > 0.25


def test_fail_on_shift_off_exits_0(champion, tmp_path):
    _, config_path, _ = champion
    raw = yaml.safe_load(config_path.read_text())
    raw["monitor"] = {"fail_on_shift": False}
    config_path.write_text(yaml.safe_dump(raw))
    applicants = pd.read_csv(GERMAN, dtype=str)
    shifted = applicants.assign(purpose="spaceship")  # every applicant in the "other" bin
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "monitor", "--quiet", "--config", str(config_path),
         "--input", str(_write(tmp_path, shifted, "shifted.csv")), "--output-dir", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "population shifted" in done.stdout


def test_model_without_a_training_profile_is_one_line_exit_2(sqlite_store, tmp_path, capsys):
    from pipeline.data import load_dataset
    from pipeline.models import build_estimator
    from pipeline.tracking import model_io, runs

    raw = small_params()
    raw["dataset"]["path"] = str(GERMAN)
    config = make_config(raw)
    dataset = load_dataset(config)
    model = build_estimator("logistic_regression", {}, dataset.categorical, dataset.numeric, 0)
    model.fit(dataset.features, dataset.target)
    session = runs.connect(config)
    run = session.client.create_run(session.experiment_id)
    info = model_io.log_model(session, run.info.run_id, model, dataset.features, {"threshold": 0.3})
    # Logged as before monitoring existed: no training profile in the metadata.
    config_path = tmp_path / "params.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    path = _write(tmp_path, pd.read_csv(GERMAN, dtype=str).head(20), "new.csv")
    capsys.readouterr()
    code = cli.main(
        [
            "monitor",
            "--quiet",
            "--config",
            str(config_path),
            "--input",
            str(path),
            "--model",
            f"models:/{info.model_id}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "has no training profile" in err
