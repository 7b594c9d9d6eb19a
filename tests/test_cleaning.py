"""Cleaning: duplicates, bursts, bots, dwell cap, late events, and the reconciliation that must add up."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ingest.cleaning import (
    CleaningConfig,
    Reconciliation,
    ReconciliationError,
    cap_dwell,
    clean_events,
    collapse_repeats,
    count_late,
    drop_duplicate_ids,
    find_bots,
)
from recsys.ingest.schema import EVENTS_SCHEMA

T0 = pd.Timestamp("2024-01-01 12:00:00", tz="UTC")


def make_events(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Events in the pandas form of the schema; ``minute`` (float) offsets event_ts from T0."""
    full = []
    for i, row in enumerate(rows):
        ts = T0 + pd.Timedelta(minutes=row.get("minute", 0.0))
        full.append(
            {
                "event_id": row.get("event_id", f"e{i}"),
                "user_id": row.get("user_id", "u1"),
                "item_id": row.get("item_id", "i1"),
                "event_type": row.get("event_type", "click"),
                "dwell_time_ms": row.get("dwell_time_ms"),
                "surface": None,
                "session_id": row.get("session_id", "s1"),
                "device_type": None,
                "position": None,
                "request_id": None,
                "event_ts": ts,
                "server_ts": ts + pd.Timedelta(minutes=row.get("delay", 0.0)),
            }
        )
    frame = pd.DataFrame(full, columns=EVENTS_SCHEMA.names)
    frame["dwell_time_ms"] = frame["dwell_time_ms"].astype("Int64")
    frame["position"] = frame["position"].astype("Int32")
    for col in ("event_ts", "server_ts"):
        frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[us, UTC]")
    return frame


# Small keys and times so that collisions (duplicates, bursts) are common.
row_strategy = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u1", "u2"]),
        "item_id": st.sampled_from(["i1", "i2"]),
        "event_type": st.sampled_from(["click", "view"]),
        "session_id": st.sampled_from(["s1", "s2"]),
        "minute": st.integers(0, 40).map(lambda m: m / 2),
        "delay": st.sampled_from([0.0, 0.5, 90.0]),
    }
)


@st.composite
def logs(draw: st.DrawFn) -> pd.DataFrame:
    rows = draw(st.lists(row_strategy, min_size=0, max_size=25))
    for row in rows:
        if row["event_type"] == "view":
            row["dwell_time_ms"] = draw(st.integers(0, 100_000))
    frame = make_events(rows)
    # Resend some events: same id and content, arriving later.
    resent = draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=5)) if rows else []
    copies = frame.iloc[resent].assign(server_ts=lambda f: f["server_ts"] + pd.Timedelta(seconds=1))
    return pd.concat([frame, copies], ignore_index=True)


SMALL_BOTS = CleaningConfig(bot_max_events_per_minute=3, bot_max_events_per_day=20)


@settings(max_examples=40, deadline=None)
@given(logs())
def test_cleaning_twice_equals_cleaning_once(events: pd.DataFrame) -> None:
    once = clean_events(events, SMALL_BOTS).events
    twice = clean_events(once, SMALL_BOTS)
    pd.testing.assert_frame_equal(twice.events, once)
    assert twice.duplicates == twice.bots == twice.dwell_capped == 0


@settings(max_examples=40, deadline=None)
@given(logs())
def test_no_two_kept_events_of_a_key_within_the_window(events: pd.DataFrame) -> None:
    kept = clean_events(events, CleaningConfig()).events
    assert not kept["event_id"].duplicated().any()
    for _, group in kept.groupby(["user_id", "item_id", "event_type", "session_id"]):
        gaps = group["event_ts"].sort_values().diff().dropna()
        assert (gaps > pd.Timedelta(minutes=5)).all()


@settings(max_examples=40, deadline=None)
@given(logs())
def test_every_event_is_accounted_for(events: pd.DataFrame) -> None:
    result = clean_events(events, SMALL_BOTS)
    report = Reconciliation(
        rows_in=len(events),
        clean=len(result.events),
        quarantined=0,
        duplicates=result.duplicates,
        bots=result.bots,
    ).check()
    assert report.rows_in == len(events)
    assert set(result.events["event_id"]) <= set(events["event_id"])


def test_reconciliation_that_does_not_add_up_is_an_error() -> None:
    with pytest.raises(ReconciliationError, match=r"rows in 10 != clean 5 \+ quarantined 1"):
        Reconciliation(rows_in=10, clean=5, quarantined=1, duplicates=2, bots=1).check()
    assert Reconciliation(rows_in=9, clean=5, quarantined=1, duplicates=2, bots=1).check().bots == 1


def test_same_event_id_twice_lands_once_conflicting_copies_stay_for_the_contracts() -> None:
    events = make_events([{"event_id": "a"}, {"event_id": "a", "delay": 3.0}, {"event_id": "b"}])
    conflicting = make_events([{"event_id": "c", "item_id": "i1"}, {"event_id": "c", "item_id": "i2"}])
    kept, dropped = drop_duplicate_ids(pd.concat([events, conflicting], ignore_index=True))
    assert dropped == 1
    assert kept["event_id"].tolist() == ["a", "b", "c", "c"]
    assert kept.loc[0, "server_ts"] == T0  # the earliest arrival


def test_collapse_keeps_the_first_and_anything_past_the_window_of_a_kept_copy() -> None:
    # One key at minutes 0, 2, 4, 6, 11.5, 12; another session at minute 1.
    minutes = [0, 2, 4, 6, 11.5, 12]
    events = make_events([{"minute": m} for m in minutes] + [{"minute": 1, "session_id": "s2"}])
    kept, dropped = collapse_repeats(events, pd.Timedelta(minutes=5))
    # 0 kept; 2, 4 within 5 min of 0; 6 is 6 min after 0: kept; 11.5 is 5.5 after 6: kept; 12 within.
    assert kept["event_id"].tolist() == ["e0", "e3", "e4", "e6"]
    assert dropped == 3


def test_exactly_five_minutes_apart_is_still_a_duplicate() -> None:
    kept, dropped = collapse_repeats(make_events([{"minute": 0}, {"minute": 5}]), pd.Timedelta(minutes=5))
    assert (len(kept), dropped) == (1, 1)


def test_bots_by_rate_and_by_daily_volume() -> None:
    cfg = CleaningConfig(bot_max_events_per_minute=5, bot_max_events_per_day=30)
    fast = [{"user_id": "fast", "item_id": f"i{k}", "minute": k / 10} for k in range(6)]  # 6 in a minute
    busy = [{"user_id": "busy", "item_id": f"i{k}", "minute": 2.0 * k} for k in range(31)]  # 31 in a day
    human = [{"user_id": "human", "item_id": f"i{k}", "minute": k / 10} for k in range(5)]
    events = make_events(fast + busy + human)
    assert find_bots(events, cfg) == {"fast", "busy"}
    result = clean_events(events, cfg)
    assert set(result.events["user_id"]) == {"human"}
    assert (result.bots, result.bot_users) == (37, 2)


def test_dwell_capped_at_a_multiple_of_the_item_median() -> None:
    dwell = [1000, 2000, 3000, 50_000]  # median 2,500 -> cap 10,000 at 4x
    rows = [
        {"event_type": "view", "dwell_time_ms": d, "item_id": "i1", "minute": 10 * k}
        for k, d in enumerate(dwell)
    ]
    rows.append({"event_type": "view", "dwell_time_ms": 50_000, "item_id": "i2", "minute": 0})  # alone
    rows.append({"event_type": "click", "item_id": "i1", "minute": 1})
    capped, n = cap_dwell(make_events(rows), 4.0)
    assert n == 1
    assert capped["dwell_time_ms"].tolist()[:5] == [1000, 2000, 3000, 10_000, 50_000]
    assert capped["dwell_time_ms"].isna().tolist()[5]
    assert str(capped["dwell_time_ms"].dtype) == "Int64"


def test_late_events_are_kept_and_counted() -> None:
    events = make_events(
        [{"item_id": "i1", "delay": 0}, {"item_id": "i2", "delay": 60}, {"item_id": "i3", "delay": 61}]
    )
    assert count_late(events, pd.Timedelta(hours=1)) == 1
    result = clean_events(events)
    assert result.late == 1
    assert len(result.events) == 3


def test_config_rejects_unknown_keys_and_is_frozen() -> None:
    with pytest.raises(ValueError, match="extra"):
        CleaningConfig.model_validate({"bot_threshold": 3})
    with pytest.raises(ValueError):
        CleaningConfig().dwell_cap_multiple = 3.0
