"""AUC and calibration: hand-computed fixtures, properties, and scikit-learn cross-checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from evaluation.calibration import (
    expected_calibration_error,
    plot_reliability,
    reliability_curve,
    roc_auc,
    roc_auc_by_task,
)
from evaluation.metrics import MetricError


def test_auc_by_hand_with_ties() -> None:
    # positives 0.8, 0.5; negatives 0.5, 0.2, 0.1: pairs won 3 + 2, tied 1 (counts 1/2), lost 0 -> 5.5 / 6
    assert roc_auc([1, 1, 0, 0, 0], [0.8, 0.5, 0.5, 0.2, 0.1]) == pytest.approx(5.5 / 6)
    assert roc_auc([1, 0], [0.2, 0.9]) == 0.0
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_per_task_by_hand() -> None:
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 1]])
    scores = np.array([[0.9, 0.3, 0.5], [0.2, 0.4, 0.5], [0.4, 0.1, 0.5], [0.6, 0.8, 0.5]])
    out = roc_auc_by_task(labels, scores, ["click", "like", "always"])
    # click: positives 0.9, 0.4 vs negatives 0.2, 0.6: pairs won 0.9>0.2, 0.9>0.6, 0.4>0.2 -> 3/4
    assert out["click"] == pytest.approx(0.75)
    # like: positives 0.1, 0.8 vs negatives 0.3, 0.4: won 0.8>0.3, 0.8>0.4 -> 2/4
    assert out["like"] == pytest.approx(0.5)
    # "always" has a single class: no AUC, left out of the macro mean
    assert math.isnan(out["always"])
    assert out["macro"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["overall"] == pytest.approx(roc_auc_score(labels.ravel(), scores.ravel()))


def test_auc_refuses_bad_input() -> None:
    with pytest.raises(MetricError, match="both positive and negative"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="0 or 1"):
        roc_auc([2, 0], [0.1, 0.2])
    with pytest.raises(MetricError, match="labels for"):
        roc_auc([1, 0], [0.1])
    with pytest.raises(MetricError, match="reserved"):
        roc_auc_by_task([[1], [0]], [[0.1], [0.2]], ["macro"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_scikit_learn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(200, 3))
    scores = np.round(rng.random((200, 3)) + 0.3 * labels, 1)  # rounding makes many ties
    out = roc_auc_by_task(labels, scores)
    per_task = roc_auc_score(labels, scores, average=None)
    for j in range(3):
        assert out[f"task_{j}"] == pytest.approx(per_task[j])
    assert out["macro"] == pytest.approx(roc_auc_score(labels, scores, average="macro"))
    assert out["overall"] == pytest.approx(roc_auc_score(labels, scores, average="micro"))


def test_reliability_curve_and_ece_by_hand() -> None:
    labels = [0, 0, 1, 1, 1, 0]
    probs = [0.05, 0.15, 0.3, 0.55, 0.95, 1.0]
    curve = reliability_curve(labels, probs, n_bins=4)
    # bins [0, .25): .05 .15 -> labels 0 0; [.25, .5): .3 -> 1; [.5, .75): .55 -> 1; [.75, 1]: .95 1.0 -> 1 0
    assert curve.count.tolist() == [2, 1, 1, 2]
    np.testing.assert_allclose(curve.mean_prediction, [0.1, 0.3, 0.55, 0.975])
    np.testing.assert_allclose(curve.frequency, [0.0, 1.0, 1.0, 0.5])
    # ECE = 2/6 * .1 + 1/6 * .7 + 1/6 * .45 + 2/6 * .475 = (0.2 + 0.7 + 0.45 + 0.95) / 6
    assert expected_calibration_error(labels, probs, n_bins=4) == pytest.approx(2.3 / 6)


def test_empty_bins_are_nan_and_weigh_nothing() -> None:
    curve = reliability_curve([1, 1], [0.9, 0.9], n_bins=2)
    assert curve.count.tolist() == [0, 2]
    assert math.isnan(curve.mean_prediction[0]) and math.isnan(curve.frequency[0])
    assert expected_calibration_error([1, 1], [0.9, 0.9], n_bins=2) == pytest.approx(0.1)


def test_calibration_refuses_bad_input() -> None:
    with pytest.raises(MetricError, match=r"\[0, 1\]"):
        reliability_curve([1], [1.5])
    with pytest.raises(MetricError, match="n_bins"):
        reliability_curve([1], [0.5], n_bins=0)
    with pytest.raises(MetricError, match="no predictions"):
        expected_calibration_error([], [])


@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_curve_matches_scikit_learn(seed: int) -> None:
    # continuous probabilities never sit exactly on an edge, where the two differ (sklearn puts an edge
    # value in the lower bin, we in the upper one)
    rng = np.random.default_rng(seed)
    probs = rng.random(500)
    labels = (rng.random(500) < probs**2).astype(int)
    curve = reliability_curve(labels, probs, n_bins=10)
    freq, mean_pred = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    filled = curve.count > 0
    np.testing.assert_allclose(curve.frequency[filled], freq)
    np.testing.assert_allclose(curve.mean_prediction[filled], mean_pred)


def test_perfectly_calibrated_bins_have_zero_ece() -> None:
    # in each bin the positive rate equals the mean prediction: 0.25 with 1 of 4, 0.75 with 3 of 4
    assert expected_calibration_error([1, 0, 0, 0, 1, 1, 1, 0], [0.25] * 4 + [0.75] * 4) == pytest.approx(0.0)


def test_plot_reliability_writes_a_png(tmp_path: Path) -> None:
    curve = reliability_curve([0, 1, 1, 0, 1], [0.1, 0.4, 0.8, 0.3, 0.9], n_bins=5)
    path = plot_reliability(curve, tmp_path / "plots" / "reliability.png", title="ranker")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
