"""Batch scoring: ``python -m pipeline predict --model models:/NAME@champion --input a.csv --output b.csv``.

Writes every input column plus what :func:`pipeline.scoring.score` returns: ``default_probability``,
``decision`` (``reject`` at or above the model's recorded threshold, else ``accept``) and the
``threshold``. It is the scoring path the logged model's pyfunc runs (``mlflow models serve``), on
the same two files, read without running any code stored with the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.errors import DataError, first_line
from pipeline.files import write_csv_atomic
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

    def describe(self) -> str:
        share = self.rejected / self.rows if self.rows else 0.0
        lines = [
            f"scored {self.rows} applicants with {self.model_uri} (threshold {self.threshold:.4f}): "
            f"{self.rows - self.rejected} accept, {self.rejected} reject ({share:.1%})",
            f"written to {self.output_path}",
        ]
        if self.check.unseen_total:
            lines.append(f"unseen category values: {self.check.unseen_total} (scored by the encoder)")
        return "\n".join(lines)


def read_applicants(path: Path) -> pd.DataFrame:
    """Read a CSV (every cell as text, so the output repeats the input exactly) or Parquet file."""
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"input file {path.name} is empty") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"cannot read input file {path.name}: {first_line(error, default='')}") from None


def _log_check(check: InputCheck) -> None:
    if check.extra_columns:
        logger.info(
            "ignoring %d input column(s) the model does not use: %s",
            len(check.extra_columns),
            ", ".join(check.extra_columns),
        )
    if check.absent_optional:
        logger.info("optional column(s) not given, scored as missing: %s", ", ".join(check.absent_optional))
    if check.unseen_total:
        logger.warning(
            "%d value(s) in %d column(s) were not seen in training and are scored as unknown: %s",
            check.unseen_total,
            len(check.unseen_categories),
            ", ".join(f"{column} ({count})" for column, count in check.unseen_categories.items()),
        )


def run(config: PipelineConfig, model_uri: str, input_path: Path, output_path: Path) -> PredictResult:
    """Score ``input_path`` with ``model_uri`` and write ``output_path`` atomically."""
    input_path, output_path = Path(input_path), Path(output_path)
    frame = read_applicants(input_path)
    connect(config)  # models:/ URIs resolve against the configured store
    with quiet_artifact_downloads():
        scorer = load_model(model_uri).scorer
    scored = score(scorer, frame)
    _log_check(scored.check)
    # The input's own columns come first; an output column of the same name is replaced.
    written = pd.concat(
        [frame.drop(columns=list(scored.output.columns), errors="ignore"), scored.output], axis=1
    )
    write_csv_atomic(output_path, written)
    logger.info(
        "scored %d rows; %d rejected at threshold %.4f", len(written), scored.rejected, scorer.threshold
    )
    return PredictResult(
        model_uri, output_path, len(written), scored.rejected, scorer.threshold, scored.check
    )
