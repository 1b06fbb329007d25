"""Four whole pipelines at once against one PostgreSQL: all finish, the registry stays consistent,
and the connection count stays within the configured pool limits."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.tracking import keys
from tests.conftest import POSTGRES_ADMIN_DSN
from tests.load_harness import ConnectionWatcher, run_concurrently, write_configs

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

# Per process: MLflow's pool (pool_size + max_overflow), Optuna's engine (1 + 1), and at most two
# short-lived engines without a pool (the reachability probe, the registry lock).
POOL_SIZE, MAX_OVERFLOW = 1, 1
PER_PROCESS = POOL_SIZE + MAX_OVERFLOW + 2 + 2


def _limit_pools(path):
    raw = yaml.safe_load(path.read_text())
    raw["tracking"].update({"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_four_concurrent_pipelines_keep_the_registry_consistent(postgres_url, tmp_path):
    specs = [
        ("shared_a", "load-shared", "load-shared-model"),
        ("shared_b", "load-shared", "load-shared-model"),
        ("other_c", "load-c", "load-c-model"),
        ("other_d", "load-d", "load-d-model"),
    ]
    configs = write_configs(tmp_path, specs)
    for _, path in configs:
        _limit_pools(path)
    database = postgres_url.rsplit("/", 1)[1]
    with ConnectionWatcher(POSTGRES_ADMIN_DSN, database) as watcher:
        outcomes = run_concurrently(configs, postgres_url, tmp_path / "artifacts")

    for outcome in outcomes:
        assert outcome.ok, (outcome.name, outcome.returncodes, outcome.stderr[-1][-2000:])
    assert 0 < watcher.peak <= len(configs) * PER_PROCESS, watcher.peak

    client = MlflowClient(postgres_url)
    for model_name, pipelines in (("load-shared-model", 2), ("load-c-model", 1), ("load-d-model", 1)):
        versions = client.search_model_versions(f"name = '{model_name}'")
        numbers = sorted(int(v.version) for v in versions)
        assert numbers == list(range(1, len(numbers) + 1)), numbers  # no gaps, no duplicates
        assert 1 <= len(numbers) <= pipelines
        runs = [v.tags.get("optimize_run_id") for v in versions]
        assert len(set(runs)) == len(runs)  # one version per optimization run
        assert all(v.tags.get(keys.VTAG_STATUS) == "done" for v in versions)
        champion = client.get_model_version_by_alias(model_name, "champion")
        assert champion.tags.get(keys.VTAG_DECISION) == "promoted"

    # Nothing left running anywhere.
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")
    assert not running
