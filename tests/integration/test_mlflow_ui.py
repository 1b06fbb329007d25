"""MLflow 3's UI on a finished pipeline, looked at the way a user would: headless Chromium opens the
experiment through the link the results summary publishes, the logged model's page and a run's page,
and finds the runs, the final evaluation's metrics, the registered version, the user and the source.

The pipeline ran through the basic-auth server of ``server_pipeline``; the browser looks through a
second server without auth on the same database and artifacts (a page's own requests cannot carry
credentials from its URL). Skips without a Chromium on a laptop, never in CI (``CI=true``), where
``.ci/run`` installs Debian's ``chromium`` and GitHub's runner image has Google Chrome.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import keys
from pipeline.tracking.store import ui_url
from tests.browser import FLAGS
from tests.integration.servers import ADMIN, start_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.server,
    pytest.mark.browser,
    pytest.mark.slow,
]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Virtual time the page's scripts may run before the DOM is dumped (requests pause the clock).
SCRIPT_BUDGET_MS = 20_000
ATTEMPTS = 3


def find_browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no browser ({', '.join(BROWSERS)}) in CI: .ci/run installs Debian's chromium")
        pytest.skip("no Chromium or Chrome installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def ui(server_pipeline, tmp_path_factory):
    """``(browser, the UI server's URL)``; the UI server reads what ``server_pipeline`` left."""
    browser = find_browser()
    server = start_server(
        server_pipeline.server.backend_uri,
        tmp_path_factory.mktemp("ui-server"),
        artifacts=server_pipeline.server.artifacts,
    )
    try:
        yield browser, server.url
    finally:
        server.stop()


def page_text(browser: str, url: str, expected: str) -> str:
    """The visible text of ``url`` once its scripts ran; tried again while ``expected`` is not in it
    (a busy machine may answer the page's requests slowly)."""
    text = ""
    for _ in range(ATTEMPTS):
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run(
                [
                    browser,
                    *FLAGS,
                    f"--user-data-dir={profile}",
                    f"--virtual-time-budget={SCRIPT_BUDGET_MS}",
                    "--dump-dom",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
        html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&amp;", "&")
        if expected in text:
            break
    return text


def test_the_published_link_opens_the_experiment_in_the_model_training_view(ui, server_pipeline):
    browser, url = ui
    summary = (server_pipeline.reports / "summary.md").read_text()
    (link,) = re.findall(r"\[Open the experiment in MLflow's UI\]\(([^)]+)\)", summary)
    assert link.startswith(server_pipeline.server.url) and link.endswith("?workflowType=machine_learning")
    runs = server_pipeline.stage_runs()
    names = [runs[stage].info.run_name for stage in ("research", "optimize", "register")]
    text = page_text(browser, link.replace(server_pipeline.server.url, url), names[-1])
    for name in names:
        assert name in text, text[:3000]
    assert "Model registry" in text  # the model-training side bar
    assert "Observability" not in text  # ... not the GenAI one


def test_the_logged_model_page_shows_the_test_metrics_and_the_registered_version(ui, server_pipeline):
    browser, url = ui
    optimize = server_pipeline.stage_runs()[keys.STAGE_OPTIMIZE]
    model_id = optimize.data.tags[keys.TAG_MODEL_ID]
    with server_pipeline.server.as_user(ADMIN):
        metrics = MlflowClient(server_pipeline.server.url).get_logged_model(model_id).metrics
    page = (
        f"{url}/#/experiments/{optimize.info.experiment_id}/models/{model_id}?workflowType=machine_learning"
    )
    version = f"{server_pipeline.model_name} v1"
    text = page_text(browser, page, version)
    assert f"Metrics ({len(metrics)})" in text, text[:3000]
    assert keys.METRIC_TEST_ROC_AUC in text and keys.METRIC_TEST_EXPECTED_COST in text
    assert "german_credit-test" in text  # measured on the test part
    assert version in text  # "Model versions": registered, not "Not registered"


def test_a_run_page_shows_who_ran_it_and_from_which_command(ui, server_pipeline):
    browser, url = ui
    register = server_pipeline.stage_runs()[keys.STAGE_REGISTER]
    page = ui_url(url, register.info.experiment_id, register.info.run_id)
    text = page_text(browser, page, "python -m pipeline register")
    assert "Created by writer" in text, text[:3000]
    assert "Source python -m pipeline register" in text
