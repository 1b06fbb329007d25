"""The published report: papermill runs the notebook, nbconvert renders self-contained HTML."""

import re

import nbformat
import pytest

from pipeline.settings import TRACKING_URI_ENV
from pipeline.stages import report
from tests.conftest import PROJECT_ROOT, make_config, small_params

pytestmark = pytest.mark.integration


def test_notebook_has_a_parameters_cell_without_the_uri():
    source = nbformat.read(PROJECT_ROOT / "notebooks" / "results.ipynb", as_version=4)
    tagged = [cell for cell in source.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("experiment_name", "model_name", "output_dir"):
        assert re.search(rf"^{name} = ", tagged[0].source, re.MULTILINE)
    assert "tracking_uri =" not in tagged[0].source
    assert all(not cell.get("outputs") for cell in source.cells if cell.cell_type == "code")


def test_report_holds_leaderboard_and_champion(results_store, tmp_path, monkeypatch):
    monkeypatch.setenv(TRACKING_URI_ENV, results_store.uri)
    result = report.run(make_config(small_params()), output_dir=tmp_path)
    html = result.html.read_text()
    assert "Leaderboard" in html and "optimize-3" in html and "logistic_regression" in html
    assert f"Champion: <code>loan-default-classifier</code> version {results_store.champion_version}" in html
    for heading in ("Scorecard", "Reason codes of the champion", "Stability monitoring"):
        assert f">{heading}<" in html, heading  # the sections exist, each saying when it has nothing yet
    assert "No monitor run yet" in html
    assert html.count("data:image/png;base64,") >= 3  # leaderboard bars, ROC curves, hyperparameters
    assert "<script src=" not in html  # nothing fetched from a CDN
    assert "def " not in html and "sql_tables.open_store" not in html  # code cells hidden

    executed = nbformat.read(result.notebook, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    # The URI reaches the kernel through the environment, not as an injected parameter.
    assert "sqlite" not in injected.source and "tracking_uri" not in injected.source
    assert injected.source.count(" = ") == 3
