"""The pure parts of the evaluation stage: baseline lists, ordering, and averaging over users."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from evaluation.evaluate import mean_metrics, popularity_rankings, rankings_by_user


def test_popularity_rankings_skip_seen_items() -> None:
    ranked = popularity_rankings(["a", "b", "c", "d"], ["u1", "u2"], {"u1": {"a", "c"}}, 2)
    assert ranked == {"u1": ["b", "d"], "u2": ["a", "b"]}


def test_rankings_by_user_sort_by_score_with_stable_ties() -> None:
    frame = pd.DataFrame(
        {"user_id": ["u1", "u1", "u1", "u2"], "item_id": ["x", "y", "z", "w"], "s": [0.1, 0.5, 0.5, 1.0]}
    )
    assert rankings_by_user(frame, "s") == {"u1": ["y", "z", "x"], "u2": ["w"]}


def test_mean_metrics_average_over_users_with_relevant_items() -> None:
    rankings = {"u1": ["a", "b"], "u2": ["c", "d"]}
    relevant = {"u1": {"a"}, "u2": {"d", "e"}, "u3": {"a"}}  # u3 has no ranking: scores 0
    metrics = mean_metrics(rankings, relevant, [1, 2])
    assert metrics["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert metrics["recall@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    u2_ndcg2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics["ndcg@2"] == pytest.approx((1 + u2_ndcg2 + 0) / 3)
