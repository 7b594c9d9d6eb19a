"""The no-repeat window shared by ingress replicas through a real Redis (serving/shown.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from servers import free_port
from test_serving_api import CatalogRetrieval, CountRanker, GatedRanking, client_for, genre_features

from serving.recommender import IngressState, LocalRanking, LocalRetrieval, Recommender
from serving.reranking import RerankConfig
from serving.schemas import RecommendRequest
from serving.shown import SharedShown
from serving.stages import RankingStage, RetrievalStage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

SHOWN_TEST_REDIS_DB = 12
# Pure relevance, no caps or freshness: the ranker's order is the answer, so repeats are easy to see.
CONFIG = RerankConfig(mmr_lambda=1.0, max_per_category=None, freshness_weight=0.0, no_repeat_responses=2)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A database of its own on the fixture's server, emptied first."""
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{SHOWN_TEST_REDIS_DB}"))
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    yield connection
    connection.close()


def replica(shown: SharedShown | None) -> Recommender:
    """One ingress replica over the in-test catalogue (u1 has seen i0 and i2)."""
    reader = genre_features()
    retrieval = RetrievalStage(CatalogRetrieval({"u1": {"i0", "i2"}}), reader)
    ranking = RankingStage(CountRanker(), reader, CONFIG)
    return Recommender(
        LocalRetrieval(retrieval),
        LocalRanking(ranking),
        n_candidates=30,
        max_k=20,
        rerank=CONFIG,
        state=IngressState(shared_shown=shown),
    )


def shown_by(recommender: Recommender, user_id: str = "u1", k: int = 5) -> list[str]:
    with client_for(recommender) as http:
        answer = http.post("/recommend", json={"user_id": user_id, "k": k})
    assert answer.status_code == 200, answer.text
    return [item["item_id"] for item in answer.json()["items"]]


def test_the_window_keeps_each_users_last_answers_and_expires(client: redis.Redis) -> None:
    shown = SharedShown(client, "proj", n_responses=2, ttl_s=30)
    for answer in (["a", "b"], ["c"], ["d", "e"]):
        shown.record("u", answer)
    shown.record("v", ["x"])
    assert shown.items("u") == {"c", "d", "e"}  # the oldest answer is out of the window of two
    assert shown.items("v") == {"x"} and shown.items("w") == frozenset()
    assert client.llen("proj:shown:u") == 2
    assert 0 < int(client.pttl("proj:shown:u")) <= 30_000  # type: ignore[arg-type]  # sync client
    assert SharedShown(client, "other", 2, 30).items("u") == frozenset()  # projects stay apart


def test_a_second_replica_does_not_repeat_what_the_first_showed(client: redis.Redis) -> None:
    first = shown_by(replica(SharedShown(client, "proj", 2, 60)))
    second = shown_by(replica(SharedShown(client, "proj", 2, 60)))
    assert len(first) == len(second) == 5
    assert not set(first) & set(second)
    # Replicas that keep their own windows do repeat: what the shared one prevents.
    assert shown_by(replica(None)) == first


def test_a_window_that_does_not_answer_falls_back_to_the_replicas_own(client: redis.Redis) -> None:
    gone = SharedShown(redis.Redis(port=free_port(), socket_connect_timeout=0.2), "proj", 2, 60)
    recommender = replica(gone)
    first = shown_by(recommender)
    second = shown_by(recommender)  # answered, and this replica still remembers its own answer
    assert len(second) == 5 and not set(first) & set(second)
    # Counted once: after a failure the shared window rests for a few seconds.
    metrics = recommender.metrics.render().decode()
    assert 'recsys_errors_total{reason="ConnectionError",stage="shown"} 1.0' in metrics


def test_a_shed_answer_leaves_the_shared_window_alone(client: redis.Redis) -> None:
    """Past `max_in_flight` the answer touches no store: it is not added to the shared window."""
    reader = genre_features()
    ranking = GatedRanking()
    recommender = Recommender(
        LocalRetrieval(RetrievalStage(CatalogRetrieval({"u1": {"i0", "i2"}}), reader)),
        ranking,
        n_candidates=30,
        max_k=20,
        rerank=CONFIG,
        state=IngressState(shared_shown=SharedShown(client, "proj", 2, 60)),
        max_in_flight=1,
    )

    async def scenario() -> str | None:
        await recommender.warm_up()
        held = asyncio.create_task(recommender.recommend(RecommendRequest(user_id="u1", k=3)))
        while ranking.waiting < 1:
            await asyncio.sleep(0)
        shed = await recommender.recommend(RecommendRequest(user_id="u2", k=3))
        ranking.gate.set()
        await held
        return shed.fallback_reason

    assert asyncio.run(scenario()) == "overloaded"
    assert client.exists("proj:shown:u1") == 1  # the ranked answer is shared
    assert client.exists("proj:shown:u2") == 0
