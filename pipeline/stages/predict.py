"""Batch scoring: ``python -m pipeline predict --model models:/NAME@champion --input a.csv --output b.csv``.

Writes every input column plus what :func:`pipeline.scoring.score` returns: ``default_probability``,
``decision`` (``reject`` at or above the model's recorded threshold, else ``accept``), the
``threshold``, and the top reasons of every applicant (``reason_1_code``, ``reason_1_text``, ...,
``reason_method``; see :mod:`pipeline.reasons`). It is the scoring path the logged model's pyfunc
runs (``mlflow models serve``), on the same two files, read without running any code stored with
the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.applicants import log_check, read_applicants
from pipeline.config import PipelineConfig
from pipeline.files import write_csv_atomic
from pipeline.reasons import METHOD_COLUMN
from pipeline.scoring import InputCheck, score
from pipeline.tracking.model_io import load_model
from pipeline.tracking.runs import connect, quiet_artifact_downloads

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    model_uri: str
    output_path: Path
    rows: int
    rejected: int
    threshold: float
    check: InputCheck
    reason_method: str | None = None

    def describe(self) -> str:
        share = self.rejected / self.rows if self.rows else 0.0
        lines = [
            f"scored {self.rows} applicants with {self.model_uri} (threshold {self.threshold:.4f}): "
            f"{self.rows - self.rejected} accept, {self.rejected} reject ({share:.1%})",
            f"written to {self.output_path}",
            f"reason codes: {self.reason_method or 'none (the model has no training profile)'}",
        ]
        if self.check.unseen_total:
            lines.append(f"unseen category values: {self.check.unseen_total} (scored by the encoder)")
        return "\n".join(lines)


def run(config: PipelineConfig, model_uri: str, input_path: Path, output_path: Path) -> PredictResult:
    """Score ``input_path`` with ``model_uri`` and write ``output_path`` atomically."""
    input_path, output_path = Path(input_path), Path(output_path)
    frame = read_applicants(input_path)
    connect(config)  # models:/ URIs resolve against the configured store
    with quiet_artifact_downloads():
        scorer = load_model(model_uri).scorer
    scored = score(scorer, frame)
    log_check(scored.check)
    if scorer.spec.reasons is None:
        logger.warning(
            "no reason codes: model %s recorded no training profile (logged before them)", model_uri
        )
    # The input's own columns come first; an output column of the same name is replaced.
    written = pd.concat(
        [frame.drop(columns=list(scored.output.columns), errors="ignore"), scored.output], axis=1
    )
    write_csv_atomic(output_path, written)
    logger.info(
        "scored %d rows; %d rejected at threshold %.4f", len(written), scored.rejected, scorer.threshold
    )
    method = str(scored.output[METHOD_COLUMN].iloc[0]) if METHOD_COLUMN in scored.output else None
    return PredictResult(
        model_uri, output_path, len(written), scored.rejected, scorer.threshold, scored.check, method
    )
