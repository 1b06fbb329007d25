"""pipeline.tracking.lookups: hostile names and tag values either match exactly in MLflow filters or
are rejected clearly, against a real SQLite store."""

import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import LookupFailedError
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV
from pipeline.tracking import keys, lookups, runs
from tests.conftest import make_config, small_params

HOSTILE = [
    "'; DROP TABLE runs; --",
    "a\\b",
    "O'Brien",
    '"x"',
    'say \\"hi\\"',
    "50%_ wildcard*",
    "tags.x = 'y' or 1=1",
    "ünïcødé ✓",
    "\ttabbed value",
]
EXPERIMENT = "O'Brien; DROP TABLE experiments; -- \\ exp"
PROBE = "test.probe"


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """One SQLite store holding a stage run per hostile value, plus look-alike decoys."""
    folder = tmp_path_factory.mktemp("filters")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRACKING_URI_ENV, f"sqlite:///{folder / 'mlflow.db'}")
        patch.setenv(ARTIFACT_ROOT_ENV, str(folder / "artifacts"))
        config = make_config(small_params(tracking={"experiment": EXPERIMENT}))
        session = runs.connect(config)
        run_ids = {}
        for value in HOSTILE:
            with runs.stage_run(session, "probe", {keys.TAG_STAGE: "probe", PROBE: value}) as run_id:
                run_ids[value] = run_id
            decoy = value.replace("'", "''").replace("\\", "\\\\") + " "
            with runs.stage_run(session, "decoy", {keys.TAG_STAGE: "probe", PROBE: decoy}):
                pass
        yield session, run_ids


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_tag_value_matches_exactly(hostile_store, value):
    session, run_ids = hostile_store
    found = lookups.search_stage_runs(session, "probe", {PROBE: value})
    assert [run.info.run_id for run in found] == [run_ids[value]]
    assert found[0].data.tags[PROBE] == value


def test_sql_fragment_left_the_tables_intact(hostile_store):
    session, _ = hostile_store
    client = MlflowClient(session.uri)
    assert client.get_experiment_by_name(EXPERIMENT).experiment_id == session.experiment_id
    every = client.search_runs([session.experiment_id], max_results=1000)
    assert len(every) == 2 * len(HOSTILE)


def test_hostile_stage_name(hostile_store):
    session, _ = hostile_store
    assert lookups.search_stage_runs(session, "probe' or '1'='1") == []
    assert lookups.search_stage_runs(session, 'probe" or "1"="1') == []


@pytest.mark.parametrize(
    ("value", "message"),
    [('O\'Brien "x"', "both quote characters"), ("a\\", "ends with a backslash"), ("x\\\\", "backslash")],
)
def test_inexpressible_value_is_rejected_clearly(hostile_store, value, message):
    session, _ = hostile_store
    with pytest.raises(LookupFailedError, match=message):
        lookups.search_stage_runs(session, "probe", {PROBE: value})


@pytest.mark.parametrize("key", ["", "a`b", "`; DROP TABLE tags; --"])
def test_hostile_tag_key_is_rejected(hostile_store, key):
    session, _ = hostile_store
    with pytest.raises(LookupFailedError, match="cannot be used in an MLflow filter"):
        lookups.search_stage_runs(session, "probe", {key: "x"})
