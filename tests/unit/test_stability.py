"""PSI and CSI: zero against itself, a known shift by hand, finite on empty bins, the usual reading."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import stability
from pipeline.errors import LookupFailedError
from pipeline.tracking import keys


def sample(rows: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(
        {
            "amount": rng.lognormal(8, 0.5, rows),
            "purpose": rng.choice(["car", "tv", "repairs", "education"], rows, p=[0.4, 0.3, 0.2, 0.1]),
        }
    )
    features.loc[::50, "amount"] = np.nan
    return features, rng.beta(2, 5, rows)


def test_psi_of_a_sample_against_itself_is_zero():
    features, scores = sample()
    profile = stability.build_profile(features, scores, ["purpose"], ["amount"])
    summary, bins = stability.compare(profile, features, scores, watch=0.1, shift=0.25)
    assert summary["index"].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert set(summary["status"]) == {stability.STABLE}
    assert summary["name"].tolist()[0] == stability.SCORE
    assert bins["contribution"].abs().max() < 1e-9


def test_a_known_shift_matches_the_hand_computation():
    # Two bins, 50/50 in training, 80/20 now: 0.3 ln(0.8/0.5) + (-0.3) ln(0.2/0.5).
    hand = 0.3 * math.log(1.6) - 0.3 * math.log(0.4)
    assert stability.psi([0.5, 0.5], [0.8, 0.2]) == pytest.approx(hand)
    # The same through a profile: one cut at 10, no missing value.
    profile = {
        "version": stability.PROFILE_VERSION,
        stability.SCORE: {"edges": [0.5], "shares": [0.5, 0.5, 0.0]},
        "characteristics": {
            "x": {"kind": "numeric", "edges": [10.0], "shares": [0.5, 0.5, 0.0], "values": []}
        },
    }
    values = pd.DataFrame({"x": [1.0] * 8 + [20.0] * 2})
    summary, _ = stability.compare(profile, values, np.array([0.1] * 8 + [0.9] * 2), watch=0.1, shift=0.25)
    assert summary.set_index("name")["index"].to_dict() == pytest.approx({"score": hand, "x": hand})
    assert hand > 0.25 and set(summary["status"]) == {stability.SHIFTED}


def test_empty_bins_give_a_finite_index():
    index = stability.psi([0.5, 0.5, 0.0], [1.0, 0.0, 0.0])
    assert math.isfinite(index) and index > 0.25
    assert stability.psi([0.0, 1.0], [0.0, 1.0]) == 0.0


def test_categories_unseen_and_missing_have_their_own_bins():
    shares = stability.categorical_shares(np.array(["car", "boat", None, "car"], dtype=object), ["car", "tv"])
    assert shares.tolist() == [0.5, 0.0, 0.25, 0.25]  # car, tv, other, missing
    numeric = stability.numeric_shares(np.array([1.0, 5.0, 10.0, np.nan]), [5.0])
    assert numeric.tolist() == [0.5, 0.25, 0.25]  # (-inf, 5], (5, inf), missing


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0.0, "stable"), (0.0999, "stable"), (0.10, "watch"), (0.25, "watch"), (0.2501, "shifted")],
)
def test_the_usual_reading(index, expected):
    assert stability.status(index, watch=0.10, shift=0.25) == expected


def test_profile_is_small_and_read_back_through_one_function():
    features, scores = sample()
    profile = stability.build_profile(features, scores, ["purpose"], ["amount"], bins=10, max_categories=2)
    assert len(profile[stability.SCORE]["shares"]) == 11  # ten deciles and missing
    assert profile["characteristics"]["purpose"]["categories"] == ["car", "tv"]  # the rest pooled
    assert len(profile["characteristics"]["amount"]["values"]) == 10  # a typical value per bin
    assert stability.profile_from_metadata({keys.META_TRAINING_PROFILE: profile}) == profile
    with pytest.raises(LookupFailedError, match="has no training profile"):
        stability.profile_from_metadata({}, "models:/m-1")
    assert set(stability.reference_values(profile)) == {"amount", "purpose"}


def test_characteristics_are_ranked_after_the_score():
    features, scores = sample()
    profile = stability.build_profile(features, scores, ["purpose"], ["amount"])
    moved = features.assign(amount=features["amount"] * 3)
    summary, _ = stability.compare(profile, moved, scores, watch=0.1, shift=0.25)
    assert summary["name"].tolist() == ["score", "amount", "purpose"]
    assert summary.iloc[1]["status"] == stability.SHIFTED
