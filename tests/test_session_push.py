"""Session rows pushed to the Feast online store (SQLite and Redis): visible to another replica within a
second, expired after the 1-hour TTL, equal to the offline replay, and written by POST /events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient
from feast import FeatureStore
from test_serving_ingress import AffinityRanker, GenreRetrieval, Reader, genres, views

from recsys.config import FeaturesConfig, PipelineConfig
from recsys.features import schema
from recsys.features.online_read import OnlineReader
from recsys.features.session_features import (
    CATEGORY_COUNTS,
    LAST_ITEMS,
    session_feature_table,
    write_session_table,
)
from recsys.features.session_online import SESSION_SERVICE, OnlineSessions, item_genre_lookup
from recsys.features.store import (
    apply_definitions,
    build_store,
    historical_features,
    materialize,
    online_features,
)
from recsys.state import StateDir
from recsys.vocab import GENRES
from serving.api import create_api
from serving.app import load_shared_sessions, load_shared_shown
from serving.cache import PredictionCache
from serving.events import EventLog, parse_events
from serving.recommender import IngressState, LocalRanking, LocalRetrieval, Recommender
from serving.reranking import RerankConfig
from serving.session import SessionStore
from serving.stages import RankingStage, RetrievalStage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

SESSION_TEST_REDIS_DB = 11
HORROR = GENRES.index("Horror")


def features_config(kind: str, redis_url: str) -> FeaturesConfig:
    """The store kind; Redis gets a database of its own on the fixture's server, emptied first."""
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{SESSION_TEST_REDIS_DB}"))
    if kind == "redis":
        redis.Redis.from_url(url).flushdb()
    return FeaturesConfig(online_store=kind, redis_url=url)  # type: ignore[arg-type]


def write_item_genres(state: StateDir, genre_of: dict[str, list[float]], at: datetime) -> None:
    """An item snapshot holding only genre vectors (the other item features null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = schema.item_features_schema()
    columns: dict[str, list[Any]] = {name: [None] * len(genre_of) for name in layout.names}
    columns.update(item_id=list(genre_of), item_genre_vector=list(genre_of.values()))
    columns.update(feature_ts=[at] * len(genre_of), created_ts=[at] * len(genre_of))
    state.offline.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=layout), state.offline / schema.ITEM_FEATURES_FILE)


def fixed(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def applied_store(state: StateDir, config: FeaturesConfig) -> FeatureStore:
    store = build_store(state, config)
    apply_definitions(store)
    return store


def events(user: str, items: list[str], when: datetime, kind: str = "view") -> list[Any]:
    """Validated `serving.events.Event`s, as the ingress hands them on."""
    body = views(user, items)
    for event in body["events"]:
        event["event_ts"] = when.isoformat()
        event["event_type"] = kind
        event["event_id"] = f"{event['event_id']}-{when.timestamp()}"
        if kind != "view":
            event["dwell_time_ms"] = None
    return parse_events(json.dumps(body).encode(), max_events=100).accepted


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_pushed_session_reaches_another_replica_within_a_second(
    tmp_path: Path, redis_url: str, kind: str
) -> None:
    state = StateDir(tmp_path / "state")
    snapshot = datetime(2026, 1, 1, tzinfo=UTC)
    rng = np.random.default_rng(3)
    genre_of = {f"i{n}": (rng.random(len(GENRES)) < 0.3).astype(float).tolist() for n in range(20)}
    write_item_genres(state, genre_of, snapshot)
    config = PipelineConfig(state_dir=state.root, features=features_config(kind, redis_url))
    store = applied_store(state, config.features)
    materialize(store, snapshot, views=["item_stats"])  # the genre vectors the counts are made of
    writer, other = load_shared_sessions(config), load_shared_sessions(config)  # two replicas
    assert isinstance(other, OnlineSessions)
    lags = []
    items = ["i3", "i7", "i11", "i3"]
    for n, item in enumerate(items):
        started = time.perf_counter()
        writer.record(events("u1", [item], datetime.now(UTC)))
        while not other.items("u1") or other.items("u1")[-1] != item:
            assert time.perf_counter() - started < 1.0, f"event {n} not visible after 1 s"
        lags.append(time.perf_counter() - started)
    assert other.items("u1") == ["i7", "i11", "i3"]  # i3 again: once, at the end
    # The no-repeat window is shared the same way with Redis, and kept per replica with SQLite.
    shown = load_shared_shown(config), load_shared_shown(config)
    if kind == "sqlite":
        assert shown == (None, None)
    else:
        assert shown[0] is not None and shown[1] is not None
        shown[0].record("u1", ["i4", "i5"])
        assert shown[1].items("u1") == {"i4", "i5"}
    vectors = online_features(store, "two_tower_v1", [{"item_id": i} for i in items])["item_genre_vector"]
    expected = np.sum([np.nan_to_num(np.asarray(v, dtype=np.float64)) for v in vectors], axis=0)
    assert expected.sum() > 0  # the items have genres, so the counts were really compared
    counts = other.category_counts("u1")
    assert counts is not None
    np.testing.assert_allclose(counts, expected)
    assert max(lags) < 1.0


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_session_older_than_an_hour_reads_as_empty(tmp_path: Path, redis_url: str, kind: str) -> None:
    state = StateDir(tmp_path / "state")
    store = applied_store(state, features_config(kind, redis_url))
    now = datetime.now(UTC)
    for user, age in (("fresh", timedelta(minutes=58)), ("stale", timedelta(minutes=61))):
        pushed_at = now - age
        OnlineSessions(store, lambda ids: {}, clock=fixed(pushed_at)).record(events(user, ["i1"], pushed_at))
    sessions = OnlineSessions(store, lambda ids: {})
    assert sessions.items("fresh") == ["i1"]
    assert sessions.items("stale") == [] and sessions.read(["stale"]) == [None]
    # every read path honours the TTL, with the same values: Feast's read and the fast reader
    rows = [{"user_id": "fresh"}, {"user_id": "stale"}, {"user_id": "never"}]
    fast = OnlineReader(store)(SESSION_SERVICE, rows)
    assert fast[LAST_ITEMS].tolist() == [["i1"], None, None]
    pd.testing.assert_frame_equal(fast, online_features(store, SESSION_SERVICE, rows))
    # the age is read per request: a minute later the fresh session has expired too
    later = OnlineReader(store, wall_clock=lambda: time.time() + 3 * 60)
    assert later(SESSION_SERVICE, rows)[LAST_ITEMS].tolist() == [None, None, None]


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_the_sqlite_session_age_does_not_depend_on_the_machine_time_zone(
    tmp_path: Path, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Feast's SQLite adapter stores naive UTC times through the local zone; both reads must undo it alike.
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        store = applied_store(StateDir(tmp_path / "state"), FeaturesConfig())
        now = datetime.now(UTC)
        for user, age in (("fresh", timedelta(minutes=50)), ("stale", timedelta(minutes=70))):
            pushed_at = now - age
            OnlineSessions(store, lambda ids: {}, clock=fixed(pushed_at)).record(
                events(user, ["i1"], pushed_at)
            )
        rows = [{"user_id": "fresh"}, {"user_id": "stale"}]
        fast = OnlineReader(store)(SESSION_SERVICE, rows)
        assert fast[LAST_ITEMS].tolist() == [["i1"], None]
        pd.testing.assert_frame_equal(fast, online_features(store, SESSION_SERVICE, rows))
    finally:
        monkeypatch.undo()
        time.tzset()


def test_offline_replay_equals_the_pushed_rows_online_and_in_point_in_time_joins(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    store = applied_store(state, FeaturesConfig())
    genre_of = {f"i{n}": [float(g == n % len(GENRES)) for g in range(len(GENRES))] for n in range(12)}
    start = datetime.now(UTC) - timedelta(minutes=30)
    pushes = [  # (minutes after start the batch arrived, user, items, minutes its events are late)
        (0, "u1", ["i1", "i2"], 0),
        (4, "u2", ["i3"], 0),
        (6, "u1", ["i2", "i4"], 0),
        (15, "u1", ["i5"], 12),
        (16, "u2", ["i6", "i7", "i8"], 1),
    ]
    frames = []
    for minute, user, items, late in pushes:
        at = start + timedelta(minutes=minute)
        batch = events(user, items, at - timedelta(minutes=late))
        OnlineSessions(store, lambda ids: genre_of, clock=fixed(at)).record(batch)
        frames.append(pd.DataFrame([e.model_dump() for e in batch]).assign(server_ts=at))
    log = pd.concat(frames, ignore_index=True)
    table = session_feature_table(log, genre_of)
    write_session_table(table, state.offline / "session_features.parquet")

    newest = table.groupby("user_id").tail(1).set_index("user_id")
    online = OnlineSessions(store, lambda ids: {}).read(["u1", "u2"])
    for user, row in zip(["u1", "u2"], online, strict=True):
        assert row is not None
        for name in (LAST_ITEMS, CATEGORY_COUNTS):
            assert list(row[name]) == pytest.approx(list(newest.loc[user, name])), (user, name)
    # u1 at minute 15: the window holds only minute 6's i2 and i4 (i5 came late, from minute 3)
    assert list(newest.loc["u1", LAST_ITEMS]) == ["i1", "i5", "i2", "i4"]
    assert list(newest.loc["u1", CATEGORY_COUNTS][:6]) == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]

    # a point-in-time join between u1's second and third pushes sees the second
    asked = pd.DataFrame(
        {"user_id": ["u1", "u2"], "event_timestamp": [start + timedelta(minutes=10), datetime.now(UTC)]}
    )
    joined = historical_features(store, asked, SESSION_SERVICE)
    assert list(joined[LAST_ITEMS][0]) == list(table[LAST_ITEMS][1]) == ["i1", "i2", "i4"]
    assert list(joined[LAST_ITEMS][1]) == list(newest.loc["u2", LAST_ITEMS])


def replica(
    store: FeatureStore | None,
    tmp_path: Path,
    name: str,
    own: SessionStore | None = None,
    cache: PredictionCache[Any] | None = None,
) -> Any:
    """One ingress replica over HTTP with the small genre-aware models of the serving tests."""
    reader = Reader()
    rerank = RerankConfig(mmr_lambda=1.0, max_per_category=None, freshness_weight=0.0, no_repeat_responses=0)
    retrieval = RetrievalStage(GenreRetrieval(), reader, session_weight=0.5)
    ranking = RankingStage(AffinityRanker(), reader, rerank, session_boost=0.0)
    shared = OnlineSessions(store, item_genre_lookup(reader, "two_tower_v1")) if store is not None else None
    state = IngressState(
        cache=cache, shared_sessions=shared, sessions=own, event_log=EventLog(tmp_path / name / "events")
    )
    recommender = Recommender(
        LocalRetrieval(retrieval),
        LocalRanking(ranking),
        n_candidates=20,
        max_k=20,
        rerank=rerank,
        state=state,
    )
    return TestClient(create_api(recommender, max_k=20), raise_server_exceptions=False)


def now_views(user: str, items: list[str]) -> dict[str, Any]:
    body = views(user, items)
    for event in body["events"]:
        event["event_ts"] = datetime.now(UTC).isoformat()
    return body


def test_post_events_writes_the_online_row_that_another_replica_serves(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    applied_store(state, FeaturesConfig())
    # no replica keeps sessions of its own: the horror can only come through the online store; each
    # caches its answers, and the events reach only a, whose cache alone they clear
    a = replica(build_store(state, FeaturesConfig()), tmp_path, "a", cache=PredictionCache(30.0, 100))
    b = replica(build_store(state, FeaturesConfig()), tmp_path, "b", cache=PredictionCache(30.0, 100))
    ask = {"user_id": "u1", "k": 5, "surface": "homepage"}
    assert genres(b.post("/recommend", json=ask).json()) == ["Comedy"] * 5
    assert b.post("/recommend", json=ask).json()["cached"] is True

    response = a.post("/events", json=now_views("u1", ["i10", "i11", "i12"]))
    assert response.status_code == 200 and response.json()["accepted"] == 3, response.text

    row = OnlineSessions(build_store(state, FeaturesConfig()), lambda ids: {}).read(["u1"])[0]
    assert row is not None and row[LAST_ITEMS] == ["i10", "i11", "i12"]
    assert row[CATEGORY_COUNTS][HORROR] == 3.0 and sum(row[CATEGORY_COUNTS]) == 3.0
    after = b.post("/recommend", json=ask).json()
    assert genres(after) == ["Horror"] * 5 and after["cached"] is False
    assert 'recsys_stage_latency_seconds_count{stage="session_push"} 1.0' in a.get("/metrics").text


def test_without_the_online_store_a_replica_serves_its_own_sessions(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    applied_store(state, FeaturesConfig())
    online_db = state.feast / "online.db"
    online_db.unlink()
    online_db.mkdir()  # SQLite cannot open a folder: the online store is unavailable
    client = replica(build_store(state, FeaturesConfig()), tmp_path, "a", own=SessionStore(10, 3600.0))
    response = client.post("/events", json=now_views("u1", ["i10", "i11", "i12"]))
    assert response.status_code == 200 and response.json()["accepted"] == 3
    for _ in range(2):  # the second request does not try the store again (it retries after 5 s)
        after = client.post("/recommend", json={"user_id": "u1", "k": 5, "surface": "pdp"})
        assert after.status_code == 200 and genres(after.json()) == ["Horror"] * 5
    metrics = client.get("/metrics").text
    for stage in ("session_push", "session_read"):
        assert f'recsys_errors_total{{reason="OperationalError",stage="{stage}"}} 1.0' in metrics, stage
