"""Shift signals against hand-computed values and against scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy

from monitoring.shift import (
    EPSILON,
    UNSEEN,
    ShiftError,
    categorical_psi,
    category_counts,
    embedding_drift,
    feature_shift_table,
    kl_divergence,
    missing_rate,
    missing_shift,
    numeric_psi,
    psi_from_shares,
    quantile_edges,
    score_psi,
)


def test_numeric_psi_two_bins_by_hand() -> None:
    # Reference [1, 2, 3, 4]: median 2.5, bins (-inf, 2.5] and (2.5, inf) -> shares 0.5, 0.5.
    # Current [1, 1, 1, 4] -> shares 0.75, 0.25.
    # PSI = (0.75 - 0.5) ln(0.75 / 0.5) + (0.25 - 0.5) ln(0.25 / 0.5)
    #     = 0.25 * 0.4054651 + 0.25 * 0.6931472 = 0.1013663 + 0.1732868 = 0.2746531
    assert numeric_psi([1, 2, 3, 4], [1, 1, 1, 4], n_bins=2) == pytest.approx(0.2746531, abs=1e-7)


def test_empty_bin_is_floored_at_epsilon() -> None:
    # Current all in bin 0: shares (1, 0) vs (0.5, 0.5); bin 1 counts as EPSILON.
    # PSI = 0.5 ln(1 / 0.5) + (1e-4 - 0.5) ln(1e-4 / 0.5) = 0.3465736 + 4.2577448 = 4.6043185
    expected = 0.5 * math.log(2) + (EPSILON - 0.5) * math.log(EPSILON / 0.5)
    assert numeric_psi([1, 2, 3, 4], [0, 1, 2, 2], n_bins=2) == pytest.approx(expected)
    assert math.isfinite(expected) and expected == pytest.approx(4.6043, abs=1e-4)


def test_psi_near_zero_for_same_distribution_and_large_for_shifted() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(0.0, 1.0, 5000)
    assert numeric_psi(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert numeric_psi(reference, rng.normal(0.0, 1.0, 5000)) < 0.02
    assert numeric_psi(reference, rng.normal(1.0, 1.0, 5000)) > 0.5
    assert score_psi(reference, rng.normal(1.0, 1.0, 5000)) > 0.5


def test_quantile_edges_merge_repeated_cut_points() -> None:
    np.testing.assert_allclose(quantile_edges(np.array([1.0, 2.0, 3.0, 4.0]), 2), [2.5])
    # A constant reference still splits "at or below" from "above".
    np.testing.assert_allclose(quantile_edges(np.full(10, 3.0), 10), [3.0])
    assert numeric_psi(np.full(10, 3.0), np.full(10, 5.0)) > 9.0
    with pytest.raises(ShiftError, match="n_bins"):
        quantile_edges(np.array([1.0]), 1)


def test_numeric_psi_ignores_missing_values_and_is_nan_without_any() -> None:
    assert numeric_psi([1, 2, None, 3, 4], [1, 1, 1, np.nan, 4], n_bins=2) == pytest.approx(0.2746531)
    assert math.isnan(numeric_psi([None, None], [1.0, 2.0]))


def test_categorical_psi_with_an_unseen_category() -> None:
    reference = ["a", "a", "b", "b"]
    current = ["a", "b", "c", "d"]  # c and d never appeared: one unseen bucket holding 0.5
    ref_counts, cur_counts = category_counts(reference, current)
    assert ref_counts.to_dict() == {"a": 2, "b": 2, UNSEEN: 0}
    assert cur_counts.to_dict() == {"a": 1, "b": 1, UNSEEN: 2}
    # Shares ref (0.5, 0.5, 0 -> 1e-4), cur (0.25, 0.25, 0.5):
    # 2 * (0.25 - 0.5) ln(0.25 / 0.5) + (0.5 - 1e-4) ln(0.5 / 1e-4)
    expected = 2 * (-0.25) * math.log(0.5) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert categorical_psi(reference, current) == pytest.approx(expected)
    assert expected == pytest.approx(4.6043, abs=1e-4)
    assert categorical_psi(reference, ["b", "a", "a", "b"]) == pytest.approx(0.0)


def test_kl_matches_scipy_entropy_on_smoothed_shares() -> None:
    reference = ["a"] * 6 + ["b"] * 3 + ["c"]
    current = ["a"] * 2 + ["b"] * 5 + ["z"] * 3
    # Buckets a, b, c, unseen; counts plus 0.5 each.
    ref = np.array([6, 3, 1, 0]) + 0.5
    cur = np.array([2, 5, 0, 3]) + 0.5
    assert kl_divergence(reference, current) == pytest.approx(entropy(cur, ref))
    assert kl_divergence(reference, reference) == pytest.approx(0.0)
    with pytest.raises(ShiftError, match="alpha"):
        kl_divergence(reference, current, alpha=0.0)


def test_psi_from_shares_rejects_misaligned_vectors() -> None:
    with pytest.raises(ShiftError, match="aligned"):
        psi_from_shares(np.array([0.5, 0.5]), np.array([1.0]))


def test_missing_rates() -> None:
    assert missing_rate([1.0, None, float("nan"), 4.0]) == 0.5
    assert missing_rate(pd.Series([pd.NaT, pd.Timestamp("2026-01-01")])) == 0.5
    assert math.isnan(missing_rate([]))
    shift = missing_shift([1, 2, 3, None], [None, None, None, 4])
    assert (shift.reference, shift.current, shift.change) == (0.25, 0.75, 0.5)


def test_embedding_drift_by_hand() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    current = np.array([[0.0, 1.0], [0.0, 2.0], [5.0, 5.0]])
    drift = embedding_drift(["a", "b", "c"], reference, ["b", "a", "d"], current)
    # Means: ref (2/3, 2/3) -> direction (1, 1); cur (5/3, 8/3) -> direction (5, 8).
    # cos = (5 + 8) / (sqrt(2) * sqrt(89)) = 13 / 13.3417 = 0.974391; distance 0.025609.
    assert drift.centroid_distance == pytest.approx(1 - 13 / math.sqrt(178))
    # Common a, b: a (1, 0) vs (0, 2): distance 1; b (0, 1) vs (0, 1): distance 0; mean 0.5.
    assert drift.mean_entity_distance == pytest.approx(0.5) and drift.n_common == 2


def test_embedding_drift_without_common_entities_and_bad_shapes() -> None:
    drift = embedding_drift(["a"], np.array([[1.0, 0.0]]), ["b"], np.array([[-1.0, 0.0]]))
    assert drift.centroid_distance == pytest.approx(2.0)
    assert math.isnan(drift.mean_entity_distance) and drift.n_common == 0
    with pytest.raises(ShiftError, match="same dim"):
        embedding_drift(["a"], np.ones((1, 2)), ["a"], np.ones((1, 3)))
    with pytest.raises(ShiftError, match="ids"):
        embedding_drift(["a", "b"], np.ones((1, 2)), ["a"], np.ones((1, 2)))
    with pytest.raises(ShiftError, match="zero vector"):
        embedding_drift(["a"], np.zeros((1, 2)), ["a"], np.ones((1, 2)))


def test_feature_shift_table_one_row_per_feature() -> None:
    reference = pd.DataFrame(
        {"device": ["tv", "tv", "mobile", "mobile"], "dwell": [1.0, 2.0, 3.0, 4.0], "n": [1, 1, 2, 2]}
    )
    current = pd.DataFrame(
        {"device": ["tv", "tv", "tv", "mobile"], "dwell": [1.0, 1.0, None, 4.0], "n": [1, 1, 2, 2]}
    )
    table = feature_shift_table(reference, current, ["device", "dwell"])
    assert list(table.columns) == [
        "feature",
        "kind",
        "psi",
        "kl",
        "missing_ref",
        "missing_cur",
        "n_ref",
        "n_cur",
    ]
    device, dwell = table.to_dict("records")
    assert device["kind"] == "categorical" and device["psi"] == pytest.approx(0.2746531)
    assert device["kl"] == pytest.approx(kl_divergence(reference["device"], current["device"]))
    assert dwell["kind"] == "numeric" and math.isnan(dwell["kl"])
    # Non-missing current dwell [1, 1, 4]; 10 bins on [1, 2, 3, 4] give edges 1.3 .. 3.7.
    assert dwell["psi"] == pytest.approx(numeric_psi(reference["dwell"], [1.0, 1.0, 4.0]))
    assert (dwell["missing_ref"], dwell["missing_cur"], dwell["n_cur"]) == (0.0, 0.25, 4)
    assert list(feature_shift_table(reference, current)["feature"]) == ["device", "dwell", "n"]
    with pytest.raises(ShiftError, match="unknown"):
        feature_shift_table(reference, current.drop(columns="n"), ["n", "unknown"])
