"""A local SQLite copy of the core tables a tracking server gave through its API, so the SQL of
this package (the whole tables, the views) runs on it unchanged, exactly as on MLflow's database.

The copy holds MLflow's table and column names; experiment ids that are numbers are stored as
integers, as in MLflow's schema. The columns the views look rows up by are indexed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pipeline.tracking import store

ROWS_PER_INSERT = 50_000
# Look-ups the views make (MLflow's primary keys and foreign keys), indexed in the copy. Not the
# metric history: the one view reading it aggregates the whole table, and its index took 1.6 s of
# the copy's 6 s on 1,000,000 rows.
_INDEXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "experiments": (("experiment_id",), ("name",)),
    "runs": (("run_uuid",), ("experiment_id", "start_time")),
    "tags": (("run_uuid", "key"),),
    "params": (("run_uuid", "key"),),
    "latest_metrics": (("run_uuid", "key"),),
    "model_versions": (("name", "version"),),
    "model_version_tags": (("name", "version", "key"),),
    "registered_model_aliases": (("name", "version"),),
}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Experiment ids as integers when every one is a number (MLflow's own column type)."""
    for column in ("experiment_id",):
        if column in frame and not frame.empty:
            text = frame[column].astype("string")
            if text.str.fullmatch(r"\d+").all():
                frame = frame.assign(**{column: text.astype("int64")})
    return frame


def write_copy(frames: dict[str, pd.DataFrame], path: Path) -> str:
    """Write ``frames`` as tables of a new SQLite database at ``path``; returns its URI."""
    uri = f"sqlite:///{Path(path).resolve()}"
    writer = store.engine(uri)
    try:
        with writer.begin() as connection:
            preparer = writer.dialect.identifier_preparer
            for name, frame in frames.items():
                typed = _typed(frame)
                typed.head(0).to_sql(name, connection, index=False)  # the table and its column types
                insert = (
                    f"INSERT INTO {preparer.quote(name)} VALUES ({', '.join('?' for _ in typed.columns)})"
                )
                # One executemany per chunk of plain tuples, built column-wise (pandas' own to_sql, or
                # itertuples, take several times longer on a million rows). SQLite stores NaN as NULL.
                for start in range(0, len(typed), ROWS_PER_INSERT):
                    chunk = typed.iloc[start : start + ROWS_PER_INSERT]
                    rows = list(zip(*(chunk[column].tolist() for column in chunk.columns), strict=True))
                    connection.exec_driver_sql(insert, rows)
            for name, indexes in _INDEXES.items():
                if name not in frames:
                    continue
                for number, columns in enumerate(indexes):
                    quoted = ", ".join(preparer.quote(column) for column in columns)
                    index = preparer.quote(f"ix_{name}_{number}")
                    connection.execute(sa.text(f"CREATE INDEX {index} ON {preparer.quote(name)} ({quoted})"))
            # Statistics for the planner: without them SQLite may scan a tag's every run for each run.
            connection.execute(sa.text("ANALYZE"))
    finally:
        writer.dispose()
    return uri
