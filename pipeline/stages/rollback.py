"""Rollback (``python -m pipeline rollback``): put the previous production version back.

The previous version is the one ``@production`` held before the current one was deployed, read
from the alias history (:mod:`pipeline.tracking.alias_history`); repeated rollbacks step further
back. It passes the same smoke test as a deploy before ``@production`` and ``@champion`` both move
to it, so the next deploy does not bring the withdrawn version straight back.
"""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.deployment import Release, release
from pipeline.errors import LookupFailedError
from pipeline.tracking import keys, registry, runs
from pipeline.tracking.alias_history import rollback_target


def run(config: PipelineConfig) -> Release:
    """Roll ``@production`` (and ``@champion``) back one deployment."""
    name = config.registration.model_name
    session = runs.connect(config)
    production = registry.alias_version(session, name, keys.ALIAS_PRODUCTION)
    if production is None:
        raise LookupFailedError(f"{name} has no @production version to roll back")
    current = str(production.version)
    target = rollback_target(registry.alias_history(session, name), keys.ALIAS_PRODUCTION, current)
    if target is None:
        raise LookupFailedError(
            f"the alias history of {name} shows no production version before v{current} to roll back to"
        )
    return release(
        config,
        session,
        keys.STAGE_ROLLBACK,
        target,
        current,
        reason=f"rolled back from v{current}; v{target} passed the smoke test",
        move_champion=True,
    )
