"""Fitted estimators made quick for scoring a few rows at a time, with unchanged probabilities.

A scoring request is often one applicant (plus, for reason codes, a few dozen substituted copies
of it). At that size the cost is scikit-learn's per-call machinery, not arithmetic: joblib's
dispatch around each tree of a forest cost about 50 microseconds, ten times the tree itself.
:func:`for_few_rows` removes that machinery from a loaded estimator; the probabilities stay
bit-for-bit those of scikit-learn's own ``predict_proba`` on one thread (the tests compare them).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

_FOREST_CLASSES = ("RandomForestClassifier", "ExtraTreesClassifier")
# Transformers (scikit-learn's own) whose fitted state does not depend on the column names they saw,
# so a copy without the names transforms a plain array the same way.
_ARRAY_TWIN_CLASSES = ("OrdinalEncoder", "OneHotEncoder", "SimpleImputer", "StandardScaler", "Pipeline")


def parts(estimator: Any) -> Iterator[Any]:
    """``estimator`` and every estimator inside it: pipeline steps, column transformers, calibration
    folds, the members of a soft vote and the trees of a forest."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    seen: set[int] = set()
    pending = [estimator]
    while pending:
        node = pending.pop()
        if id(node) in seen or node is None or isinstance(node, str):
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, Pipeline):
            pending.extend(step for _, step in node.steps)
        if isinstance(node, ColumnTransformer) and hasattr(node, "transformers_"):
            pending.extend(transformer for _, transformer, _ in node.transformers_)
        pending.extend(getattr(node, "calibrated_classifiers_", None) or [])
        pending.extend(getattr(node, "estimators_", None) or [])
        pending.append(getattr(node, "estimator", None))


class _TreeByTreeProbabilities:
    """A fitted forest's ``predict_proba`` as a plain loop over its trees.

    The same steps as scikit-learn's, in the same order as on one thread (validate the input once,
    add each tree's probabilities, divide by the number of trees), without joblib's dispatch and
    the repeated checks per tree. Anything it does not cover (several outputs, no private
    validation hook in a future scikit-learn) goes to the forest's own method.
    """

    def __init__(self, forest: Any) -> None:
        self._forest = forest
        self._validate = getattr(forest, "_validate_X_predict", None)

    def __call__(self, X: Any) -> np.ndarray:
        forest = self._forest
        if self._validate is None or getattr(forest, "n_outputs_", 1) != 1:
            return type(forest).predict_proba(forest, X)
        X = self._validate(X)
        classes = forest.n_classes_
        total = np.zeros((X.shape[0], classes), dtype=np.float64)
        for tree in forest.estimators_:
            # What tree.predict_proba(X, check_input=False) returns, without its per-tree checks
            # (fitted, column count) that the forest has made once for all.
            total += tree.tree_.predict(X)[:, :classes]
        total /= len(forest.estimators_)
        return total


def _array_twin(transformer: Any) -> Any:
    """A shallow copy of a fitted transformer (and of a pipeline's steps) without the column names it
    was fitted with, so that it takes a plain array without warning; None when some part is not one
    of :data:`_ARRAY_TWIN_CLASSES` or asks for pandas output."""
    from sklearn.pipeline import Pipeline

    if not _is_sklearn(transformer, _ARRAY_TWIN_CLASSES) or not _default_output(transformer):
        return None
    twin = copy.copy(transformer)
    if isinstance(transformer, Pipeline):
        steps = [(name, _array_twin(step)) for name, step in transformer.steps]
        if any(step is None for _, step in steps):
            return None
        twin.steps = steps
    twin.__dict__.pop("feature_names_in_", None)
    return twin


def _is_sklearn(part: Any, names: tuple[str, ...]) -> bool:
    kind = type(part)
    return kind.__name__ in names and kind.__module__.startswith("sklearn.")


def _default_output(transformer: Any) -> bool:
    config = getattr(transformer, "_sklearn_output_config", None) or {}
    return config.get("transform", "default") == "default"


class _TransformByArray:
    """A column transformer's part transforming its columns as one array.

    Given a frame, scikit-learn's encoders check and convert it column by column (about 0.25 ms a
    column, whatever the rows); as one array the same values are checked once. Anything but a
    frame with exactly the fitted columns goes to the transformer's own method.
    """

    def __init__(self, transformer: Any, twin: Any) -> None:
        self._transformer, self._twin = transformer, twin
        self._names = list(transformer.feature_names_in_)

    def __call__(self, X: Any, **params: Any) -> Any:
        if params or not isinstance(X, pd.DataFrame) or list(X.columns) != self._names:
            return type(self._transformer).transform(self._transformer, X, **params)
        return self._twin.transform(X.to_numpy())


# --- Transforms of one array, each equal to the fitted transformer's own ------------------------------
# scikit-learn checks and converts its input in every transform call, column by column for the
# encoders (through narwhals): about 0.3 ms a column whatever the rows. These take the values as one
# array and compute what the transformer would; any input they do not cover (a value of another
# type, an infinite number) goes to the transformer's array twin, which answers as scikit-learn does.


# A value no fitted category equals: an encoder's answer to it is its answer to an unseen category.
_UNSEEN = "\x00 a category never seen in training"


def _probe(categories: list[np.ndarray]) -> np.ndarray:
    """One row per fitted category of each column, then a missing value, then an unseen one (a shorter
    column repeats its first category below them): what an encoder's transform of it answers is the
    encoder's rule for every value it can be given."""
    width = max(len(values) for values in categories) + 2
    probe = np.empty((width, len(categories)), dtype=object)
    for column, values in enumerate(categories):
        given = [*values, np.nan, _UNSEEN]
        probe[:, column] = given + [given[0]] * (width - len(given))
    return probe


def _text_categories(categories: list[np.ndarray]) -> bool:
    return all(values.dtype == object for values in categories) and all(
        isinstance(v, str) or _is_nan(v) for values in categories for v in values
    )


class _OrdinalByTable:
    """An ordinal encoder as a lookup per column: the code of each known category, of a missing value
    and of an unseen value, all read from the encoder's own transform of its categories, so its rules
    (rare levels grouped, missing and unknown codes) are applied exactly as fitted."""

    def __init__(self, encoder: Any, twin: Any) -> None:
        self._twin = twin
        categories = encoder.categories_
        codes = twin.transform(_probe(categories))
        self._dtype = codes.dtype
        self._tables = [
            {value: codes[row, column] for row, value in enumerate(values) if isinstance(value, str)}
            for column, values in enumerate(categories)
        ]
        self._missing = [codes[len(values), column] for column, values in enumerate(categories)]
        self._unseen = [codes[len(values) + 1, column] for column, values in enumerate(categories)]

    @classmethod
    def of(cls, encoder: Any, twin: Any) -> _OrdinalByTable | None:
        """The table of a fitted encoder of text categories that codes unseen values, else None."""
        categories = getattr(encoder, "categories_", None)
        usable = (
            _is_sklearn(encoder, ("OrdinalEncoder",))
            and categories is not None
            and encoder.handle_unknown == "use_encoded_value"
            and _text_categories(categories)
        )
        return cls(encoder, twin) if usable else None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if X.dtype != object or X.ndim != 2 or X.shape[1] != len(self._tables):
            return self._twin.transform(X)
        out = np.empty(X.shape, dtype=self._dtype)
        if not _look_up(X, self._tables, self._missing, self._unseen, out):
            return self._twin.transform(X)
        return out


def _look_up(X: np.ndarray, tables: list[dict], missing: list, unseen: list, out: np.ndarray) -> bool:
    """Fill ``out`` with each value's entry in its column's table (a missing value and an unseen one
    their column's own); False at the first value of another type (None, a number, a pandas NA),
    which scikit-learn's own rules must decide."""
    for column, table in enumerate(tables):
        entries, missing_entry, unseen_entry = out[:, column], missing[column], unseen[column]
        for row, value in enumerate(X[:, column]):
            if type(value) is str:
                entries[row] = table.get(value, unseen_entry)
            elif type(value) is float and value != value:
                entries[row] = missing_entry
            else:
                return False
    return True


class _OneHotByTable:
    """A one-hot encoder as a lookup per column: the output column of each known category, of a missing
    value and of an unseen value (or none), all read from the encoder's own transform of its
    categories, so its rules (rare levels grouped, unknown values to the infrequent column or to none)
    are applied exactly as fitted. scikit-learn's transform checks every value against every fitted
    category in each call: about 50 ms a call for a column of a few thousand levels, whatever the rows.
    """

    def __init__(
        self, twin: Any, tables: list[dict], missing: list[int], unseen: list[int], width: int
    ) -> None:
        self._twin, self._tables, self._missing, self._unseen = twin, tables, missing, unseen
        self._width, self._sparse, self._dtype = width, twin.sparse_output, twin.dtype

    @classmethod
    def of(cls, encoder: Any, twin: Any) -> _OneHotByTable | None:
        """The table of a fitted encoder of text categories that ignores or groups unseen values, or None."""
        categories = getattr(encoder, "categories_", None)
        usable = (
            _is_sklearn(encoder, ("OneHotEncoder",))
            and categories is not None
            and encoder.handle_unknown in {"ignore", "infrequent_if_exist"}
            and _text_categories(categories)
        )
        if not usable:
            return None
        # Each input column's block of output columns, from the names the twin gives them (x0_..., x1_...).
        names = [str(name) for name in twin.get_feature_names_out()]
        starts, position = [], 0
        for column in range(len(categories)):
            starts.append(position)
            while position < len(names) and names[position].startswith(f"x{column}_"):
                position += 1
        if position != len(names):
            return None
        # Read sparse whatever the encoder's output: one row per level of the widest column, by up to
        # 64 output columns per input column, would be hundreds of MB dense on a many-level column.
        sparse_twin = copy.copy(twin)
        sparse_twin.sparse_output = True
        with warnings.catch_warnings():  # the probe's unseen value, on purpose
            warnings.simplefilter("ignore")
            encoded = sparse_twin.transform(_probe(categories)).tocoo()
        if not (encoded.data == 1).all():
            return None
        # Each output column's input column; each probe row's output column per input column, -1 for none.
        block = np.searchsorted(np.asarray(starts), encoded.col, side="right") - 1
        cell = encoded.row.astype(np.int64) * len(categories) + block
        if len(np.unique(cell)) < len(cell):  # two output columns of one input column for a value
            return None
        outputs = np.full((encoded.shape[0], len(categories)), -1, dtype=np.int64)
        outputs[encoded.row, block] = encoded.col
        tables = [
            {value: int(outputs[row, column]) for row, value in enumerate(values) if isinstance(value, str)}
            for column, values in enumerate(categories)
        ]
        missing = [int(outputs[len(values), column]) for column, values in enumerate(categories)]
        unseen = [int(outputs[len(values) + 1, column]) for column, values in enumerate(categories)]
        return cls(twin, tables, missing, unseen, len(names))

    def __call__(self, X: np.ndarray) -> Any:
        if X.dtype != object or X.ndim != 2 or X.shape[1] != len(self._tables):
            return self._twin.transform(X)
        hot = np.empty(X.shape, dtype=np.int64)  # each value's output column, -1 for none
        if not _look_up(X, self._tables, self._missing, self._unseen, hot):
            return self._twin.transform(X)
        rows = np.repeat(np.arange(X.shape[0]), X.shape[1])
        columns = hot.ravel()
        kept = columns >= 0
        rows, columns = rows[kept], columns[kept]
        if self._sparse:
            from scipy import sparse

            values = np.ones(len(rows), dtype=self._dtype)
            return sparse.csr_matrix((values, (rows, columns)), shape=(X.shape[0], self._width))
        out = np.zeros((X.shape[0], self._width), dtype=self._dtype)
        out[rows, columns] = 1
        return out


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


class _ImputeByStatistics:
    """A simple imputer of numbers: each missing value replaced by its column's fitted statistic."""

    def __init__(self, imputer: Any, twin: Any) -> None:
        self._twin, self._statistics = twin, imputer.statistics_

    @classmethod
    def of(cls, imputer: Any, twin: Any) -> _ImputeByStatistics | None:
        statistics = getattr(imputer, "statistics_", None)
        usable = (
            _is_sklearn(imputer, ("SimpleImputer",))
            and _is_nan(imputer.missing_values)
            and not imputer.add_indicator
            and statistics is not None
            and statistics.dtype == np.float64
            and bool(np.isfinite(statistics).all())  # else scikit-learn drops or keeps empty columns
        )
        return cls(imputer, twin) if usable else None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if X.dtype != np.float64 or X.ndim != 2 or X.shape[1] != len(self._statistics) or np.isinf(X).any():
            return self._twin.transform(X)
        out = X.copy()
        rows, columns = np.nonzero(np.isnan(out))
        out[rows, columns] = self._statistics[columns]
        return out


class _Standardize:
    """A standard scaler: the fitted mean subtracted, then the fitted scale divided, in place on a copy."""

    def __init__(self, scaler: Any, twin: Any) -> None:
        self._twin, self._width = twin, scaler.n_features_in_
        self._mean = scaler.mean_ if scaler.with_mean else None
        self._scale = scaler.scale_ if scaler.with_std else None

    @classmethod
    def of(cls, scaler: Any, twin: Any) -> _Standardize | None:
        usable = _is_sklearn(scaler, ("StandardScaler",)) and hasattr(scaler, "n_features_in_")
        return cls(scaler, twin) if usable else None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if X.dtype != np.float64 or X.ndim != 2 or X.shape[1] != self._width:
            return self._twin.transform(X)
        out = X.copy()
        if self._mean is not None:
            out -= self._mean
        if self._scale is not None:
            out /= self._scale
        return out


def _array_transform(transformer: Any) -> Any:
    """A function of one array equal to ``transformer.transform`` of the frame of its columns, or None.

    Ordinal and one-hot encoders, imputers and scalers get their own (:class:`_OrdinalByTable`,
    :class:`_OneHotByTable`, :class:`_ImputeByStatistics`, :class:`_Standardize`), a pipeline of
    transformers chains its steps', and any other transformer of :data:`_ARRAY_TWIN_CLASSES` its
    array twin's method.
    """
    from sklearn.pipeline import Pipeline

    twin = _array_twin(transformer)
    if twin is None:
        return None
    if isinstance(transformer, Pipeline):
        steps = [_array_transform(step) for _, step in transformer.steps]
        return _Chain(steps) if all(step is not None for step in steps) else twin.transform
    for kind in (_OrdinalByTable, _OneHotByTable, _ImputeByStatistics, _Standardize):
        fast = kind.of(transformer, twin)
        if fast is not None:
            return fast
    return twin.transform


class _Chain:
    def __init__(self, steps: list[Any]) -> None:
        self._steps = steps

    def __call__(self, X: Any) -> Any:
        for step in self._steps:
            X = step(X)
        return X


class _ColumnsByArray:
    """A column transformer's transform with each part given its columns as one array.

    The same parts in the same order, their outputs joined by the column transformer's own
    ``_hstack``; the frame is only read column by column, never indexed per part. Anything but a
    frame with exactly the fitted columns goes to the column transformer's own method.
    """

    def __init__(self, column_transformer: Any, plan: list[tuple[list[int], Any]]) -> None:
        self._ct, self._plan = column_transformer, plan
        self._names = list(column_transformer.feature_names_in_)

    @classmethod
    def of(cls, column_transformer: Any) -> _ColumnsByArray | None:
        node = column_transformer
        if (
            not _is_sklearn(node, ("ColumnTransformer",))
            or not hasattr(node, "feature_names_in_")
            or node.transformer_weights
            or not _default_output(node)
        ):
            return None
        plan = []
        for name, transformer, _ in node.transformers_:
            positions = list(node._transformer_to_input_indices.get(name, []))
            if isinstance(transformer, str):
                if transformer == "drop" or not positions:
                    continue
                if transformer != "passthrough":
                    return None
                plan.append((positions, None))
                continue
            if not positions:  # scikit-learn skips a part with no columns
                continue
            function = _array_transform(transformer)
            if function is None:
                return None
            plan.append((positions, function))
        return cls(node, plan) if plan else None

    def __call__(self, X: Any, **params: Any) -> Any:
        if params or not isinstance(X, pd.DataFrame) or list(X.columns) != self._names:
            return type(self._ct).transform(self._ct, X, **params)
        columns = column_arrays(X)
        outputs = []
        for positions, function in self._plan:
            block = np.column_stack([columns[position] for position in positions])
            outputs.append(block if function is None else function(block))
        return self._ct._hstack(outputs, n_samples=len(X))


def frame_of_arrays(arrays: Mapping[str, np.ndarray], index: pd.Index | None = None) -> pd.DataFrame:
    """A frame of equal-length columns, in the given order, each keeping its array's dtype.

    Text stays object and the column names an object index: from a dict of arrays pandas would
    infer its string type for both, column by column, at a cost above scoring a request. Built
    from the arrays as they are (pandas' private ``_from_arrays``, present in 1.x to 3.x, about
    0.03 ms); a pandas without it gets the frame one block per dtype (about 0.6 ms).
    """
    names, values = list(arrays), list(arrays.values())
    rows = len(values[0]) if values else (0 if index is None else len(index))
    index = pd.RangeIndex(rows) if index is None else index
    build = getattr(pd.DataFrame, "_from_arrays", None)
    plain = all(isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == rows for v in values)
    if build is not None and plain and len(index) == rows:
        return build(values, columns=pd.Index(names, dtype=object), index=index, verify_integrity=False)
    by_dtype: dict[np.dtype, list[str]] = {}
    for name in names:
        by_dtype.setdefault(arrays[name].dtype, []).append(name)
    blocks = []
    for dtype, chosen in by_dtype.items():
        block = np.column_stack([arrays[name] for name in chosen])
        blocks.append(pd.DataFrame(block, index=index, columns=pd.Index(chosen, dtype=object), dtype=dtype))
    joined = blocks[0] if len(blocks) == 1 else pd.concat(blocks, axis=1)
    joined = joined if list(joined.columns) == names else joined[names]
    return joined.set_axis(pd.Index(names, dtype=object), axis=1)


def column_arrays(X: pd.DataFrame) -> list[np.ndarray]:
    """Each column of ``X`` as the array its own ``to_numpy`` gives (a view where pandas holds numpy).

    Read from the frame's stored arrays: indexing a column costs about 0.02 ms and a block of them
    (``iloc`` with a list) more, which on a one-row request is most of the typing. Pandas versions
    without ``_get_column_array`` (private, present in 1.x to 3.x) take the public way.
    """
    stored = getattr(X, "_get_column_array", None)
    if stored is None:
        return [X.iloc[:, position].to_numpy() for position in range(X.shape[1])]
    columns = []
    for position in range(X.shape[1]):
        values = stored(position)
        if isinstance(values, np.ndarray):  # the frame's own memory: read-only, as to_numpy gives it
            values = values.view()
            values.flags.writeable = False
        else:
            values = values.to_numpy()
        columns.append(values)
    return columns


def _column_transformer_parts(node: Any) -> list[Any]:
    """The fitted transformers of a column transformer that were fitted on named columns."""
    from sklearn.compose import ColumnTransformer

    if not (isinstance(node, ColumnTransformer) and hasattr(node, "transformers_")):
        return []
    return [
        transformer
        for _, transformer, _ in node.transformers_
        if not isinstance(transformer, str) and hasattr(transformer, "feature_names_in_")
    ]


def _is_fitted_forest(node: Any) -> bool:
    return (
        type(node).__name__ in _FOREST_CLASSES
        and type(node).__module__.startswith("sklearn.ensemble")
        and hasattr(node, "estimators_")
    )


def for_few_rows(estimator: Any) -> Any:
    """Ready a loaded estimator for scoring few rows at a time; returns it (changed in place).

    - ``n_jobs=1`` on every scikit-learn part: scoring is a few rows at a time and a scoring server
      takes requests side by side, where joblib's worker threads cost far more than they save (a
      forest's 1-row prediction went from about 120 ms to 10 ms);
    - forests predict tree by tree in a plain loop (:class:`_TreeByTreeProbabilities`; 10 ms to
      2 ms for 200 trees);
    - a column transformer gives each part its columns as one array (:class:`_ColumnsByArray`),
      and ordinal and one-hot encoders, imputers and scalers transform it without scikit-learn's
      per-call checks (:class:`_OrdinalByTable` and the others); where a part has no such path, it takes
      the array through scikit-learn's own method (:class:`_TransformByArray`).

    Meant for a model read back from its file, never one about to be written: these are attributes
    of the instances, which a model file must not hold.
    """
    for node in list(parts(estimator)):
        if type(node).__module__.startswith("sklearn.") and getattr(node, "n_jobs", None) not in (None, 1):
            node.n_jobs = 1
        if _is_fitted_forest(node):
            node.predict_proba = _TreeByTreeProbabilities(node)
        if _is_sklearn(node, ("ColumnTransformer",)) and "transform" not in vars(node):
            _ready_column_transformer(node)
    return estimator


def _ready_column_transformer(node: Any) -> None:
    """The whole column transformer by arrays when every part has an array transform, else each part
    that can take one (a model readied twice keeps what the first readying set)."""
    whole = _ColumnsByArray.of(node)
    if whole is not None:
        node.transform = whole
        return
    for transformer in _column_transformer_parts(node):
        if "transform" in vars(transformer):
            continue
        twin = _array_twin(transformer)
        if twin is not None:
            transformer.transform = _TransformByArray(transformer, twin)
