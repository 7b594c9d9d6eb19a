"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evaluation.metrics import (
    RANKING_METRICS,
    MetricError,
    average_precision_at_k,
    hit_at_k,
    judge,
    ndcg_at_k,
    precision,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    reciprocal_rank_at_k,
)


def test_recall_at_k_counts_hits_over_all_relevant() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"b", "d", "z"}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, {"b", "d", "z"}, 4) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"q"}, 4) == 0.0
    assert recall_at_k(ranked, set(), 4) == 0.0


def test_ndcg_at_k_by_hand() -> None:
    # hits at positions 1 and 3: DCG = 1 + 1/log2(4) = 1.5; ideal (2 relevant) = 1 + 1/log2(3)
    expected = 1.5 / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "x", "b", "y"], {"a", "b"}, 4) == pytest.approx(expected)
    # k cuts the list: only "a" counts, and the ideal for k=1 is 1
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}, 1) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a"], {"a", "b", "c"}, 2) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    )


def test_perfect_and_empty_rankings() -> None:
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k([], {"a"}, 10) == 0.0
    assert ndcg_at_k(["a"], set(), 10) == 0.0


def test_k_must_be_positive() -> None:
    with pytest.raises(MetricError, match="at least 1"):
        recall_at_k(["a"], {"a"}, 0)
    with pytest.raises(MetricError):
        ndcg_at_k(["a"], {"a"}, -1)


# ranked ["a", "x", "b", "y"], relevant {"a", "b", "c"}: hits at positions 1 and 3, 3 relevant items
RANKED = ["a", "x", "b", "y"]
RELEVANT = {"a", "b", "c"}


def test_precision_at_k_by_hand() -> None:
    assert precision_at_k(RANKED, RELEVANT, 1) == 1.0  # 1 hit / 1
    assert precision_at_k(RANKED, RELEVANT, 4) == 0.5  # 2 hits / 4
    # K larger than the list: missing positions are misses, the denominator stays K: 2 / 10
    assert precision_at_k(RANKED, RELEVANT, 10) == pytest.approx(0.2)
    assert precision_at_k(RANKED, set(), 4) == 0.0


def test_reciprocal_rank_and_hit_by_hand() -> None:
    assert reciprocal_rank_at_k(["x", "y", "a"], RELEVANT, 3) == pytest.approx(1 / 3)  # first hit at 3
    assert reciprocal_rank_at_k(["x", "y", "a"], RELEVANT, 2) == 0.0  # the hit is past K
    assert reciprocal_rank_at_k(RANKED, RELEVANT, 4) == 1.0
    assert hit_at_k(["x", "y", "a"], RELEVANT, 2) == 0.0
    assert hit_at_k(["x", "y", "a"], RELEVANT, 3) == 1.0


def test_average_precision_by_hand() -> None:
    # hits at 1 and 3: precision there 1/1 and 2/3; divided by |relevant| = 3 -> (1 + 2/3) / 3
    assert average_precision_at_k(RANKED, RELEVANT, 4) == pytest.approx((1 + 2 / 3) / 3)
    # K = 2 keeps only the hit at 1: 1 / 3 (the denominator stays the number of relevant items)
    assert average_precision_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 3)
    assert average_precision_at_k(["a", "b", "c"], RELEVANT, 3) == pytest.approx(1.0)


def test_graded_ndcg_by_hand() -> None:
    grades = {"a": 3.0, "b": 1.0, "c": 2.0}
    # linear: DCG = 3/log2(2) + 1/log2(4) = 3.5; ideal = 3 + 2/log2(3) + 1/log2(4)
    ideal = 3 + 2 / math.log2(3) + 0.5
    assert ndcg_at_k(RANKED, grades, 4) == pytest.approx(3.5 / ideal)
    # exponential: gains 2**g - 1 -> a 7, b 1, c 3: DCG = 7 + 1/2; ideal = 7 + 3/log2(3) + 1/2
    assert ndcg_at_k(RANKED, grades, 4, gain="exponential") == pytest.approx(
        7.5 / (7 + 3 / math.log2(3) + 0.5)
    )
    # grade 0 means not relevant: same as leaving the item out
    assert ndcg_at_k(RANKED, {"a": 1.0, "x": 0.0}, 4) == 1.0
    assert precision_at_k(RANKED, {"a": 1.0, "x": 0.0}, 2) == 0.5


def test_bad_input_is_refused() -> None:
    with pytest.raises(MetricError, match="more than once"):
        recall_at_k(["a", "a"], {"a"}, 2)
    with pytest.raises(MetricError, match="gain >= 0"):
        ndcg_at_k(["a"], {"a": -1.0}, 1)
    with pytest.raises(MetricError, match="gain must be"):
        ndcg_at_k(["a"], {"a"}, 1, gain="cubic")  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="no user"):
        ranking_metrics({"u": ["a"]}, {"u": set()}, [1])
    with pytest.raises(MetricError, match="deeper"):
        precision(judge([["a"]], [{"a"}], 2), 3)


def test_ranking_metrics_excludes_users_without_relevant_items() -> None:
    rankings = {"u1": ["a", "x"], "u2": ["x", "b"], "u3": ["a"]}
    relevant = {"u1": {"a"}, "u2": {"b", "c"}, "u3": set(), "u4": {"z"}}
    m = ranking_metrics(rankings, relevant, [1, 2])
    # included: u1, u2, u4 (u4 has no ranking: an empty list); u3 has nothing relevant and is left out
    assert m["precision@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert m["precision@2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["recall@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["mrr@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["hit_rate@1"] == pytest.approx(1 / 3)
    # u2: hit at 2 -> (1/2) / 2 relevant = 0.25
    assert m["map@2"] == pytest.approx((1 + 0.25 + 0) / 3)
    u2_ndcg = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["ndcg@2"] == pytest.approx((1 + u2_ndcg + 0) / 3)
    assert set(m) == {f"{name}@{k}" for name in RANKING_METRICS for k in (1, 2)}
