"""The published report: papermill runs the notebook, nbconvert renders self-contained HTML."""

import re
from pathlib import Path

import nbformat
import pytest

from pipeline.settings import TRACKING_URI_ENV
from pipeline.stages import report
from tests.browser import run_check
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
    # The decision first, MLflow's tables last.
    verdict = html.index("Model check: rejected")
    assert (
        verdict < html.index("What each threshold does") < html.index("Diagnostics") < html.index("Appendix")
    )
    assert (
        f"<strong>Rejected</strong>: version {results_store.challenger_version} stays challenger; "
        f"version {results_store.champion_version} remains champion." in html
    )
    assert "optimize-3" in html and "logistic_regression" in html
    assert html.count("data:image/png;base64,") >= 3  # diagnostics, score distributions, leaderboard
    assert "<th>" in html and not re.search(r"<td>(?:nan|NaN|None|NaT)</td>", html)  # tables for people
    for heading in ("Scorecard", "Reason codes of the champion", "Stability monitoring"):
        assert f">{heading}<" in html, heading  # the sections exist, each saying when it has nothing yet
    assert "No monitor run yet" in html
    assert "<script src=" not in html  # nothing fetched from a CDN
    assert "def " not in html and "sql_tables.open_store" not in html  # code cells hidden

    executed = nbformat.read(result.notebook, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    # The URI reaches the kernel through the environment, not as an injected parameter.
    assert "sqlite" not in injected.source and "tracking_uri" not in injected.source
    assert injected.source.count(" = ") == 5


def test_the_notebook_opened_by_hand_finds_the_configured_store(results_store, tmp_path, monkeypatch):
    """Jupyter, no environment variable: the notebook falls back to the store params.yaml configures."""
    import papermill
    import yaml

    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    raw = small_params()
    raw["dataset"]["path"] = str(PROJECT_ROOT / raw["dataset"]["path"])
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    # The default store of a project: mlflow.db in its folder.
    (project / "mlflow.db").write_bytes(Path(results_store.uri.removeprefix("sqlite:///")).read_bytes())
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / "results.ipynb"),
        str(executed),
        cwd=str(project / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    notebook = nbformat.read(executed, as_version=4)
    assert [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"] == []
    text = "".join(str(o.get("data", {})) for c in notebook.cells for o in c.get("outputs", []))
    assert "Model check: rejected" in text


LAYOUT_CHECK = """
window.addEventListener("load", () => {
  const page = document.documentElement;
  const images = [...document.images];
  const verdict = [...document.querySelectorAll("h1")].find((h) => h.textContent.startsWith("Model check"));
  document.body.dataset.check = JSON.stringify({
    scrollWidth: page.scrollWidth,
    clientWidth: page.clientWidth,
    images: images.length,
    broken: images.filter((image) => !(image.complete && image.naturalWidth > 0)).length,
    verdictBottom: verdict ? verdict.getBoundingClientRect().bottom : null,
    screenHeight: window.innerHeight,
  });
});
"""


@pytest.mark.slow
def test_the_page_reads_well_in_a_real_browser(results_store, tmp_path, monkeypatch):
    """Chromium at 1,280 pixels: nothing wider than the window, every image loaded, verdict on screen one."""
    monkeypatch.setenv(TRACKING_URI_ENV, results_store.uri)
    page = report.run(make_config(small_params()), output_dir=tmp_path).html
    layout = run_check(page, LAYOUT_CHECK, width=1280, height=800)
    assert layout["clientWidth"] <= 1280
    assert layout["scrollWidth"] <= layout["clientWidth"], layout  # no horizontal overflow
    assert layout["images"] >= 3 and layout["broken"] == 0, layout
    assert layout["verdictBottom"] is not None and layout["verdictBottom"] <= layout["screenHeight"], layout
