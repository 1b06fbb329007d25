"""Every SQL query over the MLflow backend tables, returned as pandas DataFrames.

The schema is discovered by introspection (``sqlalchemy.inspect``): table names come only
from the database itself, are quoted by the dialect, and every value is a bound parameter.
Views aggregate in SQL and look up only the runs they need, so they stay fast on a store
with millions of metric rows. Works on PostgreSQL and SQLite; missing tables (an older or
newer MLflow) give empty frames, never errors. Importable from notebooks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.errors import TrackingUnavailableError, first_line
from pipeline.settings import redact, redact_uri

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

# Tag and metric keys the pipeline's stages write (see pipeline.tracking and the stage modules).
_STAGE, _ROLE, _FAMILY, _CANDIDATE = "pipeline.stage", "pipeline.role", "model.family", "model.candidate"
_PARENT = "mlflow.parentRunId"
_DIGEST = "dataset.digest"
_VERSION_TAGS = (
    "gate.decision",
    "gate.reason",
    "gate.status",
    "test_roc_auc",
    "test_expected_cost",
    "threshold",
    "optimize_run_id",
    "research_run_id",
    "dataset.digest",
    "archived",
)
_RESEARCH_METRICS = ("cv_roc_auc_mean", "cv_roc_auc_std", "cv_expected_cost_mean", "cv_threshold_mean")
_OPTIMIZE_METRICS = (
    "cv_roc_auc",
    "cv_expected_cost",
    "threshold",
    "test_roc_auc",
    "test_average_precision",
    "test_expected_cost",
)
LEADERBOARD_COLUMNS = [
    "stage",
    "name",
    "family",
    "cv_roc_auc",
    "cv_roc_auc_std",
    "cv_expected_cost",
    "test_roc_auc",
    "test_average_precision",
    "test_expected_cost",
    "threshold",
    "run_id",
    "parent_run_id",
    "start_time",
]


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


def sqlalchemy_url(uri: str) -> str:
    """The SQLAlchemy URL of a database tracking URI (``postgresql://`` gets the psycopg2 driver)."""
    if uri.startswith("postgresql://"):
        return "postgresql+psycopg2://" + uri.removeprefix("postgresql://")
    if uri.startswith("postgres://"):
        return "postgresql+psycopg2://" + uri.removeprefix("postgres://")
    return uri


def open_store(uri: str) -> Store:
    """Connect and introspect; raises TrackingUnavailableError with a redacted one-line reason."""
    if uri.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "postgres", "mysql", "mssql"):
        raise TrackingUnavailableError(
            f"the results stage reads the tracking database directly; {redact_uri(uri)} is not a database URI"
        )
    url = sqlalchemy_url(uri)
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    engine = sa.create_engine(url, connect_args=connect_args)
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


def _frame(result: sa.CursorResult) -> pd.DataFrame:
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _query(store: Store, statement: Any, **params: Any) -> pd.DataFrame:
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


def schema_revision(store: Store) -> str | None:
    """The alembic revision MLflow migrated the schema to."""
    if not store.has("alembic_version"):
        return None
    table = store.table("alembic_version")
    values = _query(store, sa.select(table.c.version_num))["version_num"].tolist()
    return ",".join(values) or None


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
            yield redact_frame(pd.DataFrame(partition, columns=columns))
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
    return redact_frame(_query(store, statement))


# --- run look-ups ------------------------------------------------------------------------------------


def experiment_id(store: Store, name: str) -> str | None:
    """Id of the active experiment called ``name``."""
    experiments = store.table("experiments")
    statement = sa.select(experiments.c.experiment_id).where(
        experiments.c.name == sa.bindparam("name"), experiments.c.lifecycle_stage == "active"
    )
    ids = _query(store, statement, name=name)["experiment_id"].tolist()
    return str(ids[0]) if ids else None


def _tag_exists(store: Store, runs: sa.Table, key: str, value: str) -> Any:
    tags = store.table("tags")
    return sa.exists().where(tags.c.run_uuid == runs.c.run_uuid, tags.c.key == key, tags.c.value == value)


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
    for key in tag_keys:
        columns.append(
            sa.select(tags.c.value)
            .where(tags.c.run_uuid == runs.c.run_uuid, tags.c.key == key)
            .scalar_subquery()
            .label(key)
        )
    if store.has("latest_metrics"):
        latest = store.table("latest_metrics")
        for key in metric_keys:
            columns.append(
                sa.select(latest.c.value)
                .where(latest.c.run_uuid == runs.c.run_uuid, latest.c.key == key)
                .scalar_subquery()
                .label(key)
            )
    statement = sa.select(*columns).where(runs.c.lifecycle_stage == "active")
    if experiment is not None:
        statement = statement.where(runs.c.experiment_id == sa.bindparam("experiment", value=int(experiment)))
    for key, value in (where_tags or {}).items():
        statement = statement.where(_tag_exists(store, runs, key, value))
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
    frame = _query(store, statement)
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
    return runs_frame(store, experiment, where_tags={_STAGE: stage, _ROLE: "stage"}, status=status, **kwargs)


def latest_stage_run(store: Store, experiment: str | None, stage: str, **kwargs: Any) -> pd.Series | None:
    frame = stage_runs(store, experiment, stage, limit=1, **kwargs)
    return None if frame.empty else frame.iloc[0]


# --- views -------------------------------------------------------------------------------------------


def leaderboard(store: Store, experiment: str | None) -> pd.DataFrame:
    """Research candidates of the latest research run and the tuned models built from it, best first."""
    research = latest_stage_run(store, experiment, "research")
    if research is None:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    candidates = runs_frame(
        store,
        experiment,
        where_tags={_PARENT: research["run_id"], _ROLE: "candidate"},
        tag_keys=(_FAMILY, _CANDIDATE),
        metric_keys=_RESEARCH_METRICS,
    )
    rows = pd.DataFrame(
        {
            "stage": "research",
            "name": candidates[_CANDIDATE],
            "family": candidates[_FAMILY],
            "cv_roc_auc": candidates["cv_roc_auc_mean"],
            "cv_roc_auc_std": candidates["cv_roc_auc_std"],
            "cv_expected_cost": candidates["cv_expected_cost_mean"],
            "threshold": candidates["cv_threshold_mean"],
            "run_id": candidates["run_id"],
            "parent_run_id": research["run_id"],
            "start_time": candidates["start_time"],
        }
    )
    tuned = stage_runs(
        store,
        experiment,
        "optimize",
        tag_keys=("optimize.best_family", "optimize.calibration"),
        metric_keys=_OPTIMIZE_METRICS,
    )
    tuned = tuned[tuned["run_id"].isin(_optimize_runs_of(store, experiment, research["run_id"]))]
    tuned_rows = pd.DataFrame(
        {
            "stage": "optimize",
            "name": tuned["run_name"],
            "family": tuned["optimize.best_family"],
            **{key: tuned[key] for key in _OPTIMIZE_METRICS},
            "run_id": tuned["run_id"],
            "parent_run_id": research["run_id"],
            "start_time": tuned["start_time"],
        }
    )
    frames = [frame for frame in (tuned_rows, rows) if not frame.empty]
    if not frames:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    board = pd.concat(frames, ignore_index=True).reindex(columns=LEADERBOARD_COLUMNS)
    board = board.sort_values(["cv_roc_auc", "stage"], ascending=[False, True], kind="mergesort")
    return board.reset_index(drop=True)


def _optimize_runs_of(store: Store, experiment: str | None, research_run_id: str) -> list[str]:
    frame = runs_frame(
        store,
        experiment,
        where_tags={_STAGE: "optimize", _ROLE: "stage", "optimize.research_run_id": research_run_id},
    )
    return frame["run_id"].tolist()


def trials(store: Store, experiment: str | None, optimize_run_id: str | None = None) -> pd.DataFrame:
    """Trial child runs of an optimization run (the latest by default), long format:
    one row per (trial, hyperparameter) with the trial's CV scores."""
    columns = ["run_id", "family", "param", "value", "cv_roc_auc", "cv_expected_cost"]
    if optimize_run_id is None:
        latest = latest_stage_run(store, experiment, "optimize")
        if latest is None:
            return pd.DataFrame(columns=columns)
        optimize_run_id = latest["run_id"]
    children = runs_frame(
        store,
        experiment,
        where_tags={_PARENT: optimize_run_id, _ROLE: "trial"},
        tag_keys=(_FAMILY,),
        metric_keys=("cv_roc_auc", "cv_expected_cost"),
    )
    if children.empty:
        return pd.DataFrame(columns=columns)
    params = store.table("params")
    values = _query(
        store,
        sa.select(params.c.run_uuid.label("run_id"), params.c.key.label("param"), params.c.value).where(
            params.c.run_uuid.in_(sa.bindparam("ids", children["run_id"].tolist(), expanding=True)),
            params.c.key != "family",  # the optimize stage also logs the family as a param
        ),
    )
    merged = values.merge(
        children[["run_id", _FAMILY, "cv_roc_auc", "cv_expected_cost"]], on="run_id", how="inner"
    )
    merged = merged.rename(columns={_FAMILY: "family"})
    return merged.reindex(columns=columns).sort_values(["family", "param", "run_id"]).reset_index(drop=True)


def _version_tags(store: Store, model_name: str | None, keys: Sequence[str]) -> pd.DataFrame:
    tags = store.table("model_version_tags")
    statement = sa.select(tags.c.name, tags.c.version, tags.c.key, tags.c.value).where(
        tags.c.key.in_(sa.bindparam("keys", list(keys), expanding=True))
    )
    if model_name is not None:
        statement = statement.where(tags.c.name == sa.bindparam("name", value=model_name))
    return _query(store, statement)


def _aliases(store: Store, model_name: str | None) -> pd.DataFrame:
    if not store.has("registered_model_aliases"):
        return pd.DataFrame(columns=["name", "version", "aliases"])
    table = store.table("registered_model_aliases")
    statement = sa.select(table.c.name, table.c.version, table.c.alias)
    if model_name is not None:
        statement = statement.where(table.c.name == sa.bindparam("name", value=model_name))
    frame = _query(store, statement)
    if frame.empty:
        return pd.DataFrame(columns=["name", "version", "aliases"])
    return (
        frame.sort_values("alias")
        .groupby(["name", "version"], as_index=False)["alias"]
        .agg(",".join)
        .rename(columns={"alias": "aliases"})
    )


def champion_history(store: Store, model_name: str | None) -> pd.DataFrame:
    """Every registered version (newest first) with its gate decision, aliases and when."""
    columns = ["name", "version", "created", "aliases", *_VERSION_TAGS, "run_id", "status"]
    if not store.has("model_versions", "model_version_tags"):
        return pd.DataFrame(columns=columns)
    versions = store.table("model_versions")
    statement = sa.select(
        versions.c.name,
        versions.c.version,
        versions.c.creation_time,
        versions.c.run_id,
        versions.c.status,
    ).where(versions.c.current_stage != "Deleted_Internal")
    if model_name is not None:
        statement = statement.where(versions.c.name == sa.bindparam("name", value=model_name))
    frame = _query(store, statement)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    tags = _version_tags(store, model_name, _VERSION_TAGS)
    if not tags.empty:
        wide = tags.pivot_table(index=["name", "version"], columns="key", values="value", aggfunc="first")
        frame = frame.merge(wide.reset_index(), on=["name", "version"], how="left")
    frame = frame.merge(_aliases(store, model_name), on=["name", "version"], how="left")
    frame["aliases"] = frame["aliases"].fillna("")
    frame["created"] = pd.to_datetime(frame["creation_time"], unit="ms", utc=True)
    frame = frame.reindex(columns=columns)
    for key in ("test_roc_auc", "test_expected_cost", "threshold"):
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    return frame.sort_values(["name", "version"], ascending=[True, False]).reset_index(drop=True)


def gate_decisions(store: Store, experiment: str | None, limit: int = 20) -> pd.DataFrame:
    """Register runs, newest first: which version, what the gate decided and why."""
    keys = (
        "register.model_name",
        "register.version",
        "register.decision",
        "register.reason",
        "register.optimize_run_id",
    )
    frame = stage_runs(store, experiment, "register", tag_keys=keys, limit=limit)
    return frame.rename(columns={key: key.removeprefix("register.") for key in keys})


def run_durations(store: Store, experiment: str | None) -> pd.DataFrame:
    """Per stage: how many parent runs, how many finished or failed, and their wall-clock seconds."""
    runs, tags = store.table("runs"), store.table("tags")
    stage = tags.alias("stage_tag")
    seconds = (runs.c.end_time - runs.c.start_time) / 1000.0
    finished = sa.case((runs.c.status == "FINISHED", 1), else_=0)
    failed = sa.case((runs.c.status.in_(("FAILED", "KILLED")), 1), else_=0)
    statement = (
        sa.select(
            stage.c.value.label("stage"),
            sa.func.count().label("runs"),
            sa.func.sum(finished).label("finished"),
            sa.func.sum(failed).label("failed"),
            sa.func.avg(seconds).label("mean_seconds"),
            sa.func.min(seconds).label("min_seconds"),
            sa.func.max(seconds).label("max_seconds"),
            sa.func.max(runs.c.start_time).label("last_start"),
        )
        .select_from(runs.join(stage, sa.and_(stage.c.run_uuid == runs.c.run_uuid, stage.c.key == _STAGE)))
        .where(runs.c.lifecycle_stage == "active", _tag_exists(store, runs, _ROLE, "stage"))
        .group_by(stage.c.value)
        .order_by(stage.c.value)
    )
    if experiment is not None:
        statement = statement.where(runs.c.experiment_id == sa.bindparam("experiment", value=int(experiment)))
    frame = _query(store, statement)
    for column in ("mean_seconds", "min_seconds", "max_seconds"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["last_start"] = pd.to_datetime(frame["last_start"], unit="ms", utc=True)
    return frame


def metric_summary(store: Store, experiment: str | None = None) -> pd.DataFrame:
    """Per metric key, over the full metric history: rows, runs, min, mean, max (aggregated in SQL)."""
    metrics, runs = store.table("metrics"), store.table("runs")
    statement = sa.select(
        metrics.c.key,
        sa.func.count().label("rows"),
        sa.func.count(sa.distinct(metrics.c.run_uuid)).label("runs"),
        sa.func.min(metrics.c.value).label("min"),
        sa.func.avg(metrics.c.value).label("mean"),
        sa.func.max(metrics.c.value).label("max"),
    )
    if experiment is not None:
        statement = statement.select_from(metrics.join(runs, runs.c.run_uuid == metrics.c.run_uuid)).where(
            runs.c.experiment_id == sa.bindparam("experiment", value=int(experiment))
        )
    return _query(store, statement.group_by(metrics.c.key).order_by(metrics.c.key))


def lineage(store: Store, experiment: str | None, model_name: str | None = None) -> pd.DataFrame:
    """The latest pipeline run's chain: dataset digest -> research -> optimization -> registered version.

    Walks back from the newest register run (else the newest optimization, else research run)
    through the run ids each stage recorded.
    """
    columns = ["step", "run_id", "status", "start_time", "dataset_digest", "detail"]
    steps: list[dict[str, Any]] = []
    register = latest_stage_run(
        store,
        experiment,
        "register",
        tag_keys=("register.optimize_run_id", "register.model_name", "register.version", "register.decision"),
    )
    optimize_id = register["register.optimize_run_id"] if register is not None else None
    optimize = _stage_run_by_id(store, experiment, "optimize", optimize_id)
    research_id = optimize["optimize.research_run_id"] if optimize is not None else None
    research = _stage_run_by_id(store, experiment, "research", research_id)
    if research is not None:
        steps.append(
            {
                "step": "dataset",
                "dataset_digest": research[_DIGEST],
                "detail": f"train {research['dataset.train_digest']}, test {research['dataset.test_digest']}",
            }
        )
        steps.append(_step("research", research, f"best candidate {research['research.best_candidate']}"))
    if optimize is not None:
        detail = (
            f"family {optimize['optimize.best_family']}, calibration {optimize['optimize.calibration']}, "
            f"threshold {optimize['optimize.threshold']}"
        )
        steps.append(_step("optimize", optimize, detail))
    if register is not None:
        steps.append(_step("register", register, f"decision {register['register.decision']}"))
        if register["register.version"]:
            steps.append(
                {
                    "step": "model_version",
                    "run_id": register["run_id"],
                    "detail": f"{register['register.model_name']} v{register['register.version']}",
                }
            )
    return pd.DataFrame(steps, columns=columns)


def _step(name: str, run: pd.Series, detail: str) -> dict[str, Any]:
    return {
        "step": name,
        "run_id": run["run_id"],
        "status": run["status"],
        "start_time": run["start_time"],
        "dataset_digest": run.get(_DIGEST),
        "detail": detail,
    }


def _stage_run_by_id(
    store: Store, experiment: str | None, stage: str, run_id: str | None
) -> pd.Series | None:
    keys = (
        _DIGEST,
        "dataset.train_digest",
        "dataset.test_digest",
        "research.best_candidate",
        "optimize.research_run_id",
        "optimize.best_family",
        "optimize.calibration",
        "optimize.threshold",
    )
    if run_id:
        frame = runs_frame(store, experiment, run_ids=[run_id], tag_keys=keys)
        return None if frame.empty else frame.iloc[0]
    return latest_stage_run(store, experiment, stage, tag_keys=keys)


# --- Stage 3: one registration at a time per registered model --------------------------------------


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (Python's ``hash`` differs between processes)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(uri: str, key: str, timeout_seconds: float = 120.0) -> Iterator[None]:
    """Hold a PostgreSQL transaction-level advisory lock on ``key`` for the ``with`` block.

    ``pg_advisory_xact_lock`` waits for the lock and frees it when the transaction ends:
    on leaving the block, or when the process dies and its connection drops, so a crash
    never leaves the registry locked. Raises TrackingUnavailableError after ``timeout_seconds``.
    """
    engine = sa.create_engine(
        sqlalchemy_url(uri), connect_args={"connect_timeout": 5}, poolclass=sa.pool.NullPool
    )
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(
                sa.text("SELECT set_config('lock_timeout', :ms, true)"),
                {"ms": str(int(timeout_seconds * 1000))},
            )
            try:
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(key)})
            except sa.exc.OperationalError as error:
                reason = redact(first_line(error))
                raise TrackingUnavailableError(
                    f"could not take the lock {key!r} within {timeout_seconds:g} s: {reason}"
                ) from None
            yield
    finally:
        engine.dispose()
