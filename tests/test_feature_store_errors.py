"""The serving read path on a real Redis: unknown ids read as missing values (counted, never an
exception); a Redis that is down or hangs is a `FeatureStoreUnavailable` naming it without its password,
which the ingress answers with its popularity fallback; reads resume when Redis is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from factories import write_snapshot_tables
from feast import FeatureStore
from servers import RedisServer

from recsys.config import FeaturesConfig
from recsys.features.materialization import materialize_online
from recsys.features.online_read import OnlineReader
from recsys.features.store import (
    FeatureStoreUnavailable,
    apply_definitions,
    build_store,
    online_features,
)
from recsys.state import StateDir
from serving.recommender import FEATURE_STORE_UNAVAILABLE, LocalRanking, LocalRetrieval, Recommender
from serving.schemas import RecommendRequest
from serving.stages import Candidates, RankingStage, RetrievalStage

pytestmark = pytest.mark.integration

T = datetime(2024, 2, 1, tzinfo=UTC)
ITEMS = [f"i{n}" for n in range(8)]
PASSWORD = "s3cret-pw"


class CatalogRetrieval:
    """Retrieves the catalogue in order, and an item the store has never heard of."""

    version = "7"

    def knows_user(self, user_id: str) -> bool:
        return user_id == "u1"

    def retrieve(self, user_id: str, user_features: dict[str, Any], n: int) -> tuple[list[str], np.ndarray]:
        found = [*ITEMS, "never-seen"][:n]
        return found, np.linspace(1.0, 0.5, len(found))

    def popular(self, n: int) -> tuple[list[str], np.ndarray]:
        ids = ITEMS[:n]
        return ids, np.arange(len(ids), 0, -1, dtype=np.float64)


class CountRanker:
    """Scores by `item_n_events`, with the default -1 where the store has no value."""

    version = "3"
    feature_service = "ranker_v1"

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        scores: np.ndarray = item_features["item_n_events"].fillna(-1).to_numpy(dtype=np.float64)
        return scores


@pytest.fixture
def server() -> Iterator[RedisServer]:
    started = RedisServer(password=PASSWORD).start()
    yield started
    started.stop()


def _loaded(state: StateDir, config: FeaturesConfig) -> FeatureStore:
    write_snapshot_tables(state, [("u1", T, 5, None)], [(item, T, n, None) for n, item in enumerate(ITEMS)])
    store = build_store(state, config)
    apply_definitions(store)
    materialize_online(state, config, store=store)
    return store


def _features_of(store: FeatureStore, view: str) -> int:
    """How many features of `view` the ranker's service reads."""
    service = store.get_feature_service("ranker_v1")
    return sum(len(p.features) for p in service.feature_view_projections if p.name == view)


def test_unknown_ids_read_as_missing_values_and_are_counted(state: StateDir, server: RedisServer) -> None:
    store = _loaded(state, FeaturesConfig(online_store="redis", redis_url=server.url))
    ranking = RankingStage(CountRanker(), OnlineReader(store))
    known = ranking.rank("u1", Candidates(["i1", "i2", "i3"], [3.0, 2.0, 1.0], "7"))
    unknown = ranking.rank("nobody", Candidates(["i1", "nope", "i2"], [3.0, 2.0, 1.0], "7"))
    assert unknown.item_ids == ["i2", "i1", "nope"]  # the unknown item ranks on its default
    extra = unknown.details["missing_features"] - known.details["missing_features"]
    assert extra == 3 * _features_of(store, "user_stats") + _features_of(store, "item_stats")
    retrieval = RetrievalStage(CatalogRetrieval(), OnlineReader(store))
    assert retrieval.user_features("nobody")["user_n_events"] is None


def test_redis_down_is_a_typed_error_the_ingress_falls_back_on(state: StateDir, server: RedisServer) -> None:
    config = FeaturesConfig(online_store="redis", redis_url=server.url, redis_timeout_s=0.3)
    store = _loaded(state, config)
    reader = OnlineReader(store)
    recommender = Recommender(
        LocalRetrieval(RetrievalStage(CatalogRetrieval(), reader)),
        LocalRanking(RankingStage(CountRanker(), reader)),
        n_candidates=10,
        max_k=20,
    )
    asyncio.run(recommender.warm_up())
    request = RecommendRequest(user_id="u1", k=3)
    personal = asyncio.run(recommender.recommend(request))
    assert not personal.fallback and [i.item_id for i in personal.items] == ["i7", "i6", "i5"]
    # Feast's own read once while Redis is up: its first call's lazy set-up (~0.5 s when no earlier test
    # made one) is not the failure the timing below is about.
    assert len(online_features(store, "ranker_v1", [{"user_id": "u1"}])) == 1

    server.stop()
    for read in (reader, partial(online_features, store)):
        started = time.perf_counter()
        with pytest.raises(FeatureStoreUnavailable, match=f"redis://127.0.0.1:{server.port}/0") as err:
            read("ranker_v1", [{"user_id": "u1"}])
        assert PASSWORD not in str(err.value) and time.perf_counter() - started < 0.3
    down = asyncio.run(recommender.recommend(request))
    assert down.fallback and down.fallback_reason == FEATURE_STORE_UNAVAILABLE
    assert [i.item_id for i in down.items] == ["i0", "i1", "i2"]  # the popularity list of warm-up

    server.start()  # it kept nothing on disk: reads answer again, with nothing stored, until a full load
    assert reader("ranker_v1", [{"user_id": "u1"}])["user_n_events"].isna().all()
    materialize_online(state, config, full=True, store=store)
    assert reader("ranker_v1", [{"user_id": "u1"}])["user_n_events"].tolist() == [5]
    assert not asyncio.run(recommender.recommend(request)).fallback

    # A Redis that hangs fails the read after redis_timeout_s instead of blocking the request.
    redis.Redis.from_url(server.url).client_pause(1500, all=True)
    started = time.perf_counter()
    with pytest.raises(FeatureStoreUnavailable, match="Timeout"):
        reader("ranker_v1", [{"user_id": "u1"}])
    assert time.perf_counter() - started < 1.0
