"""The activity, cross and co-view features of the Spark job on a hand-made history: exact values, and
every value rebuilt from the events strictly before its snapshot.

History (snapshot_every_days=10 from T0, so snapshots S1 = day 10, S2 = day 20, S3 = day 21 + 1 s):

    e1  u1 s1 mobile   day 0 00:00   view a, dwell 50 s     e6  u1 s3 tv      day 14       click b
    e2  u1 s1 mobile   day 0 00:10   like b                 e7  u2 s4 mobile  day 9 23:50  view a, 300 s
    e3  u1 s1 mobile   day 0 00:20   view c, dwell 30 s     e8  u2 s4 mobile  day 9 23:55  view b, no dwell
    e4  u1 s2 desktop  day 8 00:00   view a, dwell 100 s    e9  u2 s4 mobile  day 10 00:05 view a, 20 s
    e5  u1 s2 desktop  day 8 00:30   skip c                 e10 u2 s5 (none)  day 21       like c

a is Action (100 s, published a day before T0), b Comedy|Drama (200 s, no publication date), c Drama
(no duration, published at T0). u1 signed up 5 days before T0; u2 has no users row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema
from recsys.features.batch import FeatureFrames, compute_features
from recsys.features.schedule import FINAL_SNAPSHOT_OFFSET
from recsys.vocab import GENRES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2020, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
S = {1: T0 + 10 * DAY, 2: T0 + 20 * DAY, 3: T0 + 21 * DAY + FINAL_SNAPSHOT_OFFSET}
MINUTE = timedelta(minutes=1)

# (user, session, device, time, event_type, item, dwell_ms)
EVENTS = [
    ("u1", "s1", "mobile", T0, "view", "a", 50_000),
    ("u1", "s1", "mobile", T0 + 10 * MINUTE, "like", "b", None),
    ("u1", "s1", "mobile", T0 + 20 * MINUTE, "view", "c", 30_000),
    ("u1", "s2", "desktop", T0 + 8 * DAY, "view", "a", 100_000),
    ("u1", "s2", "desktop", T0 + 8 * DAY + 30 * MINUTE, "skip", "c", None),
    ("u1", "s3", "tv", T0 + 14 * DAY, "click", "b", None),
    ("u2", "s4", "mobile", T0 + 10 * DAY - 10 * MINUTE, "view", "a", 300_000),
    ("u2", "s4", "mobile", T0 + 10 * DAY - 5 * MINUTE, "view", "b", None),
    ("u2", "s4", "mobile", T0 + 10 * DAY + 5 * MINUTE, "view", "a", 20_000),
    ("u2", "s5", None, T0 + 21 * DAY, "like", "c", None),
]


def _events() -> pd.DataFrame:
    frame = pd.DataFrame(
        EVENTS, columns=["user_id", "session_id", "device_type", "event_ts", "event_type", "item_id", "dwell"]
    )
    frame["event_ts"] = pd.to_datetime(frame["event_ts"], utc=True)
    frame["dwell_time_ms"] = pd.array(frame.pop("dwell"), dtype="Int64")
    frame["event_id"] = [f"e{n + 1}" for n in range(len(frame))]
    return frame


@pytest.fixture(scope="module")
def tables(spark: Any) -> dict[str, pd.DataFrame]:
    events = spark.createDataFrame(
        _events().astype({"dwell_time_ms": "float64"}),
        "user_id string, session_id string, device_type string, event_ts timestamp, event_type string, "
        "item_id string, dwell_time_ms double, event_id string",
    )
    items = spark.createDataFrame(
        pd.DataFrame(
            {
                "item_id": ["a", "b", "c"],
                "categories": [["Action"], ["Comedy", "Drama"], ["Drama"]],
                "duration_s": [100.0, 200.0, None],
                "published_at": pd.to_datetime([T0 - DAY, None, T0], utc=True),
            }
        ),
        "item_id string, categories array<string>, duration_s double, published_at timestamp",
    )
    users = spark.createDataFrame(
        pd.DataFrame({"user_id": ["u1"], "signup_ts": pd.to_datetime([T0 - 5 * DAY], utc=True)}),
        "user_id string, signup_ts timestamp",
    )
    frames: FeatureFrames = compute_features(spark, events, items, 10, users=users)
    out = {}
    for name in ("user", "item", "coview"):
        frame = getattr(frames, name).toPandas()
        frame[schema.FEATURE_TS] = pd.to_datetime(frame[schema.FEATURE_TS], utc=True)
        out[name] = frame
    frames.release()
    return out


def _row(frame: pd.DataFrame, key: str, entity: str, k: int) -> pd.Series:
    hits = frame[(frame[key] == entity) & (frame[schema.FEATURE_TS] == pd.Timestamp(S[k]))]
    assert len(hits) == 1, f"{entity} at snapshot {k}: {len(hits)} rows"
    return hits.iloc[0]


def _genres(**shares: float) -> list[float]:
    vector = [0.0] * len(GENRES)
    for name, share in shares.items():
        vector[GENRES.index(name.replace("_", "-"))] = share
    return vector


def test_layouts_follow_the_contract(tables: dict[str, pd.DataFrame]) -> None:
    assert list(tables["user"].columns) == schema.user_features_schema().names
    assert list(tables["item"].columns) == schema.item_features_schema().names
    assert list(tables["coview"].columns) == schema.coview_schema().names


@pytest.mark.parametrize(
    ("user", "k", "n7", "sessions7", "minutes", "sessions30", "days30", "device"),
    [
        ("u1", 1, 2, 1, 30.0, 2, 2, "desktop"),  # mobile and desktop once each: the later one wins
        ("u1", 2, 1, 1, 0.0, 3, 3, "tv"),
        ("u1", 3, 0, 0, None, 3, 3, "tv"),  # e6 falls 1 s before the 7-day window
        ("u2", 1, 2, 1, 5.0, 1, 1, "mobile"),  # e9 is 5 minutes after S1: not yet
        ("u2", 2, 0, 0, None, 1, 2, "mobile"),
        ("u2", 3, 1, 1, 0.0, 2, 3, "mobile"),  # s5 reports no device: it does not count
    ],
)
def test_user_activity(
    tables: dict[str, pd.DataFrame],
    user: str,
    k: int,
    n7: int,
    sessions7: int,
    minutes: float | None,
    sessions30: int,
    days30: int,
    device: str,
) -> None:
    row = _row(tables["user"], "user_id", user, k)
    assert (row.user_n_events_7d, row.user_n_sessions_7d) == (n7, sessions7)
    assert (row.user_n_sessions_30d, row.user_n_active_days_30d) == (sessions30, days30)
    if minutes is None:
        assert np.isnan(row.user_avg_session_minutes_7d)
    else:
        assert row.user_avg_session_minutes_7d == pytest.approx(minutes)
    assert row.user_preferred_device == device


def test_account_age_is_known_only_with_a_signup(tables: dict[str, pd.DataFrame]) -> None:
    users = tables["user"]
    assert _row(users, "user_id", "u1", 1).user_account_age_days == pytest.approx(15)
    assert _row(users, "user_id", "u1", 3).user_account_age_days == pytest.approx(26, abs=1e-4)
    assert users.loc[users.user_id == "u2", "user_account_age_days"].isna().all()


def test_genre_affinity_30d_weighs_views_by_watch_fraction(tables: dict[str, pd.DataFrame]) -> None:
    users = tables["user"]
    # u1 at S1: e1 2 x 0.5 Action; e2 like 1 over Comedy, Drama; e3 view of c (no duration: halfway) 1
    # Drama; e4 2 x 1.0 Action; the skip nothing. Action 3, Comedy 0.5, Drama 1.5 of 5.
    assert _row(users, "user_id", "u1", 1).user_genre_affinity_30d == pytest.approx(
        _genres(Action=0.6, Comedy=0.1, Drama=0.3)
    )
    # u2 at S1: e7 dwell 300 s of 100 s is clipped to a full watch (2 Action); e8 without dwell 1 over
    # Comedy, Drama.
    assert _row(users, "user_id", "u2", 1).user_genre_affinity_30d == pytest.approx(
        _genres(Action=2 / 3, Comedy=1 / 6, Drama=1 / 6)
    )
    # u2 at S3 adds e9 (2 x 0.2 Action) and the like of c (1 Drama): 2.4, 0.5, 1.5 of 4.4.
    assert _row(users, "user_id", "u2", 3).user_genre_affinity_30d == pytest.approx(
        _genres(Action=2.4 / 4.4, Comedy=0.5 / 4.4, Drama=1.5 / 4.4)
    )
    # At S2 u1's 30-day window [day -10, day 20) still holds everything but the click (weight 0).
    assert _row(users, "user_id", "u1", 2).user_genre_affinity_30d == pytest.approx(
        _genres(Action=0.6, Comedy=0.1, Drama=0.3)
    )


def test_recency_affinity_halves_weights_every_half_life(tables: dict[str, pd.DataFrame]) -> None:
    at = S[1]

    def weight(when: datetime) -> float:
        return schema.recency_weight((at - when) / DAY)

    action = 1.0 * weight(T0) + 2.0 * weight(T0 + 8 * DAY)
    comedy = 0.5 * weight(T0 + 10 * MINUTE)
    drama = 0.5 * weight(T0 + 10 * MINUTE) + 1.0 * weight(T0 + 20 * MINUTE)
    total = action + comedy + drama
    row = _row(tables["user"], "user_id", "u1", 1)
    assert row.user_recency_affinity == pytest.approx(
        _genres(Action=action / total, Comedy=comedy / total, Drama=drama / total), rel=1e-5
    )
    # The recent view of a outweighs its share without decay (0.6).
    assert row.user_recency_affinity[GENRES.index("Action")] > 0.6


def test_category_affinity_is_a_shrunk_positive_rate(tables: dict[str, pd.DataFrame]) -> None:
    # u1 at S1: 1 positive in 5 events (rate 0.2), prior weight 2. Action 0 of 2, Comedy 1 of 1,
    # Drama 1 of 3 (b, c, the skip of c); other genres fall back to the rate.
    row = _row(tables["user"], "user_id", "u1", 1)
    expected = [0.2] * len(GENRES)
    for genre, value in (("Action", 0.4 / 4), ("Comedy", 1.4 / 3), ("Drama", 1.4 / 5)):
        expected[GENRES.index(genre)] = value
    assert row.user_category_affinity == pytest.approx(expected)


def test_recent_items_are_distinct_and_newest_first(tables: dict[str, pd.DataFrame]) -> None:
    users = tables["user"]
    assert list(_row(users, "user_id", "u1", 1).user_recent_items) == ["a", "c", "b"]  # the skip not
    assert list(_row(users, "user_id", "u1", 2).user_recent_items) == ["b", "a", "c"]
    assert list(_row(users, "user_id", "u2", 1).user_recent_items) == ["b", "a"]
    assert list(_row(users, "user_id", "u2", 3).user_recent_items) == ["c", "a", "b"]


def test_item_activity(tables: dict[str, pd.DataFrame]) -> None:
    items = tables["item"]
    a = [_row(items, "item_id", "a", k) for k in (1, 2, 3)]
    # Watch fractions 0.5, 1.0 and 1.0 (300 s clipped) before S1, then 0.2.
    assert [r.item_avg_completion for r in a] == pytest.approx([2.5 / 3, 2.7 / 4, 2.7 / 4])
    assert [r.item_popularity_7d for r in a] == [2, 0, 0]  # u1 (e4) and u2 (e7) in [day 3, day 10)
    assert [r.item_age_hours for r in a] == pytest.approx([11 * 24, 21 * 24, 22 * 24], abs=1e-3)
    b = [_row(items, "item_id", "b", k) for k in (1, 2, 3)]
    assert [r.item_popularity_7d for r in b] == [1, 1, 0]
    # b's views have no dwell and its like is no view; its publication date is unknown.
    assert all(np.isnan(r.item_avg_completion) and np.isnan(r.item_age_hours) for r in b)
    c = _row(items, "item_id", "c", 1)
    assert np.isnan(c.item_avg_completion)  # a dwell but no duration
    assert c.item_age_hours == pytest.approx(240)


def test_coview_rows_only_where_neighbours_change(tables: dict[str, pd.DataFrame]) -> None:
    coview = tables["coview"]
    # a-b: once in s1, once in s4 before S1 (e7, e8), once more across S1 (e8, e9): 2 at S1, 3 at S2.
    # a-c and b-c are seen once: under the minimum count. Nothing changes after S2.
    got = {
        (r.item_id, r.feature_ts, tuple(r.item_coview_items), tuple(r.item_coview_counts))
        for r in coview.itertuples()
    }
    s1, s2 = pd.Timestamp(S[1]), pd.Timestamp(S[2])
    assert got == {
        ("a", s1, ("b",), (2,)),
        ("b", s1, ("a",), (2,)),
        ("a", s2, ("b",), (3,)),
        ("b", s2, ("a",), (3,)),
    }


def _coview_before(events: pd.DataFrame, at: pd.Timestamp) -> dict[str, list[tuple[str, int]]]:
    """Co-view neighbours from the events before ``at``, recomputed in plain pandas."""
    weights = {kind: w for kind, w in schema.EVENT_WEIGHTS.items()}
    engaged = events[(events.event_ts < at) & (events.event_type.map(weights) > 0)]
    engaged = engaged.sort_values(["user_id", "session_id", "event_ts", "item_id", "event_type"])
    counts: dict[tuple[str, str], int] = {}
    for _, session in engaged.groupby(["user_id", "session_id"]):
        seq = list(session.item_id)
        for i, first in enumerate(seq):
            for second in seq[i + 1 : i + 1 + schema.COVIEW_WINDOW]:
                if first != second:
                    for pair in ((first, second), (second, first)):
                        counts[pair] = counts.get(pair, 0) + 1
    out: dict[str, list[tuple[str, int]]] = {}
    for (a, b), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        if n >= schema.COVIEW_MIN_COUNT:
            out.setdefault(a, []).append((b, n))
    return {a: pairs[: schema.COVIEW_NEIGHBOURS] for a, pairs in out.items()}


def test_every_new_value_uses_only_events_strictly_before_its_snapshot(
    tables: dict[str, pd.DataFrame],
) -> None:
    events = _events()
    engaged = events[events.event_type.map(schema.EVENT_WEIGHTS) > 0]
    for row in tables["user"].itertuples():
        at = row.feature_ts
        mine = events[(events.user_id == row.user_id) & (events.event_ts < at)]
        week = mine[mine.event_ts >= at - pd.Timedelta(days=schema.SHORT_WINDOW_DAYS)]
        month = mine[mine.event_ts >= at - pd.Timedelta(days=schema.AFFINITY_WINDOW_DAYS)]
        assert row.user_n_events_7d == len(week)
        assert row.user_n_sessions_7d == week.session_id.nunique()
        assert row.user_n_sessions_30d == month.session_id.nunique()
        assert row.user_n_active_days_30d == month.event_ts.dt.floor("D").nunique()
        last_seen = engaged[(engaged.user_id == row.user_id) & (engaged.event_ts < at)]
        newest = last_seen.groupby("item_id").event_ts.max().sort_values(ascending=False)
        assert list(row.user_recent_items) == list(newest.index[: schema.RECENT_ITEMS])
    for row in tables["item"].itertuples():
        at = row.feature_ts
        week = engaged[
            (engaged.item_id == row.item_id)
            & (engaged.event_ts < at)
            & (engaged.event_ts >= at - pd.Timedelta(days=schema.SHORT_WINDOW_DAYS))
        ]
        assert row.item_popularity_7d == week.user_id.nunique()
    # The co-view row Feast picks at each snapshot (the newest at or before it) is the recomputation.
    coview = tables["coview"]
    for k, when in S.items():
        expected = _coview_before(events, pd.Timestamp(when))
        for item in ("a", "b", "c"):
            rows = coview[(coview.item_id == item) & (coview.feature_ts <= pd.Timestamp(when))]
            got = []
            if len(rows):
                newest = rows.sort_values("feature_ts").iloc[-1]
                got = list(zip(newest.item_coview_items, newest.item_coview_counts, strict=True))
            assert got == expected.get(item, []), f"{item} at snapshot {k}"
