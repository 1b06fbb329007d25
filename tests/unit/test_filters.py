"""Hostile names and tag values either match exactly in MLflow filters or are rejected clearly."""

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import ConfigError, LookupFailedError
from pipeline.settings import ARTIFACT_ROOT_ENV, TRACKING_URI_ENV
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
        session = tracking.connect(config)
        run_ids = {}
        for value in HOSTILE:
            with tracking.stage_run(session, "probe", {tracking.TAG_STAGE: "probe", PROBE: value}) as run_id:
                run_ids[value] = run_id
            decoy = value.replace("'", "''").replace("\\", "\\\\") + " "
            with tracking.stage_run(session, "decoy", {tracking.TAG_STAGE: "probe", PROBE: decoy}):
                pass
        yield session, run_ids


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_tag_value_matches_exactly(hostile_store, value):
    session, run_ids = hostile_store
    runs = tracking.search_stage_runs(session, "probe", {PROBE: value})
    assert [run.info.run_id for run in runs] == [run_ids[value]]
    assert runs[0].data.tags[PROBE] == value


def test_sql_fragment_left_the_tables_intact(hostile_store):
    session, _ = hostile_store
    client = MlflowClient(session.uri)
    assert client.get_experiment_by_name(EXPERIMENT).experiment_id == session.experiment_id
    every = client.search_runs([session.experiment_id], max_results=1000)
    assert len(every) == 2 * len(HOSTILE)


def test_hostile_stage_name(hostile_store):
    session, _ = hostile_store
    assert tracking.search_stage_runs(session, "probe' or '1'='1") == []
    assert tracking.search_stage_runs(session, 'probe" or "1"="1') == []


@pytest.mark.parametrize(
    ("value", "message"),
    [('O\'Brien "x"', "both quote characters"), ("a\\", "ends with a backslash"), ("x\\\\", "backslash")],
)
def test_inexpressible_value_is_rejected_clearly(hostile_store, value, message):
    session, _ = hostile_store
    with pytest.raises(LookupFailedError, match=message):
        tracking.search_stage_runs(session, "probe", {PROBE: value})


@pytest.mark.parametrize("key", ["", "a`b", "`; DROP TABLE tags; --"])
def test_hostile_tag_key_is_rejected(hostile_store, key):
    session, _ = hostile_store
    with pytest.raises(LookupFailedError, match="cannot be used in an MLflow filter"):
        tracking.search_stage_runs(session, "probe", {key: "x"})


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("tracking", "experiment", "bell\x07name", "control characters"),
        ("tracking", "experiment", "line\nbreak", "control characters"),
        ("tracking", "experiment", " padded", "leading or trailing whitespace"),
        ("tracking", "experiment", "both ' and \"", "both quote characters"),
        ("register", "model_name", "team/model", "cannot contain '/' or ':'"),
        ("register", "model_name", "models:x", "cannot contain '/' or ':'"),
        ("register", "model_name", "..", "must not read as a path"),
        ("register", "model_name", "a\u200bb", "control characters"),
        ("register", "model_name", "   ", "leading or trailing whitespace"),
        ("register", "model_name", "trailing\\", "ends with a backslash"),
    ],
)
def test_config_rejects_bad_names(section, key, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make_config(small_params(**{section: {key: value}}))
    assert str(caught.value).startswith(f"{section if section == 'tracking' else 'register'}.{key}:")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", ["O'Brien", "a\\b", "'; DROP TABLE runs; --", "ünï ✓"])
def test_config_accepts_names_mlflow_accepts(value):
    config = make_config(small_params(tracking={"experiment": value}, register={"model_name": value}))
    assert config.tracking.experiment == value
    assert config.registration.model_name == value
