"""Stage 4, results (``mlflow-results``): every MLflow table as CSV, the views people ask for,
a short ``summary.md`` for a job summary and a ``manifest.json`` of what was written.

Reads a tracking database directly through :mod:`pipeline.queries` (all SQL lives there); a
tracking server through its API (:func:`pipeline.views.open_source` picks, and the summary and
manifest say which). The derived tables come from :mod:`pipeline.views`. Whole tables are streamed
to disk in chunks, so memory stays bounded however large the ``metrics`` table has grown.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.files import (
    publish,
    staging_folder,
    write_csv_atomic,
    write_csv_chunks_atomic,
    write_frame_csv_atomic,
    write_json_atomic,
    write_stream_atomic,
    write_text_atomic,
)
from pipeline.queries import tables
from pipeline.settings import tracking_uri
from pipeline.tracking import keys
from pipeline.tracking import store as tracking_store
from pipeline.views import (
    Views,
    build_views,
    champion_of,
    format_number,
    open_source,
    summary_markdown,
    top_of_leaderboard,
)

logger = logging.getLogger(__name__)

# What the results stage owns in its output folder; everything else there (the report's notebook
# and HTML, the status report) is left alone. manifest.json moves last: it vouches for the rest.
PUBLISHED_ENTRIES = ["tables", "views", "table_counts.csv", "summary.md"]


@dataclass(frozen=True)
class ResultsResult:
    output_dir: Path
    safe_uri: str
    source: str  # how the tables were read (views.Source.description)
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
            f"read through {self.source}",
            f"{len(self.files)} files; {len(self.table_counts)} tables, "
            f"{int(loaded['rows'].sum())} rows in the {len(loaded)} loaded ones",
        ]
        if self.champion:
            lines.append(
                f"champion: {self.champion['name']} v{self.champion['version']} "
                f"(test ROC AUC {format_number(self.champion.get(keys.VTAG_TEST_ROC_AUC))})"
            )
        else:
            lines.append("champion: none registered")
        if not self.views.leaderboard.empty:
            shown = top_of_leaderboard(self.views.leaderboard)
            lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return "\n".join(lines)


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
    if tracking_store.is_server(uri):
        tracking_store.wait_until_reachable(
            uri, config.tracking.connect_retries, config.tracking.connect_backoff_seconds
        )
    source = open_source(uri)
    store = source.store
    logger.info("reading %s through %s (%d tables)", source.safe_uri, source.kind, len(store.table_names))
    files: list[dict[str, Any]] = []
    # Everything is written aside and moved into place at the end: reports/ changes as a whole or not
    # at all, so a store lost mid-stage never leaves new tables beside an old manifest.
    final, output = output, staging_folder(output)
    try:
        counts = tables.table_counts(store)
        experiment = tables.experiment_id(store, config.tracking.experiment)
        if experiment is None:
            logger.warning("experiment '%s' not found: views are empty", config.tracking.experiment)

        for name in tables.PEOPLE_TABLES:
            if not store.has(name):
                continue
            path = output / "tables" / f"{name}.csv"
            frame = source.take_frame(name)
            if frame is not None:
                rows = write_frame_csv_atomic(path, tables.redact_frame(frame))
            elif tables.can_copy(store, name):
                rows = write_stream_atomic(
                    path, lambda stream, n=name: tables.copy_table_csv(store, n, stream)
                )
            else:
                rows = write_csv_chunks_atomic(path, tables.iter_table(store, name))
            files.append(_entry(output, path, rows))
        path = write_csv_atomic(output / "table_counts.csv", counts)
        files.append(_entry(output, path, len(counts)))

        views = build_views(store, uri, experiment, config.registration.model_name)
        for name, frame in views.frames().items():
            path = write_csv_atomic(output / "views" / f"{name}.csv", tables.redact_frame(frame.copy()))
            files.append(_entry(output, path, len(frame)))
        summary = summary_markdown(source, config.tracking.experiment, counts, views, experiment)
        path = write_text_atomic(output / "summary.md", summary)
        files.append(_entry(output, path, None))
        seconds = time.perf_counter() - started
        manifest = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tracking_uri": source.safe_uri,
            "source": source.kind,
            "source_description": source.description,
            "experiment": config.tracking.experiment,
            "experiment_id": experiment,
            "model_name": config.registration.model_name,
            "schema_revision": source.schema_revision,
            "mlflow_version": mlflow.__version__,
            "seconds": round(seconds, 3),
            "files": files,
        }
        write_json_atomic(output / "manifest.json", manifest)
        publish(output, final, [*PUBLISHED_ENTRIES, "manifest.json"])
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        source.close()
    logger.info("wrote %d files to %s in %.1f s", len(files) + 1, final, seconds)
    return ResultsResult(
        output_dir=final,
        safe_uri=source.safe_uri,
        source=source.description,
        experiment_id=experiment,
        table_counts=counts,
        views=views,
        files=files,
        summary=summary,
        seconds=seconds,
        champion=champion_of(views.champion_history),
    )
