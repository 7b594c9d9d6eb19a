"""Ranking inside the ingress process ("single" graph): deadlines, dropped work, variants and reloads."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from test_serving_api import CountRanker, stages

from serving.rankers import InProcessRanking, Rankers
from serving.recommender import LocalRetrieval, Recommender
from serving.schemas import RecommendRequest
from serving.stages import RankingStage


class BlockingRanker(CountRanker):
    """Holds the ranking thread until released; counts its calls."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        self.calls += 1
        self.release.wait(timeout=10.0)
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
    return Recommender(
        LocalRetrieval(retrieval), InProcessRanking(rankers), 10, 20, ranking_timeout_s=timeout_s
    )


def test_a_ranking_past_its_deadline_answers_in_retrieval_order_and_queued_work_is_dropped() -> None:
    ranker = BlockingRanker()
    _, stage, _ = stages(ranker)
    recommender = recommender_over(Rankers(lambda: stage), timeout_s=0.2)
    request = RecommendRequest(user_id="u1", k=3)

    async def both() -> tuple[list[Any], float]:
        started = time.perf_counter()
        answers = await asyncio.gather(recommender.recommend(request), recommender.recommend(request))
        return list(answers), time.perf_counter() - started

    answers, seconds = asyncio.run(both())
    ranker.release.set()
    # The first ranking holds the only ranking thread; neither answer waits for it.
    assert seconds < 5.0
    for answer in answers:
        assert answer.fallback_reason == "ranking_timeout"
        assert [item.item_id for item in answer.items] == ["i1", "i3", "i4"]  # retrieval order
    time.sleep(0.2)
    assert ranker.calls == 1  # the second request's ranking never started: dropped, not computed


def test_in_process_ranking_serves_variants_and_switches_champions() -> None:
    _, base, reader = stages()
    built: dict[str, RankingStage] = {
        "champion": RankingStage(VersionedRanker("3"), reader),
        "4": RankingStage(VersionedRanker("4", reverse=True), reader),
    }
    rankers = Rankers(lambda: built["champion"], lambda ref: built[ref])
    backend = InProcessRanking(rankers)
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


class ThreadRecordingRanker(CountRanker):
    """Records the thread each scoring ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return super().score(user_features, item_features, retrieval_scores)


def _same(stage: RankingStage) -> RankingStage:
    return stage


def test_ranking_runs_in_its_thread_or_on_the_event_loop_with_the_same_answer() -> None:
    retrieval, _, _ = stages()
    answers: dict[bool, list[str]] = {}
    for in_thread in (True, False):
        ranker = ThreadRecordingRanker()
        _, stage, _ = stages(ranker)
        backend = InProcessRanking(Rankers(partial(_same, stage)), in_thread=in_thread)

        async def scenario(backend: InProcessRanking = backend) -> tuple[list[str], int]:
            found = await LocalRetrieval(retrieval).candidates("u1", 10, 10)
            ranked = await backend.rank("u1", found)
            return ranked.item_ids, threading.get_ident()

        answers[in_thread], loop_thread = asyncio.run(scenario())
        assert len(ranker.threads) == 1
        assert (ranker.threads[0] != loop_thread) is in_thread
    assert answers[True] == answers[False] == ["i11", "i10", "i9", *answers[True][3:]]


class SleepingRanker(CountRanker):
    """Holds the thread it runs on (the event loop, when ranking runs there) for `seconds`; counts calls."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        self.calls += 1
        time.sleep(self.seconds)
        return super().score(user_features, item_features, retrieval_scores)


def test_on_the_event_loop_a_ranking_that_waited_past_its_deadline_is_not_computed() -> None:
    ranker = SleepingRanker(0.4)
    retrieval, stage, _ = stages(ranker)
    recommender = Recommender(
        LocalRetrieval(retrieval),
        InProcessRanking(Rankers(partial(_same, stage)), in_thread=False),
        10,
        20,
        ranking_timeout_s=0.2,
    )
    request = RecommendRequest(user_id="u1", k=3)

    async def both() -> list[Any]:
        return list(await asyncio.gather(recommender.recommend(request), recommender.recommend(request)))

    first, second = asyncio.run(both())
    # The first ranking started at once and held the loop past both deadlines: it ends and is served;
    # the second waited for the loop past its deadline and is answered in retrieval order, not ranked.
    assert first.fallback_reason is None
    assert second.fallback_reason == "ranking_timeout"
    assert [item.item_id for item in second.items] == ["i1", "i3", "i4"]
    assert ranker.calls == 1
