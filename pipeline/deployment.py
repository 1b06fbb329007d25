"""Releasing a model version: smoke-test it behind a real scoring server, then move ``@production``.

Shared by the deploy and rollback commands. :func:`release` records one run (stage ``deploy`` or
``rollback``) with the version, every check and its seconds; only when every check passed does it
move ``@production`` (and, for a rollback, ``@champion``), under the registry lock and only if
``@production`` is still where it was when the run began. A failed check leaves every alias where
it was and raises :class:`~pipeline.errors.DeployError` with the reason, which the run records.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipeline import serving, smoke
from pipeline.config import PipelineConfig
from pipeline.data import load_dataset, split_dataset
from pipeline.errors import DataError, DeployError, ServingError
from pipeline.scoring import raw_rows, score
from pipeline.tracking import keys, registry, runs
from pipeline.tracking.model_io import LoadedModel, load_model
from pipeline.tracking.session import TrackingSession

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """What a deploy or rollback did."""

    action: str  # keys.STAGE_DEPLOY or keys.STAGE_ROLLBACK
    model_name: str
    version: str
    from_version: str | None
    run_id: str
    checks: list[smoke.Check]
    start_seconds: float

    def describe(self) -> str:
        lines = [
            f"{self.action} run {self.run_id}: {self.model_name} @production "
            f"v{self.from_version or '-'} -> v{self.version}",
            f"  scoring server up in {self.start_seconds:.1f} s",
        ]
        lines += [
            f"  {check.name}: {'ok' if check.passed else 'FAILED'} ({check.seconds:.2f} s) {check.detail}"
            for check in self.checks
        ]
        return "\n".join(lines)


def holdout_rows(config: PipelineConfig, loaded: LoadedModel) -> pd.DataFrame:
    """The first ``deploy.smoke_rows`` held-out test rows, typed as users hold them."""
    dataset = load_dataset(config)
    split = split_dataset(dataset, config.split.test_size, config.seed)
    columns = loaded.recorded_spec.columns
    missing = [c.name for c in columns if c.name not in dataset.features.columns]
    if missing:
        raise DataError(f"the data lacks column(s) model {loaded.uri} needs: {', '.join(missing)}")
    rows = dataset.features.iloc[split.test_index[: config.deploy.smoke_rows]]
    return raw_rows(rows, columns).reset_index(drop=True)


def smoke_test(
    url: str, loaded: LoadedModel, holdout: pd.DataFrame, config: PipelineConfig
) -> list[smoke.Check]:
    """The checks against a running scoring server, each timed; every one runs, whatever failed before."""
    settings = config.deploy
    timeout = settings.request_timeout_seconds
    scorer = loaded.scorer
    checks: list[smoke.Check] = []

    ping = serving.request(f"{url}/ping", timeout=timeout)
    checks.append(smoke.Check(smoke.PING, ping.status == 200, ping.seconds, f"HTTP {ping.status}"))

    def scored(name: str, frame: pd.DataFrame, body: str) -> None:
        answer = serving.request(f"{url}/invocations", body, timeout=timeout)
        try:
            parsed = answer.json() if answer.status == 200 else None
        except ValueError:
            parsed = None
        passed, detail = smoke.judge_scores(
            score(scorer, frame).output, answer.status, parsed, settings.tolerance
        )
        if answer.status != 200:
            detail = f"{detail}: {answer.message()[:300]}"
        checks.append(smoke.Check(name, passed, answer.seconds, detail))

    if loaded.example is None:
        checks.append(smoke.Check(smoke.INPUT_EXAMPLE, False, 0.0, "the model has no logged input example"))
    else:
        scored(
            smoke.INPUT_EXAMPLE, loaded.example, loaded.serving_example or smoke.split_body(loaded.example)
        )
    scored(smoke.HELD_OUT_ROWS, holdout, smoke.records_body(holdout))

    body, words = smoke.malformed_body(holdout, loaded.recorded_spec.columns)
    refused = serving.request(f"{url}/invocations", body, timeout=timeout)
    passed, detail = smoke.judge_refusal(refused.status, refused.message(), words)
    checks.append(smoke.Check(smoke.MALFORMED_REQUEST, passed, refused.seconds, detail))
    return checks


def _log_checks(
    session: TrackingSession, run_id: str, checks: list[smoke.Check], start_seconds: float, log_path: Path
) -> None:
    metrics = {f"smoke_{check.name}_seconds": check.seconds for check in checks}
    metrics.update(
        {
            "smoke_server_start_seconds": start_seconds,
            "smoke_checks_passed": sum(check.passed for check in checks),
            "smoke_checks_failed": sum(not check.passed for check in checks),
        }
    )
    runs.log_batch(session, run_id, metrics=metrics)
    runs.log_dict(
        session, run_id, {"checks": [check.to_dict() for check in checks]}, keys.ARTIFACT_SMOKE_TEST
    )
    if log_path.is_file():
        runs.log_text(
            session, run_id, log_path.read_text(encoding="utf-8", errors="replace"), keys.ARTIFACT_SERVER_LOG
        )


def move_to_production(
    config: PipelineConfig,
    session: TrackingSession,
    version: str,
    from_version: str | None,
    move_champion: bool,
    why: registry.MoveReason,
) -> None:
    """Move the aliases, if ``@production`` is still where the release found it."""
    name = config.registration.model_name
    with registry.registry_lock(session, name):
        now = registry.alias_version(session, name, keys.ALIAS_PRODUCTION)
        now_version = None if now is None else str(now.version)
        if now_version != from_version:
            raise DeployError(
                f"@production of {name} moved to v{now_version} while this {why.actor} ran; "
                f"nothing was moved (rerun it)"
            )
        registry.move_alias(session, name, keys.ALIAS_PRODUCTION, version, why)
        if move_champion:
            registry.move_alias(session, name, keys.ALIAS_CHAMPION, version, why)


def release(
    config: PipelineConfig,
    session: TrackingSession,
    action: str,
    version: str,
    from_version: str | None,
    reason: str,
    move_champion: bool = False,
) -> Release:
    """Smoke-test ``version`` behind a scoring server; when every check passes, put it in production.

    ``from_version`` is ``@production`` as the caller found it. Raises DeployError, after recording
    the run as failed, when a check fails.
    """
    name = config.registration.model_name
    model_uri = f"models:/{name}/{version}"
    deploy_tags = {
        keys.TAG_DEPLOY_MODEL_NAME: name,
        keys.TAG_DEPLOY_VERSION: str(version),
        keys.TAG_DEPLOY_FROM_VERSION: from_version or "",
    }
    run_name = f"{action}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with (
        runs.stage_run(session, run_name, {**runs.base_tags(config, action), **deploy_tags}) as run_id,
        tempfile.TemporaryDirectory(prefix="loan-serving-") as folder,
        runs.quiet_artifact_downloads(),
    ):
        loaded = load_model(model_uri)
        holdout = holdout_rows(config, loaded)
        log_path = Path(folder) / "server.log"
        started = time.perf_counter()
        try:
            with serving.scoring_server(
                model_uri, session.uri, config.deploy.startup_timeout_seconds, log_path
            ) as (url, start_seconds):
                checks = smoke_test(url, loaded, holdout, config)
        except ServingError as error:
            start_seconds = time.perf_counter() - started
            checks = [smoke.Check(smoke.START, False, start_seconds, str(error))]
        _log_checks(session, run_id, checks, start_seconds, log_path)
        failed = smoke.failures(checks)
        if failed:
            why = f"v{version} failed the smoke test ({failed}); @production stays at v{from_version or '-'}"
            runs.log_batch(
                session,
                run_id,
                tags={keys.TAG_DEPLOY_OUTCOME: keys.DEPLOY_FAILED, keys.TAG_DEPLOY_REASON: why},
            )
            raise DeployError(why)
        mover = registry.MoveReason(action, reason, run_id, runs.git_commit(config.root))
        move_to_production(config, session, str(version), from_version, move_champion, mover)
        runs.log_batch(
            session,
            run_id,
            tags={keys.TAG_DEPLOY_OUTCOME: keys.DEPLOY_DEPLOYED, keys.TAG_DEPLOY_REASON: reason},
        )
    logger.info("%s v%s is in production (%s)", name, version, action)
    return Release(action, name, str(version), from_version, run_id, checks, start_seconds)
