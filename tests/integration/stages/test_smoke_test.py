"""``python -m pipeline smoke-test``: the deploy smoke test against a server that is already running."""

from __future__ import annotations

import pytest
import yaml

from pipeline import cli, smoke
from pipeline.errors import DeployError, ServingError
from pipeline.serving import free_port
from pipeline.stages import smoke_test
from tests.conftest import PROJECT_ROOT, make_config, small_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_served_version_passes_every_check(use_champion_store, champion_server, tmp_path, capsys):
    store = use_champion_store
    result = smoke_test.run(store.config, store.version_uri, champion_server + "/")
    assert [check.name for check in result.checks] == list(smoke.CHECKS)
    assert all(check.passed for check in result.checks)
    assert "every check passed" in result.describe()

    raw = small_params(register={"min_test_roc_auc": 0.5})
    raw["dataset"]["path"] = str(PROJECT_ROOT / raw["dataset"]["path"])
    config_path = tmp_path / "params.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    code = cli.main(
        [
            "smoke-test",
            "--quiet",
            "--config",
            str(config_path),
            "--model",
            store.version_uri,
            "--url",
            champion_server,
        ]
    )
    assert code == 0
    assert "input_example: ok" in capsys.readouterr().out


def test_a_server_scoring_unlike_the_reference_model_fails(use_champion_store, champion_server):
    """The server runs version 1; checked against version 2 (another model), the scores differ."""
    store = use_champion_store
    other = f"models:/{store.model_name}/2"
    with pytest.raises(DeployError, match="held_out_rows: probabilities differ from batch scoring") as raised:
        smoke_test.run(store.config, other, champion_server)
    assert "ping" not in str(raised.value)  # the server itself was up


def test_a_server_that_never_answers_is_a_serving_error(use_champion_store):
    config = make_config(
        small_params(register={"min_test_roc_auc": 0.5}, deploy={"startup_timeout_seconds": 1})
    )
    with pytest.raises(ServingError, match="did not answer /ping within 1 s"):
        smoke_test.run(config, use_champion_store.version_uri, f"http://127.0.0.1:{free_port()}")
