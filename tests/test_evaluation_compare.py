"""Paired comparisons of table rows: per-user metrics by hand, the bootstrap interval, the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.compare import compare_rows, paired_bootstrap, per_user_metric, render_comparisons
from evaluation.metrics import MetricError, ranking_metrics

RELEVANT = {"u": {"b"}, "v": {"a", "c"}, "w": set()}


def test_per_user_values_by_hand() -> None:
    rankings = {"u": ["a", "b"], "v": ["c", "x", "a"]}
    ndcg = per_user_metric(rankings, RELEVANT, ["u", "v"], "ndcg@3")
    # u: hit at rank 2 -> 1/log2(3); ideal 1. v: hits at 1 and 3 -> 1 + 1/2; ideal 1 + 1/log2(3).
    expected = [1 / math.log2(3), 1.5 / (1 + 1 / math.log2(3))]
    np.testing.assert_allclose(ndcg, expected)
    # Their mean is the table's figure.
    assert ndcg.mean() == pytest.approx(ranking_metrics(rankings, RELEVANT, [3])["ndcg@3"])
    assert per_user_metric({}, RELEVANT, ["u"], "recall@10").tolist() == [0.0]  # no ranking scores 0
    with pytest.raises(MetricError, match="unknown metric 'mrr@10'"):
        per_user_metric(rankings, RELEVANT, ["u"], "mrr@10")


def test_the_interval_of_a_constant_shift_is_the_shift() -> None:
    a = np.array([0.3, 0.5, 0.1, 0.9])
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    difference, low, high = paired_bootstrap(a + 0.25, a)
    assert (difference, low, high) == pytest.approx((0.25, 0.25, 0.25))


def test_the_interval_covers_the_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(400), rng.random(400)
    difference, low, high = paired_bootstrap(a, b, n_resamples=4000)
    assert low < difference < high
    # The normal approximation of the mean difference's 95% interval, for a sample this size.
    half = 1.96 * (a - b).std(ddof=1) / math.sqrt(400)
    assert high - low == pytest.approx(2 * half, rel=0.1)
    assert paired_bootstrap(a, b, n_resamples=4000) == (difference, low, high)
    with pytest.raises(MetricError, match="non-empty"):
        paired_bootstrap(np.zeros(0), np.zeros(0))


def test_rows_are_compared_on_the_users_with_a_relevant_item() -> None:
    rankings = {
        "retrieval+ranking": {"u": ["b"], "v": ["a", "c"]},  # perfect for both judged users
        "popularity": {"u": ["x"], "v": ["x"]},  # nothing right
        "same": {"u": ["b"], "v": ["a", "c"]},
    }
    out = compare_rows(rankings, RELEVANT, "retrieval+ranking", ["ndcg@2"], n_resamples=200)
    by_other = {c.other: c for c in out}
    assert set(by_other) == {"popularity", "same"} and {c.n_users for c in out} == {2}  # w has nothing
    assert by_other["popularity"].difference == 1.0 and by_other["popularity"].verdict == "better"
    assert by_other["same"].difference == 0.0 and by_other["same"].verdict == "not significant"
    worse = compare_rows({**rankings, "retrieval+ranking": rankings["popularity"]}, RELEVANT,
                         "retrieval+ranking", ["ndcg@2"], n_resamples=200)  # fmt: skip
    assert {c.other: c.verdict for c in worse}["same"] == "worse"
    line = render_comparisons(out[:1]).split()
    assert line[:4] == ["retrieval+ranking", "-", "popularity", "ndcg@2"] and line[4] == "+1.0000"
