"""Rollback's refusals (the rollback itself runs in test_deploy's release cycle, after real deploys)."""

from __future__ import annotations

import pytest

from pipeline.errors import LookupFailedError
from pipeline.stages import register, rollback
from pipeline.tracking import keys, lookups, registry, runs
from tests.conftest import make_config, small_params
from tests.integration.fakes import fake_optimize_run, fake_research_run

pytestmark = pytest.mark.integration


@pytest.fixture
def config(sqlite_store):
    return make_config(small_params(register={"min_test_roc_auc": 0.5}))


def test_rollback_without_production_is_a_lookup_error(config):
    with pytest.raises(LookupFailedError, match="has no @production version to roll back"):
        rollback.run(config)


def test_rollback_of_a_version_set_by_hand_is_refused_rather_than_guessed(config):
    """@production set outside deploy leaves no deployment to step back from: nothing is moved."""
    research_id = fake_research_run(config, {"dummy": 0.5})
    register.run(config, optimize_run_id=fake_optimize_run(config, research_id))
    session = runs.connect(config)
    name = config.registration.model_name
    registry.move_alias(
        session, name, keys.ALIAS_PRODUCTION, "1", registry.MoveReason("by hand", "", None, "-")
    )
    with pytest.raises(LookupFailedError, match="no production version before v1 to roll back to"):
        rollback.run(config)
    assert str(registry.alias_version(session, name, keys.ALIAS_PRODUCTION).version) == "1"
    assert lookups.search_stage_runs(session, keys.STAGE_ROLLBACK, status=None) == []
