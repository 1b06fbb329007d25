"""``python -m pipeline restore-baseline --from DIR``: main's store as the baseline of a pull request.

A pull-request run starts on an empty, throwaway database. This command restores into it the
``pg_dump`` and the artifact folder that the latest successful run on ``main`` published, moves the
artifact locations to this machine, and records on the experiment what was restored, so the gate
compares the pull request's model with main's real champion on the same held-out rows. Nothing
touches the team's store.

``DIR`` is where the workflow downloaded main's artifacts: ``DIR/mlflow-db/mlflow.dump`` with
``DIR/mlflow-db/artifact_root.txt`` (where the artifacts were on main's runner) and
``DIR/mlartifacts/``. Anything missing is no baseline, said plainly; the command still succeeds.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline import pgtools
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.queries.relocate import relocate_artifacts
from pipeline.settings import redact_uri, tracking_uri
from pipeline.tracking import keys, registry, store
from pipeline.tracking.runs import connect
from pipeline.tracking.session import artifact_location

logger = logging.getLogger(__name__)

DUMP = Path("mlflow-db") / "mlflow.dump"
ARTIFACT_ROOT_NOTE = Path("mlflow-db") / "artifact_root.txt"
ARTIFACTS = Path("mlartifacts")


@dataclass(frozen=True)
class BaselineResult:
    restored: bool
    reason: str
    champion_version: str | None = None
    relocated: int = 0

    def describe(self) -> str:
        if not self.restored:
            return f"no baseline: {self.reason}"
        champion = f"champion v{self.champion_version}" if self.champion_version else "no champion yet"
        return f"baseline restored: {self.reason}; {champion}; {self.relocated} artifact locations moved"


def missing_parts(source: Path) -> list[str]:
    """What a usable baseline needs and ``source`` lacks."""
    return [str(part) for part in (DUMP, ARTIFACT_ROOT_NOTE, ARTIFACTS) if not (source / part).exists()]


def _record(config: PipelineConfig, record: dict) -> str | None:
    """Note on the experiment what the comparison is against; the champion version, if any."""
    session = connect(config)
    session.client.set_experiment_tag(session.experiment_id, keys.TAG_BASELINE, json.dumps(record))
    champion = registry.alias_version(session, config.registration.model_name, keys.ALIAS_CHAMPION)
    return None if champion is None else str(champion.version)


def run(config: PipelineConfig, source: Path, source_url: str | None = None) -> BaselineResult:
    """Restore main's published store from ``source`` into the (empty) PostgreSQL tracking store."""
    uri = tracking_uri(config.root)
    if not store.is_postgres(uri):
        raise ConfigError(
            f"restore-baseline restores into a PostgreSQL tracking store, not {redact_uri(uri)}"
        )
    store.wait_until_reachable(uri, config.tracking.connect_retries, config.tracking.connect_backoff_seconds)
    source = Path(source)
    origin = source_url or str(source)
    missing = missing_parts(source)
    if missing:
        reason = (
            f"nothing to compare with: {', '.join(missing)} not found in {source} "
            "(no successful run on main yet, its artifacts expired, or main tracks to a team store)"
        )
        _record(config, {"restored": False, "reason": reason})
        logger.warning("no baseline: %s", reason)
        return BaselineResult(restored=False, reason=reason)

    # --clean: the service database may already hold MLflow's empty tables from a status check.
    pgtools.run(
        "pg_restore",
        uri,
        ["--clean", "--if-exists", "--no-owner", "--no-privileges", str((source / DUMP).resolve())],
        cwd=source,
    )
    current, expected = store.schema_revisions(uri)
    if current != expected:
        logger.info(
            "baseline schema at %s, this MLflow needs %s: migrating the throwaway copy", current, expected
        )
        store.migrate_schema(uri)
    old_root = (source / ARTIFACT_ROOT_NOTE).read_text(encoding="utf-8").strip()
    new_root = artifact_location(config).removeprefix("file://")
    if "://" in new_root:
        raise ConfigError(f"restore-baseline copies artifacts into a local folder, not {new_root}")
    shutil.copytree(source / ARTIFACTS, new_root, dirs_exist_ok=True)
    moved = relocate_artifacts(uri, old_root, new_root)
    champion = _record(
        config,
        {"restored": True, "source": origin, "restored_at": datetime.now(UTC).isoformat(timespec="seconds")},
    )
    logger.info("restored main's store from %s; champion %s", origin, champion or "none")
    return BaselineResult(
        restored=True,
        reason=f"main's store from {origin}",
        champion_version=champion,
        relocated=sum(moved.values()),
    )
