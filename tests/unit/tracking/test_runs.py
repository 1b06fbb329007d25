"""pipeline.tracking.runs: MLflow's standard run tags (the UI's user and source), the logged split."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.tracking import keys
from pipeline.tracking.runs import source_tags, split_positions, split_record

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_local_run_names_its_user_command_and_commit(no_ci):
    tags = source_tags(f"{COMMIT}-dirty", "optimize")
    assert tags == {
        keys.TAG_MLFLOW_USER: "writer",
        keys.TAG_SOURCE_NAME: "python -m pipeline optimize",
        keys.TAG_SOURCE_TYPE: keys.SOURCE_TYPE_LOCAL,
        keys.TAG_SOURCE_GIT_COMMIT: COMMIT,  # MLflow's tag holds the commit itself
    }
    assert keys.TAG_SOURCE_GIT_COMMIT not in source_tags("unknown", "research")


def test_a_ci_run_links_its_job_and_repository(no_ci, monkeypatch):
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/loan-mlops")
    monkeypatch.setenv("GITHUB_RUN_ID", "77")
    tags = source_tags(COMMIT, "register")
    assert tags[keys.TAG_SOURCE_TYPE] == keys.SOURCE_TYPE_JOB
    assert tags[keys.TAG_CI_RUN_URL] == "https://github.com/acme/loan-mlops/actions/runs/77"
    assert tags[keys.TAG_SOURCE_GIT_REPO] == "https://github.com/acme/loan-mlops"


# --- The logged split: a compact record that gives back the very positions -------------------------


def _split(n_rows: int, test_size: float, seed: int):
    order = np.random.default_rng(seed).permutation(n_rows)
    cut = int(n_rows * test_size)
    return SimpleNamespace(train_index=order[cut:], test_index=order[:cut])


@pytest.mark.parametrize(("n_rows", "test_size"), [(2, 0.5), (9, 1 / 3), (1000, 0.25), (100_003, 0.2)])
def test_the_split_record_round_trips_to_the_same_positions(n_rows, test_size):
    split = _split(n_rows, test_size, seed=n_rows)
    record = json.loads(json.dumps(split_record(split)))  # as logged and read back
    train, test = split_positions(record)
    assert np.array_equal(train, np.sort(split.train_index))
    assert np.array_equal(test, np.sort(split.test_index))
    assert record["n_rows"] == n_rows and record["n_test"] == len(split.test_index)


def test_the_split_record_is_compact_at_a_million_rows():
    split = _split(1_000_000, 0.25, seed=1)
    size = len(json.dumps(split_record(split)))
    assert size < 200_000  # a JSON list of every position took about 14 MB


def test_a_tampered_split_record_is_refused():
    record = split_record(_split(1000, 0.25, seed=3))
    record["test_sha256"] = "0" * 16
    with pytest.raises(ValueError, match="digests"):
        split_positions(record)
    with pytest.raises(ValueError, match="format"):
        split_positions({**record, "format": "something-else"})


def test_a_split_logged_as_position_lists_still_reads():
    train, test = split_positions({"train": [4, 0, 2], "test": [3, 1]})
    assert train.tolist() == [0, 2, 4] and test.tolist() == [1, 3]
    assert train.dtype == np.int64


def test_a_dataset_schema_from_its_deciding_rows_is_the_one_mlflow_infers_from_every_row():
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    from pipeline.tracking.runs import SCHEMA_HEAD_ROWS, _set_schema_from_deciding_rows, schema_rows

    n = 3 * SCHEMA_HEAD_ROWS
    rng = np.random.default_rng(0)
    amount = rng.normal(size=n)
    amount[-1] = np.nan  # missing only past the head: the column is optional
    purpose = pd.Series(rng.choice(["car", "tv"], n), dtype="str")
    purpose[: SCHEMA_HEAD_ROWS + 5] = np.nan  # missing throughout the head: still a string column
    frame = pd.DataFrame({"amount": amount, "purpose": purpose, "age": rng.integers(18, 80, n)})
    assert len(schema_rows(frame)) == SCHEMA_HEAD_ROWS + 2  # the head, a present purpose, a missing amount

    ours = from_pandas(frame, targets="age", name="loans")
    _set_schema_from_deciding_rows(ours)
    mlflows = from_pandas(frame, targets="age", name="loans")
    assert ours.schema == mlflows.schema
    assert ours.schema.to_dict() == [
        {"type": "double", "name": "amount", "required": False},
        {"type": "string", "name": "purpose", "required": False},
        {"type": "long", "name": "age", "required": True},
    ]
    assert ours._to_mlflow_entity().schema == mlflows._to_mlflow_entity().schema
