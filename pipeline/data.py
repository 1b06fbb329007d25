"""Load, validate, split and fingerprint the loan table.

``read_table`` is the only I/O here; everything else takes and returns frames,
so the checks are unit-testable without files.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.config import DatasetConfig, PipelineConfig
from pipeline.errors import ConfigError, DataError, first_line
from pipeline.settings import DATA_URL_ENV, data_url, redact
from pipeline.tracking import store

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".parquet", ".pq", ".txt", ".tsv"}
# Fewer rows than this and an all-unique column is no sign of an identifier.
MIN_ROWS_FOR_IDENTIFIER = 30
# Fewer positive rows than this in the training part and CV figures swing from fold to fold.
MIN_POSITIVE_TRAINING_ROWS = 50
# How many values of a text column are tried as dates (the check only warns, so a sample will do).
DATE_SAMPLE = 200
# loan_id, ID, customer-key, uuid; or camelCase customerId, loanID.
_IDENTIFIER_NAME = re.compile(r"(?i:(^|[_\W])(id|key|uuid|guid)$)|[a-z](Id|ID)$")
_DATE_TEXT = re.compile(
    r"^\s*(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})"  # 2024-03-01, 01/03/2024
    r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?\S*)?\s*$"  # optional time and zone
)


@dataclass(frozen=True)
class Dataset:
    """A validated table: features, a 0/1 target (1 = default) and column roles."""

    features: pd.DataFrame
    target: pd.Series
    categorical: list[str]
    numeric: list[str]
    name: str
    source: str
    digest: str
    removed_rows: dict[str, int] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.target)

    def frame(self) -> pd.DataFrame:
        """Features and target together, as logged to MLflow."""
        return self.features.assign(**{self.target.name: self.target.to_numpy()})


@dataclass(frozen=True)
class Split:
    """Positions (into the dataset's rows) of the training and held-out test parts."""

    train_index: np.ndarray
    test_index: np.ndarray
    train_digest: str
    test_digest: str


def fingerprint(frame: pd.DataFrame) -> str:
    """Content digest of a table: values, column names and order; not the row labels."""
    hasher = hashlib.sha256()
    hasher.update("\x1f".join(map(str, frame.columns)).encode())
    hasher.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return hasher.hexdigest()[:16]


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return next(csv.reader(handle), [])


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def read_table(config: DatasetConfig, root: Path) -> pd.DataFrame:
    """Read the configured CSV, Parquet file or SQL query into a frame."""
    if config.query is not None:
        return _read_query(config.query)
    path = config.path if config.path.is_absolute() else root / config.path
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"dataset file {path.name} is not a table (expected .csv or .parquet)")
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        header = _csv_header(path)
        if dupes := _duplicates(header):
            raise DataError(f"duplicate column names in {path.name}: {', '.join(dupes)}")
        sep = "\t" if suffix == ".tsv" else ","
        return pd.read_csv(path, sep=sep, low_memory=False)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"dataset file {path.name} is empty") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"cannot read dataset file {path.name}: {error}") from None


def _read_query(query: str) -> pd.DataFrame:
    url = data_url()
    if url is None:
        raise ConfigError(f"dataset.query: set the database URL in {DATA_URL_ENV}")
    import sqlalchemy

    try:
        source = store.engine(url)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
        raise DataError(f"dataset query failed: {redact(first_line(error))}") from None
    try:
        with source.connect() as connection:
            return pd.read_sql_query(sqlalchemy.text(query), connection)
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise DataError(f"dataset query failed: {redact(first_line(error))}") from None
    finally:
        source.dispose()


def _binary_target(values: pd.Series, config: DatasetConfig) -> pd.Series:
    name = config.target
    missing = int(values.isna().sum())
    if missing:
        raise DataError(f"target column '{name}' has {missing} missing values")
    classes = pd.unique(values)
    if len(classes) < 2:
        raise DataError(f"target column '{name}' has a single class ({classes[0]!r})")
    if len(classes) > 2:
        shown = ", ".join(map(repr, sorted(map(str, classes))[:5]))
        raise DataError(f"target column '{name}' has {len(classes)} classes ({shown}); need 2")
    positive = values == config.positive_label
    if not positive.any():  # labels read as text, or a numeric label given as text
        positive = values.astype(str) == str(config.positive_label)
    if not positive.any():
        raise DataError(f"target column '{name}' never equals positive_label {config.positive_label!r}")
    return positive.astype(np.int8).rename(name)


def _column_roles(features: pd.DataFrame, config: DatasetConfig) -> tuple[list[str], list[str]]:
    for key in ("categorical", "numeric"):
        unknown = [c for c in getattr(config, key) or [] if c not in features.columns]
        if unknown:
            raise DataError(f"dataset.{key} names columns not in the table: {', '.join(unknown)}")
    explicit_cat = set(config.categorical or [])
    explicit_num = set(config.numeric or [])
    categorical, numeric = [], []
    for column in features.columns:
        if column in explicit_cat:
            categorical.append(column)
        elif column in explicit_num or (
            pd.api.types.is_numeric_dtype(features[column])
            and not pd.api.types.is_bool_dtype(features[column])
        ):
            numeric.append(column)
        else:
            categorical.append(column)
    return categorical, numeric


def _coerce(features: pd.DataFrame, categorical: list[str], numeric: list[str]) -> pd.DataFrame:
    columns = {}
    for column in numeric:
        values = pd.to_numeric(features[column], errors="coerce")
        bad = int((values.isna() & features[column].notna()).sum())
        if bad:
            raise DataError(f"column '{column}' is numeric but holds {bad} non-numeric values")
        values = values.astype(float)
        if np.isinf(values.to_numpy()).any():
            raise DataError(f"column '{column}' holds infinite values")
        columns[column] = values
    for column in categorical:
        # Plain object strings with NaN for missing: what every encoder and signature expects.
        values = features[column]
        columns[column] = (
            values.astype(object)
            .where(values.notna(), np.nan)
            .map(lambda v: v if isinstance(v, float) and np.isnan(v) else str(v))
        )
    return pd.DataFrame(columns, index=features.index)[list(features.columns)]


def _looks_like_dates(values: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return False
    sample = values.dropna().astype(str).head(DATE_SAMPLE)
    if sample.empty or not sample.map(lambda v: _DATE_TEXT.match(v) is not None).all():
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.9)


def _looks_like_identifier(name: str, values: pd.Series, numeric: bool) -> bool:
    present = values.dropna()
    if len(values) < MIN_ROWS_FOR_IDENTIFIER or len(present) < len(values) or not present.is_unique:
        return False
    if not numeric:
        return True  # text with a different value in every row: no level is ever seen twice
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().any() or not np.all(np.mod(numbers, 1) == 0):
        return False  # unique amounts or measurements are common; unique whole numbers less so
    consecutive = numbers.max() - numbers.min() + 1 == len(numbers)
    return bool(consecutive or _IDENTIFIER_NAME.search(name))


def warn_suspicious_columns(features: pd.DataFrame, numeric: list[str]) -> list[str]:
    """Warn about dates and identifiers left among the features; returns the columns warned about.

    Both are almost always a mistake in a credit model: a date read as text categories never
    generalises to new applicants (and often leaks the vintage), and an identifier only lets
    a model memorise rows. The user decides: ``dataset.drop``, or a derived numeric column.
    """
    warned = []
    for column in features.columns:
        values = features[column]
        if _looks_like_dates(values):
            logger.warning(
                "column '%s' holds dates, which the models would read as text categories: add it to "
                "dataset.drop, or derive a number from it (e.g. months since) before loading",
                column,
            )
        elif _looks_like_identifier(column, values, numeric=column in numeric):
            logger.warning(
                "column '%s' has a different value in every row, like an identifier: a model can only "
                "memorise rows with it; add it to dataset.drop",
                column,
            )
        else:
            continue
        warned.append(column)
    return warned


def _apply_ranges(frame: pd.DataFrame, config: DatasetConfig) -> tuple[pd.DataFrame, int]:
    keep = pd.Series(True, index=frame.index)
    for column, bounds in config.valid_ranges.items():
        if column not in frame.columns:
            raise DataError(f"dataset.valid_ranges names a column not in the table: {column}")
        values = pd.to_numeric(frame[column], errors="coerce")
        inside = pd.Series(True, index=frame.index)
        if "min" in bounds:
            inside &= ~(values < bounds["min"])
        if "max" in bounds:
            inside &= ~(values > bounds["max"])
        keep &= inside  # missing values are kept: the imputer handles them
    return frame[keep], int((~keep).sum())


def prepare(frame: pd.DataFrame, config: DatasetConfig, source: str = "") -> Dataset:
    """Validate a raw table and turn it into a :class:`Dataset`; raises :class:`DataError`."""
    if dupes := _duplicates([str(c) for c in frame.columns]):
        raise DataError(f"duplicate column names: {', '.join(dupes)}")
    frame = frame.rename(columns=str)
    if frame.empty or len(frame.columns) == 0:
        raise DataError("dataset is empty: no rows")
    if config.target not in frame.columns:
        raise DataError(f"target column '{config.target}' not found in the table")
    unknown_drop = [c for c in config.drop if c not in frame.columns]
    if unknown_drop:
        raise DataError(f"dataset.drop names columns not in the table: {', '.join(unknown_drop)}")
    if config.target in config.drop:
        raise ConfigError("dataset.drop: cannot drop the target column")
    frame = frame.drop(columns=config.drop)

    removed: dict[str, int] = {}
    if config.drop_duplicates:
        before = len(frame)
        frame = frame.drop_duplicates()
        removed["duplicates"] = before - len(frame)
    if config.valid_ranges:
        frame, removed["out_of_range"] = _apply_ranges(frame, config)
    if frame.empty:
        raise DataError("dataset is empty after removing duplicates and out-of-range rows")
    frame = frame.reset_index(drop=True)

    target = _binary_target(frame[config.target], config)
    features = frame.drop(columns=[config.target])
    if features.shape[1] == 0:
        raise DataError("dataset has no feature columns besides the target")
    empty = [c for c in features.columns if features[c].isna().all()]
    if empty:
        names = ", ".join(f"'{c}'" for c in empty)
        raise DataError(
            f"column{'s' if len(empty) > 1 else ''} {names} {'are' if len(empty) > 1 else 'is'} entirely "
            "empty: add to dataset.drop"
        )
    categorical, numeric = _column_roles(features, config)
    warn_suspicious_columns(features, numeric)
    features = _coerce(features, categorical, numeric)
    for column, count in removed.items():
        if count:
            logger.info("removed %d rows (%s)", count, column.replace("_", " "))
    return Dataset(
        features=features,
        target=target,
        categorical=categorical,
        numeric=numeric,
        name=config.name,
        source=source,
        digest=fingerprint(features.assign(**{config.target: target})),
        removed_rows=removed,
    )


def load_dataset(config: PipelineConfig) -> Dataset:
    """Read and validate the configured dataset."""
    source = "sql query" if config.dataset.query else str(config.dataset.path)
    frame = read_table(config.dataset, config.root)
    dataset = prepare(frame, config.dataset, source=source)
    logger.info(
        "loaded %s: %d rows, %d categorical and %d numeric features, %.1f %% positive, digest %s",
        dataset.name,
        dataset.n_rows,
        len(dataset.categorical),
        len(dataset.numeric),
        100 * dataset.target.mean(),
        dataset.digest,
    )
    return dataset


def split_dataset(dataset: Dataset, test_size: float, seed: int) -> Split:
    """Seeded stratified train/test split (the same call as the benchmark protocol)."""
    positions = np.arange(dataset.n_rows)
    counts = dataset.target.value_counts()
    if counts.min() < 2:
        raise DataError("too few rows of a class to hold out a stratified test part")
    try:
        train_index, test_index = train_test_split(
            positions, test_size=test_size, stratify=dataset.target, random_state=seed
        )
    except ValueError as error:  # e.g. a test part smaller than the number of classes
        raise DataError(
            f"{dataset.n_rows} rows are too few to hold out a stratified test part: {error}"
        ) from None
    positives = int(dataset.target.iloc[train_index].sum())
    if positives < MIN_POSITIVE_TRAINING_ROWS:
        logger.warning(
            "only %d rows of the positive class of '%s' in the training part, fewer than %d: "
            "cross-validated figures, the ranking and the threshold will be unstable",
            positives,
            dataset.target.name,
            MIN_POSITIVE_TRAINING_ROWS,
        )
    frame = dataset.frame()
    return Split(
        train_index=train_index,
        test_index=test_index,
        train_digest=fingerprint(frame.iloc[np.sort(train_index)]),
        test_digest=fingerprint(frame.iloc[np.sort(test_index)]),
    )


def check_folds(target: pd.Series, folds: int, where: str) -> None:
    """Stratified k-fold needs at least ``folds`` rows of each class."""
    counts = target.value_counts()
    label, smallest = counts.idxmin(), int(counts.min())
    if smallest < folds:
        raise DataError(
            f"class {label} of '{target.name}' has {smallest} training rows, fewer than {where}={folds}"
        )
