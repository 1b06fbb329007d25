"""Applicant rows typed as the model takes them: columns, numbers, categories seen and unseen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.applicants import known_categories, prepare_input
from pipeline.errors import DataError
from tests.conftest import PROJECT_ROOT

GERMAN = PROJECT_ROOT / "data" / "german_credit.csv"

COLUMNS = [("age", "numeric"), ("purpose", "text")]


def test_prepare_input_types_columns_and_reports_extras():
    frame = pd.DataFrame({"purpose": ["car", None], "age": ["30", ""], "id": ["a", "b"]})
    features, check = prepare_input(frame, COLUMNS, {"purpose": {"car"}})
    assert list(features.columns) == ["age", "purpose"]
    assert features["age"].dtype == float
    assert features["age"].iloc[0] == 30.0
    assert np.isnan(features["age"].iloc[1])  # missing stays missing: the imputer handles it
    assert features["purpose"].iloc[0] == "car"
    assert check.extra_columns == ["id"]
    assert check.unseen_categories == {}


def test_prepare_input_rejects_infinite_numbers():
    frame = pd.DataFrame({"purpose": ["car"], "age": ["inf"]})
    with pytest.raises(DataError, match="column 'age' holds infinite values"):
        prepare_input(frame, COLUMNS, {})


@pytest.mark.parametrize("family", ["logistic_regression", "hist_gradient_boosting"])
def test_known_categories_found_inside_calibrated_models(family):
    from sklearn.calibration import CalibratedClassifierCV

    from pipeline.models import build_estimator

    frame = pd.read_csv(GERMAN).head(200)
    target = frame.pop("default")
    categorical = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in frame.columns if c not in categorical]
    model = CalibratedClassifierCV(build_estimator(family, {}, categorical, numeric, 0), cv=2)
    model.fit(frame, target)
    known = known_categories(model)
    assert set(known) == set(categorical)
    assert known["purpose"] == set(frame["purpose"])
    changed = frame.astype({c: str for c in numeric}).copy()
    changed.loc[:4, "purpose"] = "spaceship"
    _, check = prepare_input(changed, [(c, "text" if c in categorical else "numeric") for c in frame], known)
    assert check.unseen_categories == {"purpose": 5}
