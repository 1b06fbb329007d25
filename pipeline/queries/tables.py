"""The tracking database and its tables: connect, inventory, whole tables, run look-ups (SQL).

The schema is discovered by introspection (``sqlalchemy.inspect``): table names come only
from the database itself, are quoted by the dialect, and every value is a bound parameter.
Views aggregate in SQL and look up only the runs they need, so they stay fast on a store
with millions of metric rows. Works on PostgreSQL and SQLite; missing tables (an older or
newer MLflow) give empty frames, never errors. Importable from notebooks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.errors import TrackingUnavailableError, first_line
from pipeline.settings import redact, redact_uri
from pipeline.tracking import keys
from pipeline.tracking import store as tracking_store

logger = logging.getLogger(__name__)

# The tables people read, in the order the report lists them.
PEOPLE_TABLES = (
    "experiments",
    "experiment_tags",
    "runs",
    "params",
    "metrics",
    "latest_metrics",
    "tags",
    "datasets",
    "inputs",
    "input_tags",
    "logged_models",
    "logged_model_metrics",
    "logged_model_params",
    "logged_model_tags",
    "registered_models",
    "registered_model_tags",
    "model_versions",
    "model_version_tags",
    "registered_model_aliases",
)
# Tables whose text cannot hold a URL with a password: MLflow restricts metric names to letters,
# digits and ``_-./ :`` (no ``@``) and the rest are numbers. On PostgreSQL they are streamed with
# COPY, which is what keeps a million-row metrics table within seconds.
COPY_SAFE_TABLES = frozenset({"metrics", "latest_metrics"})
# Rows fetched per round trip when a table is streamed (bounded memory on any store size).
CHUNK_ROWS = 100_000


@dataclass
class Store:
    """A connection to a tracking database and the tables it holds."""

    engine: Engine
    uri: str
    table_names: list[str]
    _tables: dict[str, sa.Table] = field(default_factory=dict, repr=False)

    @property
    def safe_uri(self) -> str:
        return redact_uri(self.uri)

    def has(self, *names: str) -> bool:
        return all(name in self.table_names for name in names)

    def table(self, name: str) -> sa.Table:
        """The reflected table ``name``; only names the database reported are accepted."""
        if name not in self.table_names:
            raise KeyError(f"table {name!r} is not in the tracking database")
        if name not in self._tables:
            self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
        return self._tables[name]

    def quoted(self, name: str) -> str:
        if name not in self.table_names:
            raise KeyError(f"table {name!r} is not in the tracking database")
        return self.engine.dialect.identifier_preparer.quote(name)

    def close(self) -> None:
        self.engine.dispose()


def open_store(uri: str) -> Store:
    """Connect and introspect; raises TrackingUnavailableError with a redacted one-line reason."""
    if not tracking_store.is_database(uri):
        raise TrackingUnavailableError(f"{redact_uri(uri)} is not a database URL to read by SQL")
    engine = tracking_store.engine(uri)
    try:
        names = sorted(sa.inspect(engine).get_table_names())
    except Exception as error:
        engine.dispose()
        reason = redact(first_line(error))
        raise TrackingUnavailableError(f"cannot read {redact_uri(uri)}: {reason}") from None
    if "runs" not in names or "experiments" not in names:
        engine.dispose()
        raise TrackingUnavailableError(f"{redact_uri(uri)} holds no MLflow tracking schema")
    return Store(engine=engine, uri=uri, table_names=names)


def _rows_frame(rows: Sequence, columns: list[str]) -> pd.DataFrame:
    """A frame of result rows; as plain tuples, which pandas reads about 7 times faster than Row objects."""
    return pd.DataFrame([tuple(row) for row in rows], columns=columns)


def _frame(result: sa.CursorResult) -> pd.DataFrame:
    return _rows_frame(result.fetchall(), list(result.keys()))


def query_frame(store: Store, statement: Any, **params: Any) -> pd.DataFrame:
    with store.engine.connect() as connection:
        return _frame(connection.execute(statement, params))


def redact_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Mask URL passwords in every text column (artifact URIs, sources, tag values)."""
    for column in frame.columns:
        series = frame[column]
        if series.dtype == object or pd.api.types.is_string_dtype(series):
            text = series.astype("string")
            suspicious = text.str.contains("://", regex=False, na=False)
            if suspicious.any():
                frame.loc[suspicious, column] = text[suspicious].map(redact)
    return frame


# --- inventory ---------------------------------------------------------------------------------------


def table_counts(store: Store) -> pd.DataFrame:
    """Every table the database holds with its row count (one COUNT per table)."""
    rows = []
    with store.engine.connect() as connection:
        for name in store.table_names:
            count = connection.execute(sa.text(f"SELECT COUNT(*) FROM {store.quoted(name)}")).scalar_one()
            rows.append({"table": name, "rows": int(count), "loaded": name in PEOPLE_TABLES})
    return pd.DataFrame(rows, columns=["table", "rows", "loaded"])


# --- whole tables ------------------------------------------------------------------------------------


def iter_table(store: Store, name: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """A table as DataFrames of at most ``chunk_rows`` rows, read with a server-side cursor."""
    table = store.table(name)
    primary = list(table.primary_key.columns)
    statement = sa.select(table).order_by(*primary) if primary else sa.select(table)
    with store.engine.connect().execution_options(stream_results=True, yield_per=chunk_rows) as connection:
        result = connection.execute(statement)
        columns = list(result.keys())
        emitted = False
        for partition in result.partitions(chunk_rows):
            emitted = True
            yield redact_frame(_rows_frame(partition, columns))
        if not emitted:
            yield pd.DataFrame(columns=columns)


def can_copy(store: Store, name: str) -> bool:
    """Whether ``name`` can be streamed raw with PostgreSQL's COPY (no redaction needed)."""
    return store.engine.dialect.name == "postgresql" and name in COPY_SAFE_TABLES and store.has(name)


def copy_table_csv(store: Store, name: str, stream: BinaryIO) -> int:
    """Write a whole table as CSV (with header) into a binary stream using COPY; returns the row count."""
    statement = f"COPY (SELECT * FROM {store.quoted(name)}) TO STDOUT WITH (FORMAT csv, HEADER true)"
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.copy_expert(statement, stream)
        rows = cursor.rowcount
        cursor.close()
        raw.commit()
    finally:
        raw.close()
    return int(rows)


def load_table(store: Store, name: str, limit: int | None = None) -> pd.DataFrame:
    """One whole table (or its first ``limit`` rows by primary key); empty when the table is absent."""
    if not store.has(name):
        return pd.DataFrame()
    table = store.table(name)
    statement = sa.select(table).order_by(*table.primary_key.columns)
    if limit is not None:
        statement = statement.limit(limit)
    return redact_frame(query_frame(store, statement))


# --- run look-ups ------------------------------------------------------------------------------------


def experiment_id(store: Store, name: str) -> str | None:
    """Id of the active experiment called ``name``."""
    experiments = store.table("experiments")
    statement = sa.select(experiments.c.experiment_id).where(
        experiments.c.name == sa.bindparam("name"), experiments.c.lifecycle_stage == "active"
    )
    ids = query_frame(store, statement, name=name)["experiment_id"].tolist()
    return str(ids[0]) if ids else None


def of_experiment(store: Store, table: sa.Table, experiment: str) -> Any:
    """``table.experiment_id = experiment``, bound as the column's type (an integer in MLflow's
    databases; text in a copy of a store whose ids are not numbers, such as Azure ML's)."""
    numeric = isinstance(table.c.experiment_id.type, sa.Integer)
    return table.c.experiment_id == sa.bindparam(
        "experiment", value=int(experiment) if numeric else experiment
    )


def tag_exists(store: Store, runs: sa.Table, key: str, value: str) -> Any:
    tags = store.table("tags")
    return sa.exists().where(tags.c.run_uuid == runs.c.run_uuid, tags.c.key == key, tags.c.value == value)


def _value_of(table: sa.Table, runs: sa.Table, key: str) -> Any:
    """The ``value`` of ``key`` for each run, as a column named ``key`` (a primary-key look-up)."""
    return (
        sa.select(table.c.value)
        .where(table.c.run_uuid == runs.c.run_uuid, table.c.key == key)
        .scalar_subquery()
        .label(key)
    )


def runs_frame(
    store: Store,
    experiment: str | None,
    *,
    where_tags: dict[str, str] | None = None,
    run_ids: Sequence[str] | None = None,
    tag_keys: Sequence[str] = (),
    metric_keys: Sequence[str] = (),
    status: str | None = None,
    newest_first: bool = True,
    limit: int | None = None,
) -> pd.DataFrame:
    """Active runs with chosen tags and latest metrics as columns.

    Tags and metrics are fetched by primary-key look-ups (correlated subqueries on
    ``(key, run_uuid)``), so the cost grows with the runs returned, not with the store.
    """
    runs = store.table("runs")
    columns = [
        runs.c.run_uuid.label("run_id"),
        runs.c.name.label("run_name"),
        runs.c.status,
        runs.c.start_time,
        runs.c.end_time,
        runs.c.experiment_id,
    ]
    tags = store.table("tags")
    columns += [_value_of(tags, runs, key) for key in tag_keys]
    if store.has("latest_metrics"):
        latest = store.table("latest_metrics")
        columns += [_value_of(latest, runs, key) for key in metric_keys]
    statement = sa.select(*columns).where(runs.c.lifecycle_stage == "active")
    if experiment is not None:
        statement = statement.where(of_experiment(store, runs, experiment))
    for key, value in (where_tags or {}).items():
        statement = statement.where(tag_exists(store, runs, key, value))
    if run_ids is not None:
        if not run_ids:
            return pd.DataFrame(columns=[c.name for c in columns])
        statement = statement.where(runs.c.run_uuid.in_(sa.bindparam("ids", list(run_ids), expanding=True)))
    if status is not None:
        statement = statement.where(runs.c.status == sa.bindparam("status", value=status))
    order = runs.c.start_time.desc() if newest_first else runs.c.start_time.asc()
    statement = statement.order_by(order, runs.c.run_uuid)
    if limit is not None:
        statement = statement.limit(limit)
    frame = query_frame(store, statement)
    for key in metric_keys:
        if key not in frame:
            frame[key] = float("nan")
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    return redact_frame(frame)


def stage_runs(
    store: Store, experiment: str | None, stage: str, status: str | None = "FINISHED", **kwargs: Any
) -> pd.DataFrame:
    """Parent runs of one pipeline stage, newest first."""
    return runs_frame(
        store,
        experiment,
        where_tags={keys.TAG_STAGE: stage, keys.TAG_ROLE: keys.ROLE_STAGE},
        status=status,
        **kwargs,
    )


def latest_stage_run(store: Store, experiment: str | None, stage: str, **kwargs: Any) -> pd.Series | None:
    frame = stage_runs(store, experiment, stage, limit=1, **kwargs)
    return None if frame.empty else frame.iloc[0]


def experiment_tags(store: Store, experiment: str | None) -> dict[str, str]:
    """The tags of one experiment, as a dict (empty when there is none)."""
    if experiment is None or not store.has("experiment_tags"):
        return {}
    table = store.table("experiment_tags")
    statement = sa.select(table.c.key, table.c.value).where(
        table.c.experiment_id == sa.bindparam("experiment", value=int(experiment))
    )
    frame = query_frame(store, statement)
    return dict(zip(frame["key"], frame["value"], strict=True))
