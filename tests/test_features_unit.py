"""Pure pieces of the feature layer: snapshot schedule, weights, table layouts, Redis URLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from recsys.features import schema
from recsys.features.schedule import FINAL_SNAPSHOT_OFFSET, ScheduleError, bucket_index, snapshot_times
from recsys.features.store import FeatureRequestError, redis_connection_string
from recsys.vocab import EVENT_TYPES, GENRES

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def test_snapshots_step_from_first_event_and_end_just_after_last() -> None:
    times = snapshot_times(T0, T0 + timedelta(days=45), 10)
    assert times == [T0 + timedelta(days=d) for d in (10, 20, 30, 40)] + [
        T0 + timedelta(days=45) + FINAL_SNAPSHOT_OFFSET
    ]


def test_snapshot_on_the_last_event_still_gets_a_final_one_after_it() -> None:
    times = snapshot_times(T0, T0 + timedelta(days=20), 10)
    assert times[-2:] == [T0 + timedelta(days=20), T0 + timedelta(days=20) + FINAL_SNAPSHOT_OFFSET]


def test_single_instant_history_has_one_snapshot() -> None:
    assert snapshot_times(T0, T0, 90) == [T0 + FINAL_SNAPSHOT_OFFSET]


@pytest.mark.parametrize(("first", "last", "days"), [(T0, T0 - timedelta(seconds=1), 1), (T0, T0, 0)])
def test_bad_bounds_are_rejected(first: datetime, last: datetime, days: int) -> None:
    with pytest.raises(ScheduleError):
        snapshot_times(first, last, days)


def test_an_event_on_a_snapshot_instant_belongs_to_the_next_snapshot() -> None:
    times = snapshot_times(T0, T0 + timedelta(days=45), 10)
    for day, expected in [(0, 1), (9.99, 1), (10, 2), (39, 4), (40, 5), (45, 5)]:
        ts = T0 + timedelta(days=day)
        k = bucket_index(ts, T0, 10, len(times))
        assert k == expected
        assert ts < times[k - 1]
        assert k == 1 or ts >= times[k - 2]


def test_weights_cover_every_event_type_and_never_go_negative() -> None:
    assert set(schema.EVENT_WEIGHTS) == set(EVENT_TYPES)
    assert schema.EVENT_WEIGHTS["like"] == 1.0
    assert schema.EVENT_WEIGHTS["view"] == 0.5
    assert schema.EVENT_WEIGHTS["skip"] == 0.0
    assert min(schema.EVENT_WEIGHTS.values()) >= 0


def test_table_layouts_follow_the_contract() -> None:
    user, item = schema.user_features_schema(), schema.item_features_schema()
    user_views = schema.USER_FEATURES + schema.USER_ACTIVITY_FEATURES + schema.USER_CROSS_FEATURES
    assert user.names == ["user_id", "feature_ts", *user_views, "created_ts"]
    assert item.names == [
        "item_id",
        "feature_ts",
        *schema.ITEM_FEATURES,
        *schema.ITEM_ACTIVITY_FEATURES,
        "created_ts",
    ]
    assert schema.coview_schema().names == ["item_id", "feature_ts", *schema.COVIEW_FEATURES, "created_ts"]
    assert str(user.field("user_genre_affinity").type) == "list<item: float>"
    assert str(item.field("item_n_events_365d").type) == "int64"
    assert str(user.field("feature_ts").type) == "timestamp[us, tz=UTC]"
    assert len(GENRES) == schema.N_GENRES


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"),
        ("redis://cache", "cache:6379,db=0"),
        ("redis://user:p%40ss@cache:6380/3", "cache:6380,db=3,username=user,password=p@ss"),
        ("rediss://cache:6380/1", "cache:6380,db=1,ssl=true"),
    ],
)
def test_redis_url_becomes_a_feast_connection_string(url: str, expected: str) -> None:
    assert redis_connection_string(url) == expected


@pytest.mark.parametrize("url", ["http://cache:6379/0", "redis://cache:6379/zero", "redis:///0"])
def test_bad_redis_urls_are_rejected(url: str) -> None:
    with pytest.raises(FeatureRequestError):
        redis_connection_string(url)
