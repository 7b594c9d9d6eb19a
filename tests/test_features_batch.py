"""The Spark feature job on a hand-made history: exact values, and no event at or after a snapshot counts.

History (snapshot_every_days=10, first event at T0, so snapshots at days 10, 20, 30, 40, and 45 + 1 s):

    1  u1 i1 like  day 0      4  u1 i3 like  day 12
    2  u1 i2 view  day 5      5  u2 i2 like  day 25
    3  u2 i1 skip  day 10     6  u1 i2 view  day 45  (the last event)

i1 is Action|Comedy (published a year before T0), i2 Drama (no publication date), i3 has no genres.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema
from recsys.features.batch import FeatureInputError, compute_features
from recsys.features.schedule import FINAL_SNAPSHOT_OFFSET
from recsys.vocab import GENRES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2020, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
EPS = FINAL_SNAPSHOT_OFFSET / DAY  # the final snapshot's offset, in days
S = {k: T0 + 10 * k * DAY for k in (1, 2, 3, 4)} | {5: T0 + 45 * DAY + FINAL_SNAPSHOT_OFFSET}
ITEMS_SCHEMA = "item_id string, categories array<string>, published_at timestamp"

EVENTS = [
    ("u1", "i1", "like", 0),
    ("u1", "i2", "view", 5),
    ("u2", "i1", "skip", 10),
    ("u1", "i3", "like", 12),
    ("u2", "i2", "like", 25),
    ("u1", "i2", "view", 45),
]


def _events_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"e{n}" for n in range(len(EVENTS))],
            "user_id": [e[0] for e in EVENTS],
            "item_id": [e[1] for e in EVENTS],
            "event_type": [e[2] for e in EVENTS],
            "event_ts": pd.to_datetime([T0 + e[3] * DAY for e in EVENTS], utc=True),
        }
    )


def _items_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "categories": [["Action", "Comedy"], ["Drama"], []],
            "published_at": pd.to_datetime([datetime(2019, 1, 1, tzinfo=UTC), None, T0], utc=True),
        }
    )


@pytest.fixture(scope="module")
def features(spark: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    events = spark.createDataFrame(_events_frame())
    items = spark.createDataFrame(
        _items_frame(), "item_id string, categories array<string>, published_at timestamp"
    )
    frames = compute_features(spark, events, items, snapshot_every_days=10)
    tables = _utc(frames.user.toPandas()), _utc(frames.item.toPandas())
    frames.release()
    return tables


def _utc(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("feature_ts", "created_ts"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _row(frame: pd.DataFrame, key: str, entity: str, k: int) -> pd.Series:
    when = pd.Timestamp(S[k])
    hits = frame[(frame[key] == entity) & (pd.to_datetime(frame["feature_ts"], utc=True) == when)]
    assert len(hits) == 1, f"{entity} at snapshot {k}: {len(hits)} rows"
    return hits.iloc[0]


def _genres(**shares: float) -> list[float]:
    vector = [0.0] * len(GENRES)
    for name, share in shares.items():
        vector[GENRES.index(name)] = share
    return vector


def test_columns_follow_the_contract(features: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    users, items = features
    assert list(users.columns) == schema.user_features_schema().names
    assert list(items.columns) == schema.item_features_schema().names
    assert (users["created_ts"] == users["feature_ts"]).all()


@pytest.mark.parametrize(
    ("k", "n", "npos", "n30", "first", "last"),
    [
        (1, 2, 1, 2, 10, 5),
        (2, 3, 2, 3, 20, 8),
        (3, 3, 2, 3, 30, 18),
        (4, 3, 2, 1, 40, 28),  # the 30-day window [day 10, day 40) holds only event 4
        (5, 4, 2, 1, 45 + EPS, EPS),
    ],
)
def test_user_counts(
    features: tuple[pd.DataFrame, pd.DataFrame],
    k: int,
    n: int,
    npos: int,
    n30: int,
    first: float,
    last: float,
) -> None:
    row = _row(features[0], "user_id", "u1", k)
    assert (row.user_n_events, row.user_n_positive, row.user_n_events_30d) == (n, npos, n30)
    assert row.user_days_since_first_event == pytest.approx(first, abs=1e-4)
    assert row.user_days_since_last_event == pytest.approx(last, abs=1e-4)


def test_genre_affinity_spreads_weights_over_genres_and_sums_to_one(
    features: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    users = features[0]
    # like i1 (1.0 over Action, Comedy) + view i2 (0.5 on Drama): 0.5, 0.5, 0.5 -> a third each.
    third = 1 / 3
    assert _row(users, "user_id", "u1", 1).user_genre_affinity == pytest.approx(
        _genres(Action=third, Comedy=third, Drama=third)
    )
    # The like of genre-less i3 adds nothing; the second view of i2 adds 0.5 Drama: 0.5, 0.5, 1.0.
    assert _row(users, "user_id", "u1", 5).user_genre_affinity == pytest.approx(
        _genres(Action=0.25, Comedy=0.25, Drama=0.5)
    )
    # A skip weighs nothing: all zero, not NaN.
    assert _row(users, "user_id", "u2", 2).user_genre_affinity == pytest.approx([0.0] * len(GENRES))
    assert _row(users, "user_id", "u2", 3).user_genre_affinity == pytest.approx(_genres(Drama=1.0))
    sums = users["user_genre_affinity"].map(lambda v: float(np.sum(v)))
    assert ((sums - 1).abs() < 1e-5).sum() + (sums == 0).sum() == len(users)


def test_an_event_on_a_snapshot_instant_is_not_in_that_snapshot(
    features: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    users = features[0]
    # u2's first event is at exactly day 10 = snapshot 1: u2 appears only from snapshot 2 on.
    u2_times = pd.to_datetime(users.loc[users.user_id == "u2", "feature_ts"], utc=True)
    assert sorted(u2_times) == [pd.Timestamp(S[k]) for k in (2, 3, 4, 5)]
    row = _row(users, "user_id", "u2", 4)
    # [day 10, day 40) includes day 10 at its lower edge.
    assert (row.user_n_events, row.user_n_events_30d, row.user_days_since_last_event) == (2, 2, 15)


def test_item_features(features: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    items = features[1]
    # Global positive rate per snapshot: 1/2, 2/4, 3/5, 3/5, 3/6; prior weight 5 events.
    i1 = [_row(items, "item_id", "i1", k) for k in (1, 2, 3, 4, 5)]
    assert [r.item_n_events for r in i1] == [1, 2, 2, 2, 2]
    assert [r.item_n_positive for r in i1] == [1, 1, 1, 1, 1]
    assert [r.item_n_events_365d for r in i1] == [1, 2, 2, 2, 2]
    assert [r.item_positive_rate for r in i1] == pytest.approx([3.5 / 6, 3.5 / 7, 4 / 7, 4 / 7, 3.5 / 7])
    assert [r.item_age_days for r in i1] == pytest.approx([375, 385, 395, 405, 410 + EPS], abs=1e-3)
    assert i1[0].item_genre_vector == pytest.approx(_genres(Action=1.0, Comedy=1.0))
    i2 = _row(items, "item_id", "i2", 5)
    assert (i2.item_n_events, i2.item_n_positive, i2.item_age_days) == (3, 1, -1.0)
    assert i2.item_positive_rate == pytest.approx((1 + 5 * 0.5) / 8)
    i3 = items[items.item_id == "i3"]
    assert pd.to_datetime(i3.feature_ts, utc=True).min() == pd.Timestamp(S[2])
    assert _row(items, "item_id", "i3", 2).item_genre_vector == pytest.approx([0.0] * len(GENRES))
    assert _row(items, "item_id", "i3", 2).item_age_days == pytest.approx(20)


def test_every_count_uses_only_events_strictly_before_its_snapshot(
    features: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    events = _events_frame()
    for frame, key, prefix, window in (
        (features[0], "user_id", "user", 30),
        (features[1], "item_id", "item", 365),
    ):
        for row in frame.itertuples():
            when = pd.Timestamp(row.feature_ts)
            mine = events[events[key] == getattr(row, key)]
            before = mine[mine.event_ts < when]
            assert getattr(row, f"{prefix}_n_events") == len(before)
            recent = before[before.event_ts >= when - pd.Timedelta(days=window)]
            assert getattr(row, f"{prefix}_n_events_{window}d") == len(recent)
    # One row per entity and snapshot from its first event on: u1 5, u2 4, i1 5, i2 5, i3 4.
    assert len(features[0]) == 9
    assert len(features[1]) == 14


def test_features_degrade_without_dwell_devices_sessions_durations_or_signups(
    features: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    # This history has no session_id, device_type or dwell columns, items no duration, and no users table.
    users, items = features
    assert users["user_account_age_days"].isna().all()
    assert users["user_avg_session_minutes_7d"].isna().all()
    assert (users["user_preferred_device"] == schema.UNKNOWN_DEVICE).all()
    assert (users[["user_n_sessions_7d", "user_n_sessions_30d"]] == 0).all().all()
    assert items["item_avg_completion"].isna().all()
    # Counts that need no session still work: u1's 7-day window [day 3, day 10) holds the view of day 5.
    assert _row(users, "user_id", "u1", 1).user_n_events_7d == 1
    # A view of unknown watch fraction weighs as much as a like: u1 at S1 has like i1 (1 over Action and
    # Comedy) and view i2 (1 on Drama).
    assert _row(users, "user_id", "u1", 1).user_genre_affinity_30d == pytest.approx(
        _genres(Action=0.25, Comedy=0.25, Drama=0.5)
    )


def test_unknown_event_types_are_rejected(spark: Any) -> None:
    frame = _events_frame()
    frame.loc[0, "event_type"] = "rating"
    items = spark.createDataFrame(
        _items_frame(), "item_id string, categories array<string>, published_at timestamp"
    )
    with pytest.raises(FeatureInputError, match="rating"):
        compute_features(spark, spark.createDataFrame(frame), items, 10)
