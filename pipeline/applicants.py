"""Applicant files as users hold them: read one, and say what the input check found.

Shared by batch scoring and monitoring; the checking and typing itself is :mod:`pipeline.scoring`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError, first_line
from pipeline.scoring import InputCheck

logger = logging.getLogger(__name__)


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


def log_check(check: InputCheck) -> None:
    """Say which columns were ignored or absent and how many category values were never seen."""
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
