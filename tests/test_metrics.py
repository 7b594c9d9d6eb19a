"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evaluation.metrics import MetricError, ndcg_at_k, recall_at_k


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
