"""Stage 4, results (``mlflow-results``): every MLflow table as CSV, the views people ask for,
a short ``summary.md`` for a job summary and a ``manifest.json`` of what was written.

Reads the tracking database directly through :mod:`pipeline.report` (all SQL lives there)
and the registry through :mod:`pipeline.tracking`. Whole tables are streamed to disk in
chunks, so memory stays bounded however large the ``metrics`` table has grown.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipeline import report, tracking
from pipeline.config import PipelineConfig
from pipeline.files import (
    write_csv_atomic,
    write_csv_chunks_atomic,
    write_json_atomic,
    write_stream_atomic,
    write_text_atomic,
)
from pipeline.settings import redact, redact_uri, tracking_uri

logger = logging.getLogger(__name__)

SUMMARY_LEADERBOARD_ROWS = 5
TEST_SCORES_ARTIFACT = "evaluation/test_scores.csv"
_SUMMARY_LEADERBOARD_COLUMNS = ["stage", "name", "family", "cv_roc_auc", "test_roc_auc", "test_expected_cost"]


@dataclass(frozen=True)
class Views:
    """The derived tables of one store and experiment (empty frames when a stage never ran)."""

    leaderboard: pd.DataFrame
    champion_history: pd.DataFrame
    gate_decisions: pd.DataFrame
    run_durations: pd.DataFrame
    lineage: pd.DataFrame
    trials: pd.DataFrame
    metric_summary: pd.DataFrame
    registered_models: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class ResultsResult:
    output_dir: Path
    safe_uri: str
    experiment_id: str | None
    table_counts: pd.DataFrame
    views: Views
    files: list[dict[str, Any]]
    summary: str
    seconds: float
    champion: dict[str, Any] | None = field(default=None)

    def describe(self) -> str:
        loaded = self.table_counts[self.table_counts["loaded"]]
        lines = [
            f"results of {self.safe_uri} written to {self.output_dir} in {self.seconds:.1f} s",
            f"{len(self.files)} files; {len(self.table_counts)} tables, "
            f"{int(loaded['rows'].sum())} rows in the {len(loaded)} loaded ones",
        ]
        if self.champion:
            lines.append(
                f"champion: {self.champion['name']} v{self.champion['version']} "
                f"(test ROC AUC {_number(self.champion.get('test_roc_auc'))})"
            )
        else:
            lines.append("champion: none registered")
        board = self.views.leaderboard
        if not board.empty:
            shown = board[_SUMMARY_LEADERBOARD_COLUMNS].head(SUMMARY_LEADERBOARD_ROWS)
            lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return "\n".join(lines)


def _number(value: Any, digits: int = 4) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if pd.isna(number) else f"{number:.{digits}f}"


def build_views(store: report.Store, uri: str, experiment: str | None, model_name: str) -> Views:
    """Every derived table; empty frames (with their columns) when the experiment or a stage is absent."""
    if experiment is None:
        empty = pd.DataFrame()
        return Views(
            leaderboard=pd.DataFrame(columns=report.LEADERBOARD_COLUMNS),
            champion_history=report.champion_history(store, model_name),
            gate_decisions=empty,
            run_durations=empty,
            lineage=empty,
            trials=empty,
            metric_summary=empty,
            registered_models=tracking.registered_models_frame(uri, model_name),
        )
    return Views(
        leaderboard=report.leaderboard(store, experiment),
        champion_history=report.champion_history(store, model_name),
        gate_decisions=report.gate_decisions(store, experiment),
        run_durations=report.run_durations(store, experiment),
        lineage=report.lineage(store, experiment, model_name),
        trials=report.trials(store, experiment),
        metric_summary=report.metric_summary(store, experiment),
        registered_models=tracking.registered_models_frame(uri, model_name),
    )


def champion_of(history: pd.DataFrame) -> dict[str, Any] | None:
    """The version carrying the ``champion`` alias, as a plain dict."""
    if history.empty:
        return None
    holders = history[history["aliases"].fillna("").str.split(",").map(lambda a: "champion" in a)]
    if holders.empty:
        return None
    return {k: (None if _missing(v) else v) for k, v in holders.iloc[0].to_dict().items()}


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def champion_text(champion: dict[str, Any] | None) -> str:
    """One Markdown sentence about the champion version."""
    if champion is None:
        return "_No version holds the `champion` alias._"
    return (
        f"Champion: `{champion['name']}` version {champion['version']}: test ROC AUC "
        f"{_number(champion.get('test_roc_auc'))}, test expected cost "
        f"{_number(champion.get('test_expected_cost'))}, threshold {_number(champion.get('threshold'))}, "
        f"from optimization run `{champion.get('optimize_run_id') or champion.get('run_id')}`."
    )


def roc_inputs(uri: str, history: pd.DataFrame) -> dict[str, tuple]:
    """``{label: (y_true, scores)}`` for the champion and challenger versions, from the
    ``evaluation/test_scores.csv`` artifact of the optimization run behind each one."""
    curves: dict[str, tuple] = {}
    for alias in ("champion", "challenger"):
        holders = history[history["aliases"].fillna("").str.split(",").map(lambda a, x=alias: x in a)]
        if holders.empty:
            continue
        row = holders.iloc[0]
        run_id = row["optimize_run_id"] if isinstance(row["optimize_run_id"], str) else row["run_id"]
        scores = tracking.load_artifact_frame(uri, run_id, TEST_SCORES_ARTIFACT) if run_id else None
        if scores is not None and {"y_true", "score"} <= set(scores.columns):
            curves[f"{alias} v{row['version']}"] = (scores["y_true"].to_numpy(), scores["score"].to_numpy())
    return curves


def summary_markdown(
    safe_uri: str,
    experiment_name: str,
    counts: pd.DataFrame,
    views: Views,
    revision: str | None,
) -> str:
    """A page short enough for ``$GITHUB_STEP_SUMMARY``: top of the leaderboard, champion,
    last gate decision and row counts of the tables people read."""
    parts = [
        "# MLflow results",
        f"Store `{safe_uri}`, experiment `{experiment_name}`, schema revision `{revision or 'unknown'}`, "
        f"MLflow {mlflow.__version__}.",
        "",
        "## Leaderboard",
    ]
    board = views.leaderboard
    if board.empty:
        parts.append("_No research run in this experiment yet._")
    else:
        top = board[_SUMMARY_LEADERBOARD_COLUMNS].head(SUMMARY_LEADERBOARD_ROWS)
        # Research candidates have no test metrics: blank cells, not "nan".
        top = top.astype(object).where(top.notna(), None)
        parts.append(top.to_markdown(index=False, floatfmt=".4f", missingval=""))
    parts += ["", "## Champion"]
    parts.append(champion_text(champion_of(views.champion_history)))
    parts += ["", "## Last gate decision"]
    gates = views.gate_decisions
    if gates.empty:
        parts.append("_No register run yet._")
    else:
        last = gates.iloc[0]
        parts.append(
            f"**{last.get('decision') or 'unknown'}** for `{last.get('model_name')}` version "
            f"{last.get('version') or 'n/a'} ({last['start_time']:%Y-%m-%d %H:%M} UTC): "
            f"{last.get('reason') or 'no reason recorded'}"
        )
    loaded = counts[counts["loaded"]][["table", "rows"]]
    others = counts[~counts["loaded"]]
    parts += [
        "",
        "## Table row counts",
        loaded.to_markdown(index=False),
        "",
        f"{len(others)} other tables hold {int(others['rows'].sum())} rows (see `table_counts.csv`).",
        "",
    ]
    return redact("\n".join(parts))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry(output_dir: Path, path: Path, rows: int | None) -> dict[str, Any]:
    return {
        "path": path.relative_to(output_dir).as_posix(),
        "rows": rows,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
    }


def run(config: PipelineConfig, output_dir: Path | str | None = None) -> ResultsResult:
    """Write every table, the views, ``summary.md`` and ``manifest.json`` to ``output_dir``."""
    started = time.perf_counter()
    uri = tracking_uri(config.root)
    output = Path(output_dir) if output_dir is not None else config.resolve(config.results.output_dir)
    store = report.open_store(uri)
    logger.info("reading %s (%d tables)", store.safe_uri, len(store.table_names))
    files: list[dict[str, Any]] = []
    try:
        counts = report.table_counts(store)
        revision = report.schema_revision(store)
        experiment = report.experiment_id(store, config.tracking.experiment)
        if experiment is None:
            logger.warning("experiment '%s' not found: views are empty", config.tracking.experiment)

        for name in report.PEOPLE_TABLES:
            if not store.has(name):
                continue
            path = output / "tables" / f"{name}.csv"
            if report.can_copy(store, name):
                rows = write_stream_atomic(
                    path, lambda stream, n=name: report.copy_table_csv(store, n, stream)
                )
            else:
                rows = write_csv_chunks_atomic(path, report.iter_table(store, name))
            files.append(_entry(output, path, rows))
        path = write_csv_atomic(output / "table_counts.csv", counts)
        files.append(_entry(output, path, len(counts)))

        views = build_views(store, uri, experiment, config.registration.model_name)
        for name, frame in views.frames().items():
            path = write_csv_atomic(output / "views" / f"{name}.csv", report.redact_frame(frame.copy()))
            files.append(_entry(output, path, len(frame)))
    finally:
        store.close()

    summary = summary_markdown(store.safe_uri, config.tracking.experiment, counts, views, revision)
    path = write_text_atomic(output / "summary.md", summary)
    files.append(_entry(output, path, None))
    seconds = time.perf_counter() - started
    manifest = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tracking_uri": redact_uri(uri),
        "experiment": config.tracking.experiment,
        "experiment_id": experiment,
        "model_name": config.registration.model_name,
        "schema_revision": revision,
        "mlflow_version": mlflow.__version__,
        "seconds": round(seconds, 3),
        "files": files,
    }
    write_json_atomic(output / "manifest.json", manifest)
    logger.info("wrote %d files to %s in %.1f s", len(files) + 1, output, seconds)
    return ResultsResult(
        output_dir=output,
        safe_uri=store.safe_uri,
        experiment_id=experiment,
        table_counts=counts,
        views=views,
        files=files,
        summary=summary,
        seconds=seconds,
        champion=champion_of(views.champion_history),
    )


def leaderboard_display(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as people read it: rounded, without the bookkeeping columns."""
    shown = board.drop(columns=["parent_run_id", "start_time"], errors="ignore").copy()
    shown["run_id"] = shown["run_id"].astype("string").str.slice(0, 8)
    return shown.round(4)
