"""Stability monitoring: ``python -m pipeline monitor --input new_applicants.csv [--model models:/…]``.

Scores the applicants with the model (default: ``models:/<register.model_name>@champion``) and
compares, with :mod:`pipeline.stability`, the score's distribution (PSI) and every characteristic's
(CSI) with the training profile stored with the model. Writes ``stability.csv`` (one row per index),
``bins.csv`` (every bin's expected and actual share) and ``stability.png`` to ``monitor.output_dir``,
and logs a ``monitor`` run tagged with the model version it watched. Exit 0, or 3 when the score or
any characteristic shifted (above ``monitor.shift``) and ``monitor.fail_on_shift`` is on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import plots, stability
from pipeline.applicants import log_check, read_applicants
from pipeline.config import PipelineConfig
from pipeline.files import write_csv_atomic
from pipeline.scoring import prepare_input
from pipeline.tracking import keys, runs
from pipeline.tracking.model_io import load_model
from pipeline.tracking.registry import resolve_model_uri

logger = logging.getLogger(__name__)

EXIT_SHIFTED = 3
SUMMARY_FILE = "stability.csv"
BINS_FILE = "bins.csv"
CHART_FILE = "stability.png"
_SEVERITY = {stability.STABLE: 0, stability.WATCH: 1, stability.SHIFTED: 2}


@dataclass(frozen=True)
class MonitorResult:
    run_id: str
    model_uri: str
    version: str | None
    rows: int
    summary: pd.DataFrame
    status: str
    output_dir: Path
    exit_code: int

    def describe(self) -> str:
        shown = self.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        watched = f"{self.model_uri}" + (f" (version {self.version})" if self.version else "")
        return "\n".join(
            [
                f"monitor run {self.run_id}: {self.rows} applicants against the training part of {watched}",
                shown,
                f"population {self.status}; table and chart in {self.output_dir}",
            ]
        )


def default_model_uri(config: PipelineConfig) -> str:
    return f"models:/{config.registration.model_name}@{keys.ALIAS_CHAMPION}"


def overall_status(summary: pd.DataFrame) -> str:
    """The worst status of the score and the characteristics."""
    return max(summary["status"], key=_SEVERITY.__getitem__, default=stability.STABLE)


def _metric_name(name: str) -> str:
    return "csi_" + re.sub(r"[^0-9A-Za-z_.-]+", "_", name)


def run(
    config: PipelineConfig,
    input_path: Path,
    model_uri: str | None = None,
    output_dir: Path | None = None,
) -> MonitorResult:
    """Compare ``input_path`` with the model's training part; log, write and return the result."""
    settings = config.monitor
    model_uri = model_uri or default_model_uri(config)
    output = Path(output_dir) if output_dir is not None else config.resolve(settings.output_dir)
    frame = read_applicants(Path(input_path))
    session = runs.connect(config)
    reference = resolve_model_uri(session, model_uri)
    with runs.quiet_artifact_downloads():
        model = load_model(model_uri)
    profile = stability.profile_from_metadata(model.metadata, model_uri)
    scorer = model.scorer
    features, check = prepare_input(frame, scorer.spec.columns, scorer.categories)
    log_check(check)
    scores = np.asarray(scorer.estimator.predict_proba(features)[:, 1], dtype=float)
    summary, bins = stability.compare(profile, features, scores, settings.watch, settings.shift)
    status = overall_status(summary)

    write_csv_atomic(output / SUMMARY_FILE, summary)
    write_csv_atomic(output / BINS_FILE, bins)
    figure = plots.stability_chart(summary, bins, settings.watch, settings.shift)
    (output / CHART_FILE).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output / CHART_FILE, dpi=100)

    tags = {
        **runs.base_tags(config, keys.STAGE_MONITOR),
        keys.TAG_MONITOR_MODEL_URI: model_uri,
        keys.TAG_MONITOR_STATUS: status,
        keys.TAG_MONITOR_INPUT: Path(input_path).name,
    }
    for key, value in (
        (keys.TAG_MONITOR_MODEL_NAME, reference.name),
        (keys.TAG_MONITOR_VERSION, reference.version),
        (keys.TAG_MONITOR_MODEL_ID, reference.model_id),
    ):
        if value:
            tags[key] = value
    characteristics = summary.iloc[1:]
    run_name = f"{keys.STAGE_MONITOR}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with runs.stage_run(session, run_name, tags) as run_id:
        runs.log_batch(
            session,
            run_id,
            params={"watch": settings.watch, "shift": settings.shift, "bins": settings.bins},
            metrics={
                keys.METRIC_SCORE_PSI: float(summary.iloc[0]["index"]),
                keys.METRIC_MAX_CSI: float(characteristics["index"].max()) if len(characteristics) else 0.0,
                "rows": len(features),
                "shifted": int((summary["status"] == stability.SHIFTED).sum()),
                "watch": int((summary["status"] == stability.WATCH).sum()),
                **{
                    _metric_name(name): float(index)
                    for name, index in zip(characteristics["name"], characteristics["index"], strict=True)
                },
            },
        )
        runs.log_frame(session, run_id, summary, keys.ARTIFACT_MONITOR_SUMMARY)
        runs.log_text(session, run_id, bins.to_csv(index=False), keys.ARTIFACT_MONITOR_BINS)
        runs.log_figure(session, run_id, figure, keys.PLOT_MONITOR)
    plots.close(figure)

    exit_code = EXIT_SHIFTED if status == stability.SHIFTED and settings.fail_on_shift else 0
    logger.info("monitor run %s: population %s (score PSI %.4f)", run_id, status, summary.iloc[0]["index"])
    return MonitorResult(
        run_id=run_id,
        model_uri=model_uri,
        version=reference.version,
        rows=len(features),
        summary=summary,
        status=status,
        output_dir=output,
        exit_code=exit_code,
    )
