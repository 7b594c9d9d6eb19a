"""The fast online read returns what Feast's `get_online_features` returns, from SQLite and from Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pytest
import redis
from factories import write_feature_table

from recsys.config import FeaturesConfig
from recsys.features import schema
from recsys.features.online_read import OnlineReader, TTLCache
from recsys.features.store import (
    FeatureRequestError,
    apply_definitions,
    build_store,
    materialize,
    online_features,
)
from recsys.state import StateDir
from recsys.vocab import GENRES

pytestmark = pytest.mark.integration

OLD = datetime(2020, 1, 1, tzinfo=UTC)
NEW = datetime(2020, 6, 1, tzinfo=UTC)
G = len(GENRES)
N_USERS, N_ITEMS = 30, 300
ONLINE_TEST_REDIS_DB = 13


def write_snapshots(state: StateDir, seed: int = 7, item_rate_offset: float = 0.0) -> None:
    """Two snapshots per entity (the online store must hold the newer), with some missing values."""
    rng = np.random.default_rng(seed)

    def missing(values: list[object], every: int) -> list[object]:
        return [None if j % every == 3 else v for j, v in enumerate(values)]

    users: dict[str, list[Any]] = {
        "user_id": [f"u{j}" for j in range(N_USERS)] * 2,
        "feature_ts": [OLD] * N_USERS + [NEW] * N_USERS,
        "user_genre_affinity": missing([rng.random(G).tolist() for _ in range(2 * N_USERS)], 11),
        "user_n_events": rng.integers(0, 1000, 2 * N_USERS).tolist(),
        "user_n_positive": missing(rng.integers(0, 50, 2 * N_USERS).tolist(), 7),
        "user_n_events_30d": rng.integers(0, 50, 2 * N_USERS).tolist(),
        "user_days_since_first_event": rng.random(2 * N_USERS).tolist(),
        "user_days_since_last_event": missing(rng.random(2 * N_USERS).tolist(), 5),
    }
    items: dict[str, list[Any]] = {
        "item_id": [f"i{j}" for j in range(N_ITEMS)] * 2,
        "feature_ts": [OLD] * N_ITEMS + [NEW] * N_ITEMS,
        "item_genre_vector": missing(
            [(rng.random(G) < 0.2).astype(float).tolist() for _ in range(2 * N_ITEMS)], 13
        ),
        "item_n_events": rng.integers(0, 1000, 2 * N_ITEMS).tolist(),
        "item_n_positive": rng.integers(0, 50, 2 * N_ITEMS).tolist(),
        "item_n_events_365d": missing(rng.integers(0, 50, 2 * N_ITEMS).tolist(), 9),
        "item_positive_rate": (rng.random(2 * N_ITEMS) + item_rate_offset).tolist(),
        "item_age_days": rng.uniform(-1, 3000, 2 * N_ITEMS).tolist(),
    }
    state.offline.mkdir(parents=True, exist_ok=True)
    for columns, layout, name in (
        (users, schema.user_features_schema(), schema.USER_FEATURES_FILE),
        (items, schema.item_features_schema(), schema.ITEM_FEATURES_FILE),
    ):
        columns["created_ts"] = columns["feature_ts"]
        write_feature_table(columns, layout, state.offline / name)
    write_feature_table({}, schema.coview_schema(), state.offline / schema.COVIEW_FILE)


def _store(root: Path, kind: str, redis_url: str, seed: int = 7, offset: float = 0.0) -> object:
    state = StateDir(root)
    write_snapshots(state, seed, offset)
    config = FeaturesConfig(online_store=kind, redis_url=redis_url)  # type: ignore[arg-type]
    store = build_store(state, config)
    apply_definitions(store)
    materialize(store, NEW + timedelta(days=1))
    return store


REQUESTS: list[tuple[str, list[dict[str, str]]]] = [
    # a ranking request: one user, candidates with repeats and ids the store does not hold
    (
        "ranker_v1",
        [{"user_id": "u4", "item_id": f"i{j}"} for j in range(0, N_ITEMS, 2)]
        + [{"user_id": "u4", "item_id": "i6"}, {"user_id": "u4", "item_id": "unknown"}],
    ),
    ("ranker_v1", [{"user_id": "nobody", "item_id": "i1"}]),
    ("two_tower_v1", [{"user_id": f"u{j}"} for j in range(N_USERS)] + [{"user_id": "nobody"}]),
    ("two_tower_v1", [{"item_id": f"i{j}"} for j in range(0, N_ITEMS, 7)]),
    ("ranker_v1", [{"item_id": "i3"}, {"item_id": "i3"}]),
]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_fast_read_equals_feast(tmp_path: Path, redis_url: str, kind: str) -> None:
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{ONLINE_TEST_REDIS_DB}"))
    redis.Redis.from_url(url).flushdb()
    store = _store(tmp_path / "state", kind, url)
    reader = OnlineReader(store)  # type: ignore[arg-type]
    cached = OnlineReader(store, cache_ttl_s=60.0)  # type: ignore[arg-type]
    for service, rows in REQUESTS:
        expected = online_features(store, service, rows)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(reader(service, rows), expected)
        pd.testing.assert_frame_equal(cached(service, rows), expected)
        pd.testing.assert_frame_equal(cached(service, rows), expected)  # now from the cache
    # the data really has missing values and unknown entities, so those paths were compared
    ranked = reader(*REQUESTS[0])
    assert ranked["item_n_events_365d"].isna().any() and ranked["item_genre_vector"].isna().any()
    assert ranked["item_n_events"].isna().sum() == 1  # "unknown"
    assert cached.cache is not None and cached.cache.hits > 0


def test_cache_serves_items_until_ttl(tmp_path: Path, redis_url: str) -> None:
    now = [0.0]
    store = _store(tmp_path / "state", "sqlite", redis_url)
    reader = OnlineReader(store, cache_ttl_s=30.0, clock=lambda: now[0])  # type: ignore[arg-type]
    rows = [{"user_id": "u1", "item_id": "i2"}]
    before = reader("ranker_v1", rows)
    # a new materialisation changes every item's positive rate (and the users')
    _store(tmp_path / "state", "sqlite", redis_url, seed=8, offset=5.0)
    now[0] = 10.0
    stale = reader("ranker_v1", rows)
    assert stale["item_positive_rate"][0] == before["item_positive_rate"][0]
    assert stale["user_n_events"][0] != before["user_n_events"][0]  # users are never cached
    now[0] = 31.0
    fresh = reader("ranker_v1", rows)
    assert fresh["item_positive_rate"][0] >= 5.0


def test_lists_handed_out_are_copies(tmp_path: Path, redis_url: str) -> None:
    store = _store(tmp_path / "state", "sqlite", redis_url)
    reader = OnlineReader(store, cache_ttl_s=60.0)  # type: ignore[arg-type]
    first = reader("ranker_v1", [{"item_id": "i1"}])
    first["item_genre_vector"][0][0] = 123.0
    assert reader("ranker_v1", [{"item_id": "i1"}])["item_genre_vector"][0][0] != 123.0


def test_bad_requests(tmp_path: Path, redis_url: str) -> None:
    store = _store(tmp_path / "state", "sqlite", redis_url)
    reader = OnlineReader(store)  # type: ignore[arg-type]
    with pytest.raises(FeatureRequestError, match="unknown feature service"):
        reader("ranker_v0", [{"item_id": "i1"}])
    with pytest.raises(FeatureRequestError, match="empty"):
        reader("ranker_v1", [])
    with pytest.raises(FeatureRequestError, match="same keys"):
        reader("ranker_v1", [{"item_id": "i1"}, {"user_id": "u1"}])
    with pytest.raises(FeatureRequestError, match="strings"):
        reader("ranker_v1", [{"item_id": 5}])
    with pytest.raises(FeatureRequestError, match="needs one of"):
        reader("ranker_v1", [{"session_id": "s"}])


def test_ttl_cache_evicts_least_recently_used() -> None:
    cache = TTLCache(ttl_s=10.0, max_entries=2, clock=lambda: 0.0)
    cache.put("a", (1,))
    cache.put("b", (2,))
    assert cache.get("a") == (1,)  # "b" is now the least recently used
    cache.put("c", (3,))
    assert cache.get("b") is None and cache.get("a") == (1,) and cache.get("c") == (3,)
    assert len(cache) == 2 and cache.hits == 3 and cache.misses == 1
