"""Data contracts: Great Expectations decides which rows are quarantined, and why; nothing disappears."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from data_contracts import ContractError, validate_table


def ts(seconds: int) -> pd.Timestamp:
    return pd.Timestamp(1_600_000_000 + seconds, unit="s", tz="UTC")


def events_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Events in the pandas form of the schema; each row gives what differs from a valid default."""
    full = []
    for i, row in enumerate(rows):
        base: dict[str, object] = {
            "event_id": f"e{i}",
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "like",
            "dwell_time_ms": None,
            "surface": None,
            "session_id": "u1-1",
            "device_type": None,
            "position": None,
            "request_id": None,
            "event_ts": ts(i),
            "server_ts": ts(i),
        }
        full.append(base | row)
    frame = pd.DataFrame(full)
    frame["dwell_time_ms"] = frame["dwell_time_ms"].astype("Int64")
    frame["position"] = frame["position"].astype("Int32")
    for col in ("event_ts", "server_ts"):
        frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[us, UTC]")
    return frame


def test_each_broken_rule_quarantines_its_rows_with_a_named_reason() -> None:
    events = events_frame(
        [
            {},  # 0 valid
            {
                "event_type": "view",
                "dwell_time_ms": 1500,
                "surface": "search",
                "device_type": "tv",
            },  # 1 valid
            {"event_id": "dup"},  # 2 duplicate id
            {"event_id": "dup"},  # 3 duplicate id
            {"event_type": "clicked"},  # 4 not in the enum
            {"dwell_time_ms": 300},  # 5 dwell on a like
            {"server_ts": ts(-60)},  # 6 server before event
            {"item_id": "i404"},  # 7 unknown item
            {"user_id": None},  # 8 null user
            {"position": -1, "surface": "fax"},  # 9 two rules at once
        ]
    )
    result = validate_table("interaction_events", events, known_user_ids={"u1"}, known_item_ids={"i1"})
    assert list(result.clean["event_id"]) == ["e0", "e1"]
    assert len(result.clean) + len(result.quarantine) == len(events)
    by_id = {
        json.loads(r)["event_id"]: reason
        for r, reason in zip(result.quarantine["record"], result.quarantine["reason"], strict=True)
    }
    assert set(by_id) == {"dup", "e4", "e5", "e6", "e7", "e8", "e9"}
    assert by_id["dup"] == "expect_column_values_to_be_unique(event_id)"
    assert by_id["e4"] == "expect_column_values_to_be_in_set(event_type)"
    assert by_id["e5"] == 'expect_column_values_to_be_null(dwell_time_ms where event_type != "view")'
    assert by_id["e6"] == "expect_column_pair_values_a_to_be_greater_than_b(server_ts, event_ts)"
    assert by_id["e7"] == "expect_column_values_to_be_in_set(item_id_in_items)"
    assert by_id["e8"] == "expect_column_values_to_not_be_null(user_id)"  # GX set checks skip nulls
    assert set(by_id["e9"].split("; ")) == {
        "expect_column_values_to_be_between(position)",
        "expect_column_values_to_be_in_set(surface)",
    }
    assert (result.quarantine["table"] == "interaction_events").all()
    assert json.loads(result.quarantine["record"].iloc[0])["event_ts"].startswith("2020-09-13T12:26")
    assert result.failures["expect_column_values_to_be_unique(event_id)"] == 2


def test_items_contract() -> None:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "b", "c"],
            "title": ["A", "B", "B2", None],
            "text": ["A.", "B.", "B2.", "C."],
            "categories": [["Drama"], [], [], ["Comedy"]],
            "duration_s": [None, 10.0, None, None],
            "published_at": pd.to_datetime([None, "1995-01-01", None, None], utc=True),
        }
    )
    result = validate_table("items", items)
    assert list(result.clean["item_id"]) == ["a"]
    assert list(result.quarantine["reason"]) == [
        "expect_column_values_to_be_unique(item_id)",
        "expect_column_values_to_be_unique(item_id)",
        "expect_column_values_to_not_be_null(title)",
    ]


def test_wrongly_typed_column_quarantines_the_whole_table() -> None:
    users = pd.DataFrame(
        {"user_id": ["1", "2"], "signup_ts": ["2020-01-01", "2020-01-02"], "region": [None, None]}
    )
    result = validate_table("users", users)
    assert result.clean.empty
    assert len(result.quarantine) == 2
    assert all("expect_column_values_to_be_of_type(signup_ts)" in r for r in result.quarantine["reason"])


def test_missing_column_quarantines_everything_and_says_so() -> None:
    users = pd.DataFrame({"user_id": ["1"], "signup_ts": pd.to_datetime(["2020-01-01"], utc=True)})
    result = validate_table("users", users)
    assert result.clean.empty
    assert "expect_table_columns_to_match_ordered_list" in result.quarantine["reason"].iloc[0]


def test_unknown_table_is_an_error() -> None:
    with pytest.raises(ContractError, match="no data contract"):
        validate_table("orders", pd.DataFrame({"a": [1]}))
