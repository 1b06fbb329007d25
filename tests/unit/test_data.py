import numpy as np
import pandas as pd
import pytest

from pipeline.config import DatasetConfig
from pipeline.data import check_folds, fingerprint, prepare, read_table, split_dataset
from pipeline.errors import DataError
from tests.conftest import PROJECT_ROOT

CONFIG = DatasetConfig(path="x.csv", target="default", positive_label=1)


def frame(**columns) -> pd.DataFrame:
    base = {
        "age": [30, 40, 50, 60, 25, 35],
        "purpose": ["car", "tv", "car", "tv", "car", "tv"],
        "default": [0, 1, 0, 1, 0, 1],
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_shipped_dataset_loads_with_inferred_roles():
    raw = read_table(DatasetConfig(path="data/german_credit.csv", target="default"), PROJECT_ROOT)
    dataset = prepare(raw, DatasetConfig(path="data/german_credit.csv", target="default"))
    assert dataset.n_rows == 1000
    assert int(dataset.target.sum()) == 300
    assert len(dataset.categorical) + len(dataset.numeric) == 20
    assert "purpose" in dataset.categorical and "age" in dataset.numeric


def test_string_labels_and_explicit_roles():
    data = frame(default=["bad", "good"] * 3, age=["30", "40", "50", "60", "25", "35"])
    config = DatasetConfig(path="x.csv", target="default", positive_label="bad", numeric=["age"])
    dataset = prepare(data, config)
    assert dataset.target.tolist() == [1, 0] * 3
    assert dataset.numeric == ["age"] and dataset.features["age"].dtype == float


@pytest.mark.parametrize(
    ("data", "config", "message"),
    [
        (frame().iloc[:0], CONFIG, "dataset is empty"),
        (frame().drop(columns="default"), CONFIG, "target column 'default' not found"),
        (frame(default=[1] * 6), CONFIG, "single class"),
        (frame(default=[0, 1, 2, 0, 1, 2]), CONFIG, "3 classes"),
        (frame(default=[0, 1, None, 0, 1, 0]), CONFIG, "1 missing values"),
        (frame(empty=[None] * 6), CONFIG, "column 'empty' is entirely empty"),
        (frame(age=[1.0, np.inf, 2, 3, 4, 5]), CONFIG, "column 'age' holds infinite values"),
        (frame(), DatasetConfig(path="x", target="default", drop=["id"]), "dataset.drop names columns"),
        (frame(), DatasetConfig(path="x", target="default", positive_label=7), "never equals positive_label"),
        (frame(), DatasetConfig(path="x", target="default", numeric=["purpose"]), "non-numeric values"),
        (
            pd.DataFrame([[1, 2, 0], [3, 4, 1]], columns=["a", "a", "default"]),
            CONFIG,
            "duplicate column names: a",
        ),
    ],
)
def test_validation_errors_name_the_problem(data, config, message):
    with pytest.raises(DataError, match=message):
        prepare(data, config)


def test_duplicates_and_ranges_are_removed_when_configured():
    data = pd.concat([frame(), frame().iloc[:2]], ignore_index=True)
    data.loc[0, "age"] = 144
    config = DatasetConfig(
        path="x", target="default", drop_duplicates=True, valid_ranges={"age": {"max": 100}}
    )
    dataset = prepare(data, config)
    # Row 0 was edited, so only one of the two appended copies is still a duplicate.
    assert dataset.removed_rows == {"duplicates": 1, "out_of_range": 1}
    assert dataset.n_rows == len(frame())


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        read_table(DatasetConfig(path=tmp_path / "none.csv", target="d"), tmp_path)
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(DataError, match="is not a table"):
        read_table(DatasetConfig(path=tmp_path / "model.pkl", target="d"), tmp_path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_table(DatasetConfig(path=tmp_path / "empty.csv", target="d"), tmp_path)
    (tmp_path / "dupes.csv").write_text("a,b,a\n1,2,3\n")
    with pytest.raises(DataError, match=r"duplicate column names in dupes\.csv: a"):
        read_table(DatasetConfig(path=tmp_path / "dupes.csv", target="d"), tmp_path)


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "loans.parquet"
    frame().to_parquet(path)
    assert read_table(DatasetConfig(path=path, target="default"), tmp_path).shape == (6, 3)


def test_split_is_deterministic_stratified_and_disjoint():
    data = pd.DataFrame({"x": np.arange(200.0), "default": [0, 0, 0, 1] * 50})
    dataset = prepare(data, DatasetConfig(path="x", target="default"))
    first, second = split_dataset(dataset, 0.25, seed=3), split_dataset(dataset, 0.25, seed=3)
    np.testing.assert_array_equal(first.test_index, second.test_index)
    assert first.test_digest == second.test_digest
    assert not set(first.train_index) & set(first.test_index)
    assert len(first.test_index) == 50 and dataset.target.iloc[first.test_index].sum() == 12
    other = split_dataset(dataset, 0.25, seed=4)
    assert other.test_digest != first.test_digest


def test_fingerprint_ignores_row_labels_but_not_values():
    data = frame()
    assert fingerprint(data) == fingerprint(data.set_axis(range(10, 16)))
    assert fingerprint(data) != fingerprint(data.assign(age=data["age"] + 1))


def test_too_few_rows_of_a_class_for_the_folds():
    with pytest.raises(
        DataError, match=r"class 1 of 'default' has 2 training rows, fewer than research.cv_folds=5"
    ):
        check_folds(pd.Series([0] * 10 + [1] * 2, name="default"), 5, "research.cv_folds")
