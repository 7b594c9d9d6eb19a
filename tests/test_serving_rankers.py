"""Ranking inside the ingress process ("single" graph): its deadline, variants and reloads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_serving_api import CountRanker, stages

from serving.rankers import InProcessRanking, Rankers
from serving.recommender import LocalRetrieval, Recommender
from serving.schemas import RecommendRequest
from serving.stages import RankingStage


class SlowRanker(CountRanker):
    """Takes `seconds` of the event loop per ranking (blocking, as real scoring does); counts its calls."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        self.calls += 1
        time.sleep(self.seconds)
        return super().score(user_features, item_features, retrieval_scores)


class VersionedRanker(CountRanker):
    def __init__(self, version: str, reverse: bool = False) -> None:
        self.version = version
        self._sign = -1.0 if reverse else 1.0

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        return self._sign * super().score(user_features, item_features, retrieval_scores)


def recommender_over(rankers: Rankers, timeout_s: float = 1.0) -> Recommender:
    retrieval, _, _ = stages()
    ranking = InProcessRanking(rankers, timeout_s)
    return Recommender(LocalRetrieval(retrieval), ranking, 10, 20, ranking_timeout_s=timeout_s)


def test_a_ranking_that_waited_past_its_deadline_is_not_started_and_answers_in_retrieval_order() -> None:
    ranker = SlowRanker(0.3)
    _, stage, _ = stages(ranker)
    recommender = recommender_over(Rankers(lambda: stage), timeout_s=0.1)
    request = RecommendRequest(user_id="u1", k=3)

    async def three() -> list[Any]:
        return list(await asyncio.gather(*(recommender.recommend(request) for _ in range(3))))

    first, second, third = asyncio.run(three())
    # The first ranking took the loop for 0.3 s; it had started, so it ran to its end and answered.
    assert first.fallback_reason is None
    assert [item.item_id for item in first.items] == ["i11", "i10", "i9"]
    # The others had waited past the 0.1 s deadline by then: answered in retrieval order, not ranked.
    for late in (second, third):
        assert late.fallback_reason == "ranking_timeout"
        assert [item.item_id for item in late.items] == ["i1", "i3", "i4"]
    assert ranker.calls == 1


def test_the_deadline_counts_from_when_ranking_was_asked_for() -> None:
    _, stage, _ = stages()
    now = [100.0]
    ranking = InProcessRanking(Rankers(lambda: stage), 0.5, clock=lambda: now[0])
    retrieval, _, _ = stages()

    async def asked_then_waited(seconds: float) -> Any:
        found = await LocalRetrieval(retrieval).candidates("u1", 10, 10)
        pending = ranking.rank("u1", found)
        now[0] += seconds  # the loop was busy elsewhere before it ran the ranking
        return await pending

    assert asyncio.run(asked_then_waited(0.4)).item_ids[:3] == ["i11", "i10", "i9"]
    with pytest.raises(TimeoutError, match=r"not started after 0\.600 s"):
        asyncio.run(asked_then_waited(0.6))


def test_in_process_ranking_serves_variants_and_switches_champions() -> None:
    _, base, reader = stages()
    built: dict[str, RankingStage] = {
        "champion": RankingStage(VersionedRanker("3"), reader),
        "4": RankingStage(VersionedRanker("4", reverse=True), reader),
    }
    rankers = Rankers(lambda: built["champion"], lambda ref: built[ref])
    backend = InProcessRanking(rankers, 1.0)
    retrieval, _, _ = stages()

    async def scenario() -> tuple[list[str], list[str], str, list[str], str]:
        found = await LocalRetrieval(retrieval).candidates("u1", 10, 10)
        champion = await backend.rank("u1", found)
        assert await backend.load("4") == "4"
        variant = await backend.rank("u1", found, "4")
        built["champion"] = RankingStage(VersionedRanker("5", reverse=True), reader)
        version = await backend.reload()
        after = await backend.rank("u1", found)
        return champion.item_ids[:3], variant.item_ids[:3], version, after.item_ids[:3], after.model_version

    champion, variant, version, after, after_version = asyncio.run(scenario())
    assert champion == ["i11", "i10", "i9"]
    assert variant == ["i1", "i3", "i4"]  # the reversed variant, only for the request that names it
    assert version == "5" and after_version == "5" and after == ["i1", "i3", "i4"]
    assert base.version == "3"
