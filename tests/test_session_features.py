"""Session features as pure functions: last items, 10-minute genre counts, and the incremental update
(what each push computes) equal to a recomputation from every event; request-time features."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.features.request_features import day_of_week, device_one_hot, hour_of_day, surface_one_hot
from recsys.features.session_features import (
    CATEGORY_COUNTS,
    FEATURE_TS,
    KEPT_EVENT_MS,
    KEPT_ITEMS,
    LAST_ITEMS,
    EngagedEvent,
    advance,
    kept_from_record,
    session_at,
    session_feature_table,
    to_ms,
)
from recsys.vocab import DEVICE_TYPES, GENRES, SURFACES

MINUTE = 60_000
HORROR, COMEDY, DRAMA = GENRES.index("Horror"), GENRES.index("Comedy"), GENRES.index("Drama")


def multi_hot(*genres: int) -> list[float]:
    return [1.0 if g in genres else 0.0 for g in range(len(GENRES))]


GENRE_OF = {f"i{n}": multi_hot((HORROR, COMEDY, DRAMA)[n % 3]) for n in range(20)}
GENRE_OF["both"] = multi_hot(HORROR, DRAMA)


def test_last_items_are_the_ten_newest_distinct_items_oldest_first() -> None:
    events = [EngagedEvent(f"i{n}", n * MINUTE) for n in range(12)]
    events.append(EngagedEvent("i5", 12 * MINUTE))  # watched again: moves to the end
    events.append(EngagedEvent("i0", -MINUTE))  # a late event older than everything: changes nothing
    row = session_at(events, 13 * MINUTE, GENRE_OF)
    assert row.last_item_ids == ("i2", "i3", "i4", "i6", "i7", "i8", "i9", "i10", "i11", "i5")


def test_category_counts_cover_the_ten_minutes_before_the_row() -> None:
    at = 100 * MINUTE
    events = [
        EngagedEvent("i0", at - 11 * MINUTE),  # horror, outside the window
        EngagedEvent("i1", at - 10 * MINUTE),  # comedy, exactly 10 minutes old: outside
        EngagedEvent("i1", at - 9 * MINUTE),  # comedy, inside
        EngagedEvent("both", at - MINUTE),  # horror and drama
        EngagedEvent("both", at),  # again: counted again
        EngagedEvent("unknown", at),  # no genres: counts nothing, still a last item
    ]
    row = session_at(events, at, GENRE_OF)
    expected = [0.0] * len(GENRES)
    expected[COMEDY], expected[HORROR], expected[DRAMA] = 1.0, 2.0, 2.0
    assert list(row.category_counts) == expected
    assert row.last_item_ids == ("i0", "i1", "both", "unknown")
    # kept: i0's event (a last item outside the window) and the window's events, not i1's old event
    assert [(e.item_id, e.event_ms) for e in row.kept] == [
        ("i0", at - 11 * MINUTE),
        ("i1", at - 9 * MINUTE),
        ("both", at - MINUTE),
        ("both", at),
        ("unknown", at),
    ]


batches = st.lists(
    st.tuples(
        st.integers(0, 30),  # minutes since the previous push
        st.lists(st.tuples(st.sampled_from([*GENRE_OF, "x", "y"]), st.integers(-40, 5)), max_size=8),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(batches)
def test_pushing_batch_after_batch_equals_recomputing_from_every_event(
    pushes: list[tuple[int, list[tuple[str, int]]]],
) -> None:
    """Each push extends the stored row only; the result must be what all events give from scratch.
    Event times are relative to their push (late ones up to 40 minutes, early ones up to 5)."""
    at = 0
    kept: tuple[EngagedEvent, ...] = ()
    seen: list[EngagedEvent] = []
    for gap, batch in pushes:
        at += gap * MINUTE
        new = [EngagedEvent(item, at + offset * MINUTE) for item, offset in batch]
        seen.extend(new)
        row = advance(kept, new, at, GENRE_OF)
        assert row == session_at(seen, at, GENRE_OF)
        kept = row.kept


def test_offline_table_replays_the_log_push_by_push() -> None:
    t0 = datetime(2026, 3, 1, 20, tzinfo=UTC)
    log = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u1", "u1"],
            "item_id": ["i0", "i3", "i1", "i2", "i6"],
            "event_type": ["view", "click", "like", "impression", "purchase"],
            # u1's i6 is a mobile event from 20 minutes earlier that arrived with the second batch
            "event_ts": [t0, t0, t0, t0 + timedelta(minutes=5), t0 - timedelta(minutes=20)],
            "server_ts": [t0, t0, t0, t0 + timedelta(minutes=5), t0 + timedelta(minutes=5)],
        }
    )
    table = session_feature_table(log, GENRE_OF)
    assert list(zip(table["user_id"], table[FEATURE_TS], strict=True)) == [
        ("u1", t0),
        ("u1", t0 + timedelta(minutes=5)),
        ("u2", t0),
    ]
    second = table.iloc[1]
    assert list(second[LAST_ITEMS]) == ["i6", "i0", "i3"]  # event-time order; the impression is no item
    counts = [0.0] * len(GENRES)
    counts[HORROR] = 2.0  # i0 and i3 (i6, 25 minutes before the row, is outside the window)
    assert list(second[CATEGORY_COUNTS]) == counts
    events = kept_from_record(second.to_dict())
    assert (
        events
        == session_at(
            [
                EngagedEvent(i, to_ms(t))
                for i, t in (("i0", t0), ("i3", t0), ("i6", t0 - timedelta(minutes=20)))
            ],
            to_ms(t0 + timedelta(minutes=5)),
            GENRE_OF,
        ).kept
    )
    assert list(second[KEPT_ITEMS]) == [e.item_id for e in events]
    assert list(second[KEPT_EVENT_MS]) == [e.event_ms for e in events]


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        to_ms(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="keeps 2 items but 1 event times"):
        kept_from_record({KEPT_ITEMS: ["a", "b"], KEPT_EVENT_MS: [1]})
    with pytest.raises(ValueError, match="lack columns"):
        session_feature_table(pd.DataFrame({"user_id": ["u"]}), GENRE_OF)


def test_request_time_features_by_hand() -> None:
    late_evening_in_brazil = datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-3)))  # Sunday
    assert hour_of_day(late_evening_in_brazil) == 2  # 02:30 UTC, Monday
    assert day_of_week(late_evening_in_brazil) == 0
    assert device_one_hot("tv") == [1.0 if d == "tv" else 0.0 for d in DEVICE_TYPES]
    assert surface_one_hot("pdp") == [1.0 if s == "pdp" else 0.0 for s in SURFACES]
    assert device_one_hot(None) == [0.0] * len(DEVICE_TYPES)
    assert surface_one_hot("billboard") == [0.0] * len(SURFACES)
    with pytest.raises(ValueError, match="no time zone"):
        hour_of_day(datetime(2026, 3, 1, 12))
