"""``python -m pipeline report``: execute the results notebook and publish it as HTML.

papermill runs ``notebooks/results.ipynb`` (parameters: experiment, registered model name,
output directory) into ``reports/results.ipynb``; nbconvert renders it, code hidden and
images embedded, into a self-contained ``reports/results.html``. The tracking URI reaches
the kernel only through the environment, never as a parameter that would be written into
the notebook; every file is redacted once more and written atomically.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.files import write_text_atomic
from pipeline.settings import TRACKING_URI_ENV, redact, redact_uri, temporary_environment, tracking_uri

logger = logging.getLogger(__name__)

KERNEL_NAME = "python3"
NOTEBOOK_NAME = "results.ipynb"
HTML_NAME = "results.html"
# The page needs no JavaScript (outputs are HTML tables and inline PNGs); dropping the CDN
# scripts nbconvert's template adds keeps it self-contained and readable offline.
_EXTERNAL_SCRIPT = re.compile(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>', re.IGNORECASE)


@dataclass(frozen=True)
class NotebookResult:
    notebook: Path
    html: Path
    seconds: float

    def describe(self) -> str:
        return f"report executed in {self.seconds:.1f} s: {self.notebook} and {self.html}"


def parameters(config: PipelineConfig, output_dir: Path) -> dict[str, str | None]:
    """What papermill injects: nothing secret (the tracking URI stays in the environment)."""
    return {
        "experiment_name": config.tracking.experiment,
        "model_name": config.registration.model_name,
        "output_dir": str(output_dir),
        # The same file and profile as the command, so the notebook reads the same settings.
        "config_path": str(config.source) if config.source else None,
        "profile": config.profile,
    }


def render_html(notebook_text: str) -> str:
    """Self-contained HTML of an executed notebook: outputs only, images inlined as data URIs."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nbformat.reads(notebook_text, as_version=4))
    return _EXTERNAL_SCRIPT.sub("", body)


def run(config: PipelineConfig, output_dir: Path | str | None = None) -> NotebookResult:
    """Execute the notebook against the configured store and write the ``.ipynb`` and ``.html``."""
    import papermill

    started = time.perf_counter()
    template = config.resolve(config.results.notebook)
    if not template.is_file():
        raise ConfigError(f"results.notebook: {template} does not exist")
    output = Path(output_dir) if output_dir is not None else config.resolve(config.results.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(config.root)
    logger.info("executing %s against %s", template, redact_uri(uri))
    with (
        tempfile.TemporaryDirectory() as folder,
        temporary_environment(**{TRACKING_URI_ENV: uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}),
    ):
        executed = Path(folder) / NOTEBOOK_NAME
        papermill.execute_notebook(
            str(template),
            str(executed),
            parameters=parameters(config, output),
            kernel_name=KERNEL_NAME,
            cwd=str(config.root),
            progress_bar=False,
            log_output=False,
        )
        # A safety net: no output may carry a password even if a cell printed a raw URI.
        notebook_text = redact(executed.read_text(encoding="utf-8"))
    notebook_path = write_text_atomic(output / NOTEBOOK_NAME, notebook_text)
    html_path = write_text_atomic(output / HTML_NAME, redact(render_html(notebook_text)))
    seconds = time.perf_counter() - started
    logger.info("report written to %s in %.1f s", html_path, seconds)
    return NotebookResult(notebook=notebook_path, html=html_path, seconds=seconds)
