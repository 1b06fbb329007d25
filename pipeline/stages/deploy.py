"""Continuous delivery (``mlflow-loan-deploy`` / ``python -m pipeline deploy``): put ``@champion`` in
production after it passes a smoke test behind a real scoring server.

Deploys only what the gate promoted: when ``@champion`` differs from ``@production``, the champion
version is served with ``mlflow models serve`` on a free loopback port and smoke-tested (see
:mod:`pipeline.deployment`); ``@production`` moves to it only when every check passed. With
nothing new (no champion, or the champion already in production) it does nothing: no run, exit 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.deployment import Release, release
from pipeline.tracking import keys, registry, runs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployResult:
    model_name: str
    champion: str | None
    production: str | None  # after the run
    release: Release | None  # None: nothing to deploy

    def describe(self) -> str:
        if self.release is not None:
            return self.release.describe()
        if self.champion is None:
            return f"nothing to deploy: {self.model_name} has no @champion"
        return f"nothing to deploy: {self.model_name} @champion v{self.champion} is already @production"


def run(config: PipelineConfig) -> DeployResult:
    """Deploy ``@champion`` when it is not ``@production`` yet."""
    name = config.registration.model_name
    session = runs.connect(config)
    champion = registry.alias_version(session, name, keys.ALIAS_CHAMPION)
    production = registry.alias_version(session, name, keys.ALIAS_PRODUCTION)
    champion_version = None if champion is None else str(champion.version)
    production_version = None if production is None else str(production.version)
    if champion_version is None or champion_version == production_version:
        result = DeployResult(name, champion_version, production_version, None)
        logger.info(result.describe())
        return result
    done = release(
        config,
        session,
        keys.STAGE_DEPLOY,
        champion_version,
        production_version,
        reason=f"@champion v{champion_version} passed the smoke test",
    )
    return DeployResult(name, champion_version, champion_version, done)
