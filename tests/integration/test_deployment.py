"""pipeline.deployment's guards that need no scoring server (the releases themselves: test_deploy)."""

from __future__ import annotations

import pytest

from pipeline import deployment
from pipeline.errors import DataError, DeployError
from pipeline.scoring import TEXT, InputColumn, ScoringSpec
from pipeline.stages import register
from pipeline.tracking import keys, registry, runs
from pipeline.tracking.model_io import LoadedModel
from tests.conftest import make_config, small_params
from tests.integration.fakes import fake_optimize_run, fake_research_run

pytestmark = pytest.mark.integration


def test_production_moved_by_someone_else_meanwhile_moves_nothing(sqlite_store):
    config = make_config(small_params(register={"min_test_roc_auc": 0.5}))
    register.run(config, optimize_run_id=fake_optimize_run(config, fake_research_run(config, {"dummy": 0.5})))
    session = runs.connect(config)
    name = config.registration.model_name
    other = registry.MoveReason(keys.STAGE_DEPLOY, "another deploy finished first", None, "-")
    registry.move_alias(session, name, keys.ALIAS_PRODUCTION, "1", other)
    mine = registry.MoveReason(keys.STAGE_ROLLBACK, "this one found no production", "run-1", "-")
    with pytest.raises(DeployError, match=r"@production of .* moved to v1 while this rollback ran"):
        deployment.move_to_production(config, session, "1", None, True, mine)
    assert [m.actor for m in registry.alias_history(session, name)] == ["register", "deploy"]


def test_held_out_rows_need_every_column_the_model_takes(small_config):
    loaded = LoadedModel("models:/m/1", None, {}, None, ScoringSpec(0.5, (InputColumn("not_in_data", TEXT),)))
    with pytest.raises(DataError, match=r"lacks column\(s\) model models:/m/1 needs: not_in_data"):
        deployment.holdout_rows(small_config, loaded)


def test_held_out_rows_are_the_test_part_typed_as_users_hold_them(small_config):
    from pipeline.scoring import INTEGER

    loaded = LoadedModel(
        "models:/m/1",
        None,
        {},
        None,
        ScoringSpec(0.5, (InputColumn("age", INTEGER), InputColumn("purpose", TEXT))),
    )
    rows = deployment.holdout_rows(small_config, loaded)
    assert len(rows) == 250  # the whole test part: fewer rows than deploy.smoke_rows
    assert rows["age"].dtype == "int64"
    assert list(rows.columns) == ["age", "purpose"]
