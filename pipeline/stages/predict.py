"""Batch scoring: ``python -m pipeline predict --model models:/NAME@champion --input a.csv --output b.csv``.

Writes every input column plus ``default_probability`` and ``decision``: ``reject`` when the
probability is at or above the model's recorded threshold, else ``accept`` (the convention of
:mod:`pipeline.evaluation`), then the top ``reason_codes.count`` reasons of every applicant
(``reason_1_code``, ``reason_1_text``, ...) and the method that found them (``reason_method``, see
:mod:`pipeline.reasons`). The input is checked against the model's signature first
(:mod:`pipeline.applicants`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import reasons
from pipeline.applicants import InputCheck, model_inputs, read_applicants
from pipeline.config import PipelineConfig
from pipeline.errors import LookupFailedError
from pipeline.files import write_csv_atomic
from pipeline.tracking.model_io import load_model
from pipeline.tracking.runs import connect, quiet_artifact_downloads

logger = logging.getLogger(__name__)

PROBABILITY_COLUMN = "default_probability"
DECISION_COLUMN = "decision"
ACCEPT, REJECT = "accept", "reject"


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


def score(frame: pd.DataFrame, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    """The input with the probability and the decision at ``threshold`` appended."""
    scored = frame.copy()
    scored[PROBABILITY_COLUMN] = scores
    scored[DECISION_COLUMN] = np.where(scores >= threshold, REJECT, ACCEPT)
    return scored


def run(config: PipelineConfig, model_uri: str, input_path: Path, output_path: Path) -> PredictResult:
    """Score ``input_path`` with ``model_uri`` and write ``output_path`` atomically."""
    input_path, output_path = Path(input_path), Path(output_path)
    frame = read_applicants(input_path)
    connect(config)  # models:/ URIs resolve against the configured store
    with quiet_artifact_downloads():
        model = load_model(model_uri)
    threshold = model.threshold
    features, check = model_inputs(frame, model.estimator, model.signature)
    scores = np.asarray(model.estimator.predict_proba(features)[:, 1], dtype=float)
    scored = score(frame, scores, threshold)
    method = None
    try:
        given = reasons.explain(model.estimator, features, model.metadata, config.reason_codes.count)
    except LookupFailedError as error:  # a model logged before reason codes: scores, no reasons
        logger.warning("no reason codes: %s", error)
    else:
        method = given.method
        scored = pd.concat([scored, given.frame().set_axis(scored.index)], axis=1)
    write_csv_atomic(output_path, scored)
    rejected = int((scored[DECISION_COLUMN] == REJECT).sum())
    logger.info("scored %d rows; %d rejected at threshold %.4f", len(scored), rejected, threshold)
    return PredictResult(model_uri, output_path, len(scored), rejected, threshold, check, method)
