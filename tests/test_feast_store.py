"""Feast over hand-made snapshot tables: point-in-time retrieval, request checks, SQLite and Redis online."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pytest
import redis
from factories import write_feature_table
from feast import FeatureStore

from recsys.config import FeaturesConfig
from recsys.features import schema
from recsys.features.store import (
    FeatureRequestError,
    apply_definitions,
    build_store,
    historical_features,
    materialize,
    online_features,
)
from recsys.state import StateDir
from recsys.vocab import GENRES

pytestmark = pytest.mark.integration

S1 = datetime(2020, 1, 11, tzinfo=UTC)
S2 = datetime(2020, 1, 21, tzinfo=UTC)
G = len(GENRES)


def _vector(index: int, value: float = 1.0) -> list[float]:
    vector = [0.0] * G
    vector[index] = value
    return vector


def write_offline_tables(state: StateDir) -> None:
    """u1 at S1 and S2, u2 at S2; i1 at S1 and S2, i2 at S2. Counts identify the snapshot."""
    users = {
        "user_id": ["u1", "u1", "u2"],
        "feature_ts": [S1, S2, S2],
        "user_genre_affinity": [_vector(0), _vector(7), [0.0] * G],
        "user_n_events": [2, 3, 1],
        "user_n_positive": [1, 2, 0],
        "user_n_events_30d": [2, 3, 1],
        "user_days_since_first_event": [10.0, 20.0, 10.0],
        "user_days_since_last_event": [5.0, 8.0, 10.0],
    }
    items = {
        "item_id": ["i1", "i1", "i2"],
        "feature_ts": [S1, S2, S2],
        "item_genre_vector": [_vector(0), _vector(0), _vector(7)],
        "item_n_events": [1, 2, 1],
        "item_n_positive": [1, 1, 0],
        "item_n_events_365d": [1, 2, 1],
        "item_positive_rate": [0.5, 0.25, 0.75],
        "item_age_days": [375.0, 385.0, -1.0],
    }
    state.offline.mkdir(parents=True, exist_ok=True)
    for columns, layout, name in (
        (users, schema.user_features_schema(), schema.USER_FEATURES_FILE),
        (items, schema.item_features_schema(), schema.ITEM_FEATURES_FILE),
    ):
        columns["created_ts"] = columns["feature_ts"]
        write_feature_table(columns, layout, state.offline / name)
    write_feature_table({}, schema.coview_schema(), state.offline / schema.COVIEW_FILE)


@pytest.fixture
def store(state: StateDir) -> FeatureStore:
    write_offline_tables(state)
    built = build_store(state, FeaturesConfig(online_store="sqlite"))
    apply_definitions(built)
    return built


def test_pit_join_takes_the_newest_snapshot_at_or_before_each_row(store: FeatureStore) -> None:
    rows = [
        ("u1", "i1", S1 - timedelta(seconds=1), "before any snapshot"),
        ("u1", "i1", S2 + timedelta(days=1), "after S2"),
        ("u1", "i2", S1 + timedelta(days=5), "user at S1, item not yet seen"),
        ("u1", "i1", S1, "exactly at S1"),
        ("u1", "i1", S1, "a duplicate row"),
        ("u9", "i1", S2, "unknown user"),
    ]
    entity_df = pd.DataFrame(
        rows, columns=["user_id", "item_id", "event_timestamp", "note"], index=[9, 3, 7, 1, 5, 0]
    )
    out = historical_features(store, entity_df, "ranker_v1")

    assert list(out["note"]) == [r[3] for r in rows]
    assert list(out.columns[:4]) == ["user_id", "item_id", "event_timestamp", "note"]
    assert set(schema.USER_FEATURES + schema.ITEM_FEATURES) <= set(out.columns)
    assert out["user_n_events"].isna().tolist() == [True, False, False, False, False, True]
    assert out["user_n_events"].tolist()[1:5] == [3, 2, 2, 2]
    assert out["item_n_events"].isna().tolist() == [True, False, True, False, False, False]
    assert out.loc[1, "item_n_events"] == 2 and out.loc[3, "item_n_events"] == 1
    assert out.loc[5, "item_n_events"] == 2
    assert list(out.loc[1, "user_genre_affinity"]) == _vector(7)
    assert out.loc[3, "item_age_days"] == pytest.approx(375.0)
    # Each view's snapshot time, matching the snapshot its values come from (the counts identify it).
    user_ts, item_ts = (
        pd.to_datetime(out[f"{view}__feature_ts"], utc=True) for view in ("user_stats", "item_stats")
    )
    assert user_ts.tolist()[1:5] == [S2, S1, S1, S1] and user_ts.isna().tolist() == [
        True,
        False,
        False,
        False,
        False,
        True,
    ]
    assert item_ts.tolist() == [pd.NaT, S2, pd.NaT, S1, S1, S2]


def test_training_rows_from_the_store_pass_the_leakage_check_and_leaky_ones_fail(store: FeatureStore) -> None:
    from recsys.ingest.leakage import LeakageError
    from training.examples import two_tower_examples

    entity_df = pd.DataFrame(
        {"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_timestamp": [S2, S2 + timedelta(hours=1)]}
    )
    rows = historical_features(store, entity_df, "two_tower_v1")
    examples = two_tower_examples(rows, ["u1", "u2"], ["i1", "i2"])
    assert examples.user_idx.tolist() == [1, 2]
    # A snapshot taken after the example it feeds: the future leaked into training.
    leaky = rows.assign(item_stats__feature_ts=rows["event_timestamp"] + timedelta(seconds=1))
    with pytest.raises(LeakageError, match="2 of 2 examples have item_stats__feature_ts"):
        two_tower_examples(leaky, ["u1", "u2"], ["i1", "i2"])
    with pytest.raises(LeakageError, match=r"no \*__feature_ts column"):
        two_tower_examples(rows.drop(columns=["user_stats__feature_ts", "item_stats__feature_ts"]), [], [])


def test_an_item_only_request_gets_the_item_tower_features(store: FeatureStore) -> None:
    entity_df = pd.DataFrame({"item_id": ["i2", "i1"], "event_timestamp": [S2, S2]})
    out = historical_features(store, entity_df, "two_tower_v1")
    assert list(out.columns) == [
        "item_id",
        "event_timestamp",
        "item_genre_vector",
        "item_n_events_365d",
        "item_age_days",
        "item_stats__feature_ts",
    ]
    assert out["item_n_events_365d"].tolist() == [1, 2]


def test_bad_requests_say_what_is_wrong(store: FeatureStore) -> None:
    good = pd.DataFrame({"user_id": ["u1"], "event_timestamp": [S2]})
    with pytest.raises(FeatureRequestError, match="unknown feature service"):
        historical_features(store, good, "ranker_v0")
    with pytest.raises(FeatureRequestError, match="event_timestamp"):
        historical_features(store, good.drop(columns="event_timestamp"), "ranker_v1")
    with pytest.raises(FeatureRequestError, match="needs one of"):
        historical_features(store, pd.DataFrame({"event_timestamp": [S2]}), "ranker_v1")
    with pytest.raises(FeatureRequestError, match="strings"):
        historical_features(store, pd.DataFrame({"user_id": [1], "event_timestamp": [S2]}), "ranker_v1")


# A database of its own on whatever server the fixture gives, emptied before use.
FEATURE_TEST_REDIS_DB = 14


def test_redis_and_sqlite_serve_the_same_values(tmp_path: Path, redis_url: str) -> None:
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{FEATURE_TEST_REDIS_DB}"))
    redis.Redis.from_url(url).flushdb()
    users = [{"user_id": "u1"}, {"user_id": "u2"}, {"user_id": "nobody"}]
    pairs = [{"user_id": "u1", "item_id": "i2"}, {"user_id": "u2", "item_id": "i1"}]
    answers = {}
    for kind in ("sqlite", "redis"):
        state = StateDir(tmp_path / kind)
        write_offline_tables(state)
        store = build_store(state, FeaturesConfig(online_store=kind, redis_url=url))
        apply_definitions(store)
        materialize(store, S2 + timedelta(seconds=1))
        answers[kind] = (
            online_features(store, "two_tower_v1", users),
            online_features(store, "ranker_v1", pairs),
        )
    for from_redis, from_sqlite in zip(answers["redis"], answers["sqlite"], strict=True):
        pd.testing.assert_frame_equal(from_redis, from_sqlite)
    by_user, by_pair = answers["redis"]
    assert by_user["user_id"].tolist() == ["u1", "u2", "nobody"]
    assert by_user["user_n_events"].tolist()[:2] == [3, 1] and pd.isna(by_user.loc[2, "user_n_events"])
    assert list(by_user.loc[0, "user_genre_affinity"]) == pytest.approx(_vector(7))
    assert by_user.loc[2, "user_genre_affinity"] is None
    assert by_pair.loc[0, "item_age_days"] == pytest.approx(-1.0)
    assert by_pair.loc[1, "item_n_events"] == 2
    assert by_pair.loc[1, "user_n_positive"] == 0
    keys = redis.Redis.from_url(url).dbsize()
    assert isinstance(keys, int) and keys > 0
