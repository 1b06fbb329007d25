"""Batch scoring with a registered model: output, threshold semantics, and input checks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import cli, reasons
from pipeline.stages import predict, register
from pipeline.tracking import model_io
from tests.conftest import PROJECT_ROOT, make_config, small_params
from tests.integration.fakes import fake_optimize_run, fake_research_run

CHAMPION = "models:/loan-default-classifier@champion"
GERMAN = PROJECT_ROOT / "data" / "german_credit.csv"


@pytest.fixture
def champion(sqlite_store, tmp_path):
    """A registered champion, the config file it was made with, and a few applicants."""
    raw = small_params(register={"min_test_roc_auc": 0.5})
    config = make_config(raw)
    research_id = fake_research_run(config, {"dummy": 0.5})
    result = register.run(config, optimize_run_id=fake_optimize_run(config, research_id))
    assert result.decision == "promoted"
    raw["dataset"]["path"] = str(GERMAN)
    config_path = tmp_path / "params.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    applicants = pd.read_csv(GERMAN, dtype=str).head(12)
    return config, config_path, applicants


def _write(tmp_path, frame: pd.DataFrame, name: str = "applicants.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.integration
def test_scores_rows_at_the_recorded_threshold(champion, tmp_path, caplog):
    config, _, applicants = champion
    output = tmp_path / "out" / "scored.csv"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        result = predict.run(config, CHAMPION, _write(tmp_path, applicants), output)
    scored = pd.read_csv(output, dtype={"decision": str})
    reason_columns = [f"reason_{i}_{part}" for i in range(1, 5) for part in ("code", "text")]
    assert list(scored.columns) == [
        *applicants.columns,
        "default_probability",
        "decision",
        "threshold",
        *reason_columns,
        "reason_method",
    ]
    assert set(scored["reason_method"]) == {reasons.METHOD_SUBSTITUTION} == {result.reason_method}
    assert len(scored) == result.rows == 12
    model = model_io.load_model(CHAMPION)
    features = applicants.drop(columns=["default"]).astype(
        {c: float for c in ("duration_months", "credit_amount", "age")}
    )
    expected = model.estimator.predict_proba(features)[:, 1]
    np.testing.assert_allclose(scored["default_probability"], expected, rtol=1e-9)
    threshold = model_io.model_threshold(CHAMPION)
    assert result.threshold == threshold
    assert (scored["decision"] == np.where(expected >= threshold, "reject", "accept")).all()
    assert (scored["threshold"] == threshold).all()
    assert result.rejected == int((scored["decision"] == "reject").sum())
    # The target column is not a model input: ignored, and said so.
    assert result.check.extra_columns == ["default"]
    assert "ignoring 1 input column(s) the model does not use: default" in caplog.text
    # The input columns are written back unchanged.
    pd.testing.assert_frame_equal(scored[applicants.columns].astype(str), applicants.astype(str))


@pytest.mark.integration
def test_unseen_categories_are_scored_and_counted(champion, tmp_path, caplog):
    config, _, applicants = champion
    changed = applicants.copy()
    changed.loc[[0, 3], "purpose"] = "spaceship"
    changed.loc[5, "housing"] = "castle"
    output = tmp_path / "scored.csv"
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = predict.run(config, CHAMPION, _write(tmp_path, changed), output)
    assert result.check.unseen_categories == {"purpose": 2, "housing": 1}
    assert "3 value(s) in 2 column(s) were not seen in training" in caplog.text
    scored = pd.read_csv(output)
    assert scored["default_probability"].between(0, 1).all()
    assert len(scored) == 12


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["age"]), "lacks column(s) the model needs: age"),
        (lambda f: f.assign(age=["abc", *f["age"][1:]]), "column 'age' must be numeric"),
        (lambda f: f.head(0), "no rows to score"),
    ],
)
def test_bad_input_exits_2_with_one_line(champion, tmp_path, capsys, change, message):
    _, config_path, applicants = champion
    output = tmp_path / "scored.csv"
    path = _write(tmp_path, change(applicants))
    capsys.readouterr()  # drop what the fixture printed
    code = cli.main(
        ["predict", "--quiet", "--config", str(config_path), "--model", CHAMPION, "--input", str(path),
         "--output", str(output)]
    )  # fmt: skip
    stderr = capsys.readouterr().err.strip()
    assert code == 2
    assert len(stderr.splitlines()) == 1
    assert message in stderr
    assert not output.exists()


@pytest.mark.integration
def test_cli_subprocess_scores_and_refuses_empty_file(champion, tmp_path):
    _, config_path, applicants = champion
    output = tmp_path / "scored.csv"
    command = [sys.executable, "-m", "pipeline", "predict", "--quiet", "--config", str(config_path)]
    done = subprocess.run(
        [*command, "--model", CHAMPION, "--input", str(_write(tmp_path, applicants.head(5))),
         "--output", str(output)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "scored 5 applicants" in done.stdout
    scored = pd.read_csv(output)
    assert set(scored["decision"]) <= {"accept", "reject"}
    assert len(scored) == 5

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    failed = subprocess.run(
        [*command, "--model", CHAMPION, "--input", str(empty), "--output", str(tmp_path / "x.csv")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert failed.returncode == 2
    assert failed.stderr.strip() == "data error: input file empty.csv is empty"


@pytest.mark.integration
@pytest.mark.parametrize("family", ["woe_scorecard", "logistic_regression"])
def test_reasons_are_those_the_served_model_gives(sqlite_store, tmp_path, family):
    """predict's reasons are exactly what MLflow's own loader answers with the logged model: exact
    points for a scorecard, substitution otherwise."""
    import mlflow.pyfunc

    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    research_id = fake_research_run(config, {"dummy": 0.5})
    optimize_id = fake_optimize_run(config, research_id, family=family)
    assert register.run(config, optimize_run_id=optimize_id).decision == "promoted"
    applicants = pd.read_csv(GERMAN, dtype=str).sample(40, random_state=3)
    applicants.loc[applicants.index[:2], "purpose"] = "spaceship"  # unseen: no error, WoE 0
    output = tmp_path / "scored.csv"
    result = predict.run(config, CHAMPION, _write(tmp_path, applicants), output)
    scored = pd.read_csv(output, dtype=str, keep_default_na=False)

    raw = pd.read_csv(GERMAN).loc[applicants.index]  # as users hold the table: numbers typed
    raw.loc[raw.index[:2], "purpose"] = "spaceship"
    served = mlflow.pyfunc.load_model(CHAMPION).predict(raw)
    columns = [c for c in served.columns if c.startswith("reason_")]
    assert len(columns) == 2 * config.reason_codes.count + 1
    pd.testing.assert_frame_equal(
        scored[columns], served[columns].reset_index(drop=True).astype(str), check_dtype=False
    )
    expected = reasons.METHOD_SCORECARD if family == "woe_scorecard" else reasons.METHOD_SUBSTITUTION
    assert result.reason_method == expected
    rejected = scored[scored["decision"] == "reject"]
    assert (rejected["reason_1_code"] != "").all()  # every rejected applicant gets a first reason
    known = {reasons.code_for(c) for c in applicants.columns}
    assert set(scored["reason_1_code"]) - {""} <= known
