"""pipeline.inference: a loaded model readied for few rows gives scikit-learn's probabilities exactly."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import VotingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder

from pipeline import inference
from pipeline.models import build_estimator
from tests.conftest import PROJECT_ROOT

SMALL = {
    "random_forest": {"n_estimators": 15, "min_samples_leaf": 2},
    "extra_trees": {"n_estimators": 15, "min_samples_leaf": 2},
    "lightgbm": {"n_estimators": 20, "verbose": -1},
    "hist_gradient_boosting": {"max_iter": 20},
}


@pytest.fixture(scope="module")
def german():
    """The shipped table with gaps in a number and a text column, and rows to score that also hold a
    category never seen in training."""
    frame = pd.read_csv(PROJECT_ROOT / "data" / "german_credit.csv")
    target = frame.pop("default")
    categorical = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in frame.columns if c not in categorical]
    frame = frame.astype({c: float for c in numeric}).astype({c: object for c in categorical})
    frame.loc[frame.index % 7 == 0, numeric[0]] = np.nan
    frame.loc[frame.index % 11 == 0, categorical[0]] = np.nan
    rows = frame.head(60).copy()
    rows.loc[rows.index[:5], categorical[1]] = "a value never seen"
    return frame, target, categorical, numeric, rows


def _on_one_thread(model):
    """A copy of ``model`` as scikit-learn predicts on one thread: the reference (several threads
    sum a forest's trees in another order, which moves the last bits)."""
    reference = copy.deepcopy(model)
    for part in inference.parts(reference):
        if type(part).__module__.startswith("sklearn.") and getattr(part, "n_jobs", None):
            part.n_jobs = 1
    return reference


def _fitted(family: str, german, calibrated: bool):
    frame, target, categorical, numeric, _ = german
    model = build_estimator(family, SMALL.get(family, {}), categorical, numeric, 0, n_jobs=2)
    if calibrated:
        model = CalibratedClassifierCV(model, cv=2, method="sigmoid", ensemble=False)
    return model.fit(frame, target)


@pytest.mark.parametrize(
    ("family", "calibrated"),
    [
        ("random_forest", False),
        ("random_forest", True),
        ("extra_trees", False),
        ("logistic_regression", True),  # imputer + scaler, imputer + sparse one-hot
        ("naive_bayes", False),  # dense one-hot
        ("hist_gradient_boosting", False),  # native categories, numbers passed through
        ("lightgbm", False),
        ("decision_tree", False),
    ],
)
def test_readied_models_give_scikit_learns_probabilities_bit_for_bit(german, family, calibrated):
    rows = german[4]
    model = _fitted(family, german, calibrated)
    untouched = _on_one_thread(model)
    readied = inference.for_few_rows(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "X does not have valid feature names"
        for batch in (rows, rows.head(1)):
            assert np.array_equal(readied.predict_proba(batch), untouched.predict_proba(batch))


def test_a_soft_vote_readied_twice_is_unchanged(german):
    frame, target, categorical, numeric, rows = german
    vote = VotingClassifier(
        [
            ("forest", build_estimator("random_forest", SMALL["random_forest"], categorical, numeric, 0)),
            ("linear", build_estimator("logistic_regression", {}, categorical, numeric, 0)),
        ],
        voting="soft",
        n_jobs=2,
    ).fit(frame, target)
    expected = _on_one_thread(vote).predict_proba(rows)
    readied = inference.for_few_rows(inference.for_few_rows(vote))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(readied.predict_proba(rows), expected)
    assert readied.n_jobs == 1
    assert all(getattr(part, "n_jobs", None) in (None, 1) for part in inference.parts(readied))


def test_the_fast_paths_are_taken_and_anything_else_goes_to_scikit_learn(german):
    categorical, rows = german[2], german[4]
    model = inference.for_few_rows(_fitted("random_forest", german, calibrated=False))
    forest = model.named_steps["model"]
    preprocess = model.named_steps["preprocess"]
    assert isinstance(vars(forest)["predict_proba"], inference._TreeByTreeProbabilities)
    assert isinstance(vars(preprocess)["transform"], inference._ColumnsByArray)
    reference = _on_one_thread(_fitted("random_forest", german, calibrated=False)).named_steps["preprocess"]
    # Columns in another order, or one more: the column transformer's own method, which picks by name.
    for given in (rows[rows.columns[::-1]], rows.assign(extra=1.0), rows):
        assert np.array_equal(preprocess.transform(given), reference.transform(given), equal_nan=True)
    # A frame without a needed column: scikit-learn's own message.
    with pytest.raises(ValueError, match="columns are missing"):
        preprocess.transform(rows.drop(columns=categorical[0]))


def test_a_part_without_an_array_path_leaves_the_others_theirs(german):
    frame, _, categorical, numeric, _ = german
    given = frame.head(50)  # no unseen category: this encoder refuses one
    odd = ColumnTransformer(
        [("categorical", OrdinalEncoder(), categorical), ("numeric", FunctionTransformer(np.abs), numeric)]
    ).fit(frame)
    expected = odd.transform(given)
    inference.for_few_rows(odd)
    assert "transform" not in vars(odd)
    assert isinstance(vars(odd.named_transformers_["categorical"])["transform"], inference._TransformByArray)
    assert np.array_equal(odd.transform(given), expected, equal_nan=True)


def test_an_ordinal_table_codes_every_value_as_the_encoder_does():
    rng = np.random.default_rng(0)
    common, rare = ["a", "b", "c", "d"], ["r1", "r2", "r3"]
    fitted_on = pd.DataFrame(
        {
            "grouped": rng.choice(common + rare, 400, p=[0.3, 0.3, 0.2, 0.17, 0.01, 0.01, 0.01]),
            "with_gaps": rng.choice(["x", "y", None], 400).astype(object),
        },
        dtype=object,
    )
    fitted_on.loc[fitted_on["with_gaps"].isna(), "with_gaps"] = np.nan
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2, min_frequency=10
    ).fit(fitted_on.to_numpy())
    assert encoder.infrequent_categories_[0] is not None  # the rare levels are grouped
    table = inference._OrdinalByTable.of(encoder, copy.copy(encoder))
    assert table is not None
    rows = np.array(
        [["a", "x"], ["r2", np.nan], ["never seen", "y"], [np.nan, "never seen"], ["d", "x"]], dtype=object
    )
    assert np.array_equal(table(rows), encoder.transform(rows), equal_nan=True)
    # Values of other types go to scikit-learn's own rules.
    odd = np.array([[None, "x"], ["a", 3]], dtype=object)
    assert np.array_equal(table(odd), encoder.transform(odd), equal_nan=True)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("handle_unknown", ["infrequent_if_exist", "ignore"])
def test_a_one_hot_table_encodes_every_value_as_the_encoder_does(sparse, handle_unknown):
    rng = np.random.default_rng(0)
    common, rare = ["a", "b", "c", "d"], ["r1", "r2", "r3"]
    fitted_on = pd.DataFrame(
        {
            "grouped": rng.choice(common + rare, 400, p=[0.3, 0.3, 0.2, 0.17, 0.01, 0.01, 0.01]),
            "with_gaps": rng.choice(["x", "y", None], 400).astype(object),
            "many_levels": [f"id{i}" for i in rng.integers(0, 3000, 400)],
        },
        dtype=object,
    )
    fitted_on.loc[fitted_on["with_gaps"].isna(), "with_gaps"] = np.nan
    encoder = OneHotEncoder(
        handle_unknown=handle_unknown,
        min_frequency=10 if handle_unknown == "infrequent_if_exist" else None,
        max_categories=64 if handle_unknown == "infrequent_if_exist" else None,
        sparse_output=sparse,
    ).fit(fitted_on.to_numpy())
    twin = copy.copy(encoder)
    table = inference._OneHotByTable.of(encoder, twin)
    assert table is not None
    rows = np.array(
        [
            ["a", "x", fitted_on["many_levels"].iloc[0]],
            ["r2", np.nan, "id never seen"],
            ["never seen", "y", fitted_on["many_levels"].iloc[5]],
            [np.nan, "never seen", "id2999x"],
            ["d", "x", fitted_on["many_levels"].iloc[9]],
        ],
        dtype=object,
    )
    for given in (rows, rows[:1], fitted_on.to_numpy()):
        ours, theirs = table(given), encoder.transform(given)
        assert type(ours) is type(theirs) and ours.dtype == theirs.dtype and ours.shape == theirs.shape
        if sparse:
            ours, theirs = ours.toarray(), theirs.toarray()
        assert np.array_equal(ours, theirs)
    # Values of other types go to scikit-learn's own rules.
    odd = np.array([[None, "x", "id1"], ["a", 3, "id1"]], dtype=object)
    ours, theirs = table(odd), encoder.transform(odd)
    assert np.array_equal(*(m.toarray() if sparse else m for m in (ours, theirs)))


def test_a_one_hot_table_of_an_encoder_that_drops_a_level_leaves_it_out_as_the_encoder_does():
    # The middle column has one level: dropped, it has no output column at all.
    fitted_on = np.array([["a", "k", "p"], ["b", "k", "q"], ["c", "k", "p"]], dtype=object)
    encoder = OneHotEncoder(drop="first", handle_unknown="ignore").fit(fitted_on)
    table = inference._OneHotByTable.of(encoder, copy.copy(encoder))
    rows = np.array([["a", "k", "q"], ["c", "k", "p"], ["z", "new", "never seen"]], dtype=object)
    with pytest.warns(UserWarning, match="unknown categories"):
        expected = encoder.transform(rows).toarray()
    assert np.array_equal(table(rows).toarray(), expected)


def test_a_one_hot_table_of_a_dense_encoder_reads_it_sparse_and_leaves_the_encoder_dense():
    levels = np.array([f"employer {i}" for i in range(20_000)], dtype=object)
    fitted_on = np.column_stack([levels, np.resize(np.array(["x", "y"], dtype=object), len(levels))])
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(fitted_on)
    twin = copy.copy(encoder)
    table = inference._OneHotByTable.of(encoder, twin)
    assert twin.sparse_output is False and encoder.sparse_output is False
    rows = fitted_on[[0, 19_999, 1]]
    encoded = table(rows)
    assert isinstance(encoded, np.ndarray) and np.array_equal(encoded, encoder.transform(rows))


def test_an_imputer_and_a_scaler_by_array_match_scikit_learn_and_refuse_what_it_refuses():
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    fitted_on = np.array([[1.0, 10.0], [np.nan, 20.0], [3.0, np.nan], [5.0, 40.0]])
    imputer = SimpleImputer(strategy="median").fit(fitted_on)
    scaler = StandardScaler().fit(imputer.transform(fitted_on))
    chain = inference._array_transform(Pipeline([("impute", imputer), ("scale", scaler)]))
    rows = np.array([[np.nan, np.nan], [2.0, 30.0]])
    expected = scaler.transform(imputer.transform(rows))
    assert np.array_equal(chain(rows), expected)
    assert np.array_equal(rows, [[np.nan, np.nan], [2.0, 30.0]], equal_nan=True)  # input untouched
    with pytest.raises(ValueError, match="infinity"):
        chain(np.array([[np.inf, 1.0]]))


@pytest.mark.parametrize("pandas_private", [True, False], ids=["from_arrays", "by_blocks"])
def test_a_frame_of_arrays_keeps_each_dtype_and_the_order(pandas_private, monkeypatch):
    if not pandas_private:
        monkeypatch.delattr(pd.DataFrame, "_from_arrays")
    arrays = {
        "amount": np.array([1.5, np.nan]),
        "purpose": np.array(["car", np.nan], dtype=object),
        "count": np.array([1, 2]),
        "age": np.array([30.0, 40.0]),
    }
    frame = inference.frame_of_arrays(arrays, pd.Index([7, 8]))
    assert list(frame.columns) == list(arrays) and frame.columns.dtype == object
    assert frame.dtypes.to_dict() == {
        "amount": np.float64,
        "purpose": object,
        "count": np.int64,
        "age": np.float64,
    }
    assert frame.index.tolist() == [7, 8]
    assert frame.loc[7, "purpose"] == "car" and np.isnan(frame.loc[8, "purpose"])
    assert inference.frame_of_arrays(arrays).index.equals(pd.RangeIndex(2))
    frame.iloc[0, 0] = -1.0  # a frame of its own: the arrays given are not changed through it
    assert arrays["amount"][0] == 1.5


@pytest.mark.parametrize("pandas_private", [True, False], ids=["stored_arrays", "public"])
def test_column_arrays_are_what_each_column_gives(pandas_private, monkeypatch):
    if not pandas_private:
        monkeypatch.delattr(pd.DataFrame, "_get_column_array")
    frame = pd.DataFrame(
        {
            "text": pd.array(["x", None, "z"], dtype="str"),
            "whole": [1, 2, 3],
            "more_text": pd.array(["p", "q", None], dtype="str"),
            "flag": [True, False, True],
            "small": np.array([1, 2, 3], dtype="int32"),
            "nullable": pd.array([1, None, 3], dtype="Int64"),
            "category": pd.Categorical(["u", None, "w"]),
            "strict_text": pd.array(["x", None, "z"], dtype="string"),
            "number": [0.5, np.nan, 2.0],
        }
    )
    for name, array in zip(frame.columns, inference.column_arrays(frame), strict=True):
        expected = frame[name].to_numpy()
        assert array.dtype == expected.dtype, name
        assert [repr(v) for v in array] == [repr(v) for v in expected], name
        assert not (
            isinstance(array, np.ndarray)
            and array.flags.writeable
            and np.shares_memory(array, frame[name].to_numpy())
        ), name
