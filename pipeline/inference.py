"""Fitted estimators made quick for scoring a few rows at a time, with unchanged probabilities.

A scoring request is often one applicant (plus, for reason codes, a few dozen substituted copies
of it). At that size the cost is scikit-learn's per-call machinery, not arithmetic: joblib's
dispatch around each tree of a forest cost about 50 microseconds, ten times the tree itself.
:func:`for_few_rows` removes that machinery from a loaded estimator; the probabilities stay
bit-for-bit those of scikit-learn's own ``predict_proba`` on one thread (the tests compare them).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
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

    kind = type(transformer)
    if kind.__name__ not in _ARRAY_TWIN_CLASSES or not kind.__module__.startswith("sklearn."):
        return None
    if (getattr(transformer, "_sklearn_output_config", None) or {}).get("transform", "default") != "default":
        return None
    twin = copy.copy(transformer)
    if isinstance(transformer, Pipeline):
        steps = [(name, _array_twin(step)) for name, step in transformer.steps]
        if any(step is None for _, step in steps):
            return None
        twin.steps = steps
    twin.__dict__.pop("feature_names_in_", None)
    return twin


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
    - a column transformer's encoders and imputers take their columns as one array
      (:class:`_TransformByArray`; 4.7 ms to 1.6 ms for 20 columns).

    Meant for a model read back from its file, never one about to be written: these are attributes
    of the instances, which a model file must not hold.
    """
    for node in list(parts(estimator)):
        if type(node).__module__.startswith("sklearn.") and getattr(node, "n_jobs", None) not in (None, 1):
            node.n_jobs = 1
        if _is_fitted_forest(node):
            node.predict_proba = _TreeByTreeProbabilities(node)
        for transformer in _column_transformer_parts(node):
            if "transform" in vars(transformer):  # readied already (a model's scorer is made more than once)
                continue
            twin = _array_twin(transformer)
            if twin is not None:
                transformer.transform = _TransformByArray(transformer, twin)
    return estimator
