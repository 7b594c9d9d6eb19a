"""Labels: the spec's rules per event type, completion thresholds, and the conversion delay window."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ingest.labels import AMBIGUOUS, LABELS, NEGATIVE, POSITIVE, TARGETS, label_events, view_labels
from recsys.vocab import EVENT_TYPES

T0 = pd.Timestamp("2024-01-01", tz="UTC")
ITEMS = pd.DataFrame({"item_id": ["short", "long", "unknown"], "duration_s": [10.0, 1000.0, None]})


def make_events(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Minimal events: ``hours`` offsets event_ts from T0; server_ts = event_ts."""
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "user_id": [r.get("user_id", "u1") for r in rows],
            "item_id": [r.get("item_id", "long") for r in rows],
            "event_type": [r["event_type"] for r in rows],
            "session_id": [r.get("session_id", "s1") for r in rows],
            "dwell_time_ms": pd.array([r.get("dwell_time_ms") for r in rows], dtype="Int64"),
            "event_ts": [T0 + pd.Timedelta(hours=r.get("hours", 0.0)) for r in rows],
        }
    )
    frame["event_ts"] = pd.to_datetime(frame["event_ts"], utc=True).astype("datetime64[us, UTC]")
    frame["server_ts"] = frame["event_ts"]
    return frame


def test_spec_rules_per_event_type() -> None:
    events = make_events(
        [
            {"event_type": "purchase"},
            {"event_type": "like"},
            {"event_type": "save"},
            {"event_type": "skip"},
            {"event_type": "view", "item_id": "short", "dwell_time_ms": 8000},  # completion 0.8
            {"event_type": "view", "item_id": "short", "dwell_time_ms": 7990},  # 0.799: ambiguous
            {"event_type": "view", "item_id": "long", "dwell_time_ms": 2999},  # < 0.1 and < 3 s
            {"event_type": "view", "item_id": "long", "dwell_time_ms": 3000},  # 3 s is not < 3 s
            {"event_type": "view", "item_id": "unknown", "dwell_time_ms": 500},  # no duration
        ]
    )
    labels = label_events(events, ITEMS)
    assert labels["satisfaction"].tolist() == [
        POSITIVE,
        POSITIVE,
        POSITIVE,
        NEGATIVE,
        POSITIVE,
        AMBIGUOUS,
        NEGATIVE,
        AMBIGUOUS,
        AMBIGUOUS,
    ]
    assert labels["click"].tolist() == [POSITIVE] * 3 + [NEGATIVE] + [POSITIVE] * 5
    assert labels["completion"].iloc[4] == 0.8
    assert np.isnan(labels["completion"].iloc[8])


def test_impression_is_a_click_positive_only_when_engaged_later_in_its_session() -> None:
    events = make_events(
        [
            {"event_type": "impression", "item_id": "long"},
            {"event_type": "click", "item_id": "long", "hours": 0.01},
            {"event_type": "impression", "item_id": "short"},
            {"event_type": "impression", "item_id": "unknown", "session_id": "s1"},
            {"event_type": "click", "item_id": "unknown", "session_id": "s2", "hours": 0.01},
        ]
    )
    assert label_events(events, ITEMS)["click"].tolist() == [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE, POSITIVE]


def test_conversion_waits_for_its_delay_window() -> None:
    events = make_events(
        [
            {"event_type": "click", "item_id": "long", "hours": 0},  # bought 10 h later
            {"event_type": "click", "item_id": "short", "hours": 0},  # never bought, window closes at 72 h
            {"event_type": "click", "item_id": "unknown", "hours": 50},  # window still open at 80 h
            {"event_type": "purchase", "item_id": "long", "hours": 10},
            {"event_type": "view", "item_id": "short", "hours": 80, "dwell_time_ms": 9000},
        ]
    )
    labels = label_events(events, ITEMS)  # labelled at the newest event: 80 h
    assert labels["conversion"].tolist() == [POSITIVE, NEGATIVE, AMBIGUOUS, POSITIVE, AMBIGUOUS]
    assert labels["satisfaction"].tolist()[:3] == [POSITIVE, AMBIGUOUS, AMBIGUOUS]
    earlier = label_events(events, ITEMS, as_of=T0 + pd.Timedelta(hours=71))
    assert earlier["conversion"].tolist()[:3] == [POSITIVE, AMBIGUOUS, AMBIGUOUS]
    short = label_events(events, ITEMS, conversion_window=pd.Timedelta(hours=5))
    assert short["conversion"].tolist()[:3] == [NEGATIVE, NEGATIVE, NEGATIVE]


def test_a_purchase_before_the_click_does_not_convert_it() -> None:
    events = make_events(
        [
            {"event_type": "purchase", "hours": 0},
            {"event_type": "click", "hours": 1},
            {"event_type": "view", "hours": 100},
        ]
    )
    assert label_events(events, ITEMS)["conversion"].tolist()[1] == NEGATIVE


@st.composite
def event_logs(draw: st.DrawFn) -> pd.DataFrame:
    rows = []
    for _ in range(draw(st.integers(1, 20))):
        kind = draw(st.sampled_from(EVENT_TYPES))
        rows.append(
            {
                "event_type": kind,
                "item_id": draw(st.sampled_from(["short", "long", "unknown"])),
                "session_id": draw(st.sampled_from(["s1", "s2"])),
                "hours": draw(st.integers(0, 200)),
                "dwell_time_ms": draw(st.integers(0, 2_000_000)) if kind == "view" else None,
            }
        )
    return make_events(rows)


@settings(max_examples=50, deadline=None)
@given(event_logs())
def test_every_event_gets_exactly_one_label_per_target(events: pd.DataFrame) -> None:
    labels = label_events(events, ITEMS)
    assert len(labels) == len(events)
    assert labels["event_id"].tolist() == events["event_id"].tolist()
    for target in TARGETS:
        assert labels[target].isin(LABELS).all()
    negative_kinds = set(events.loc[labels["satisfaction"].eq(NEGATIVE).to_numpy(), "event_type"])
    assert negative_kinds <= {"skip", "view"}


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 3, allow_nan=False),
    st.floats(0, 3, allow_nan=False),
    st.floats(0, 10_000, allow_nan=False),
)
def test_view_label_is_monotone_in_completion(low: float, high: float, dwell: float) -> None:
    low, high = sorted((low, high))
    got = view_labels(np.array([low, high]), np.array([dwell, dwell]))
    assert LABELS.index(got[0]) <= LABELS.index(got[1])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 20_000), st.floats(1, 100), st.floats(1, 100))
def test_shorter_items_never_get_a_worse_label_for_the_same_dwell(dwell: int, d1: float, d2: float) -> None:
    items = pd.DataFrame({"item_id": ["a", "b"], "duration_s": sorted((d1, d2), reverse=True)})
    events = make_events(
        [
            {"event_type": "view", "item_id": "a", "dwell_time_ms": dwell},
            {"event_type": "view", "item_id": "b", "dwell_time_ms": dwell},
        ]
    )
    got = label_events(events, items)["satisfaction"].tolist()
    assert LABELS.index(got[0]) <= LABELS.index(got[1])


def test_no_events_no_labels() -> None:
    labels = label_events(make_events([]).iloc[:0], ITEMS)
    assert labels.empty
    assert list(labels.columns) == ["event_id", "completion", *TARGETS]
