"""Log import: the example shop log end to end, constants and defaults, and every bad-input error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_contracts import validate_table
from recsys.ingest.log_import import LogImportError, import_log, read_mapping
from recsys.ingest.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, to_arrow

ROOT = Path(__file__).resolve().parents[1]
SHOP_LOG = ROOT / "tests" / "data" / "shop_purchases.csv"
SHOP_MAPPING = ROOT / "configs" / "mappings" / "shop_purchases.example.yaml"


def write_mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    return path


def test_shop_example_imports_with_the_shared_schemas() -> None:
    imported = import_log(SHOP_LOG, SHOP_MAPPING)
    events, items, users = imported.tables.events, imported.tables.items, imported.tables.users
    assert imported.rows_in == 6
    assert len(events) == 5
    assert set(events["event_type"]) == {"purchase"}
    assert events[["user_id", "item_id"]].values.tolist() == [
        ["c1", "p10"],
        ["c1", "p11"],
        ["c1", "p10"],
        ["c2", "p12"],
        ["c3", "p11"],
    ]
    # c1 bought twice within 30 minutes, then four days later: two sessions.
    assert events["session_id"].tolist() == ["c1-1", "c1-1", "c1-2", "c2-1", "c3-1"]
    assert events["event_ts"].iloc[0] == pd.Timestamp("2024-03-01 09:00", tz="UTC")
    assert (events["server_ts"] == events["event_ts"]).all()
    assert events["event_id"].is_unique
    assert items.set_index("item_id")["title"].to_dict() == {
        "p10": "Espresso machine",
        "p11": "Coffee grinder",
        "p12": "Milk frother",
    }
    assert users["signup_ts"].tolist() == [
        pd.Timestamp("2024-03-01 09:00", tz="UTC"),
        pd.Timestamp("2024-03-02 12:00", tz="UTC"),
        pd.Timestamp("2024-03-03 07:45", tz="UTC"),
    ]
    for frame, schema in ((events, EVENTS_SCHEMA), (items, ITEMS_SCHEMA), (users, USERS_SCHEMA)):
        assert to_arrow(frame, schema).schema.equals(schema)
    # The unparsable row is quarantined with its reason and its original content.
    assert imported.quarantine["reason"].tolist() == ["unparsable timestamp event_ts"]
    assert '"time": "yesterday"' in imported.quarantine["record"].iloc[0]


def test_imported_tables_pass_the_contracts_and_reimport_is_identical() -> None:
    first = import_log(SHOP_LOG, SHOP_MAPPING).tables
    items = validate_table("items", first.items)
    users = validate_table("users", first.users)
    events = validate_table(
        "interaction_events",
        first.events,
        known_user_ids=set(users.clean["user_id"]),
        known_item_ids=set(items.clean["item_id"]),
    )
    assert (len(items.quarantine), len(users.quarantine), len(events.quarantine)) == (0, 0, 0)
    again = import_log(SHOP_LOG, SHOP_MAPPING).tables
    pd.testing.assert_frame_equal(again.events, first.events)


def test_parquet_with_epoch_seconds_defaults_and_categories(tmp_path: Path) -> None:
    log = tmp_path / "log.parquet"
    frame = pd.DataFrame(
        {
            "uid": [1, 2],
            "sku": [7, 8],
            "t": [1_700_000_000, 1_700_000_060],
            "kind": ["view", "click"],
            "ms": [1500, None],
            "page": ["search", None],
            "cats": ["A|B", None],
        }
    )
    pq.write_table(pa.Table.from_pandas(frame), log)
    mapping = write_mapping(
        tmp_path,
        """
timestamps: {unit: s}
events:
  user_id: uid
  item_id: sku
  event_ts: t
  event_type: kind
  dwell_time_ms: ms
  surface: {column: page, default: homepage}
  device_type: {value: mobile}
items:
  categories: cats
""",
    )
    imported = import_log(log, mapping)
    events = imported.tables.events
    assert events["user_id"].tolist() == ["1", "2"]
    assert events["event_ts"].tolist() == [
        pd.Timestamp(1_700_000_000, unit="s", tz="UTC"),
        pd.Timestamp(1_700_000_060, unit="s", tz="UTC"),
    ]
    assert events["dwell_time_ms"].tolist()[0] == 1500
    assert events["dwell_time_ms"].isna().tolist() == [False, True]
    assert events["surface"].tolist() == ["search", "homepage"]
    assert events["device_type"].tolist() == ["mobile", "mobile"]
    assert imported.tables.items["categories"].tolist() == [["A", "B"], []]
    assert imported.tables.items["title"].tolist() == ["7", "8"]


def test_missing_mapped_column_is_one_readable_line(tmp_path: Path) -> None:
    mapping = write_mapping(
        tmp_path, "events: {user_id: customer, item_id: item, event_ts: time, event_type: {value: purchase}}"
    )
    with pytest.raises(
        LogImportError, match=r"mapped column 'customer' \(events.user_id\) not in the log"
    ) as err:
        import_log(SHOP_LOG, mapping)
    assert "\n" not in str(err.value)


def test_unknown_target_is_an_error(tmp_path: Path) -> None:
    mapping = write_mapping(
        tmp_path,
        "events: {user_id: user, item_id: item, event_ts: time, event_type: {value: purchase}, price: text}",
    )
    with pytest.raises(LogImportError, match=r"unknown target events.price; known: event_id"):
        read_mapping(mapping)


def test_missing_required_target_and_unknown_key_are_errors(tmp_path: Path) -> None:
    with pytest.raises(LogImportError, match=r"events lacks required targets \['event_type'\]"):
        read_mapping(write_mapping(tmp_path, "events: {user_id: user, item_id: item, event_ts: time}"))
    with pytest.raises(LogImportError, match=r"invalid mapping .* at colums"):
        read_mapping(write_mapping(tmp_path, "colums: {}"))
    with pytest.raises(LogImportError, match="needs exactly one of column, value"):
        read_mapping(
            write_mapping(
                tmp_path, "events: {user_id: user, item_id: item, event_ts: time, event_type: {default: x}}"
            )
        )


def test_truncated_parquet_is_a_readable_error_and_writes_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"user": ["a"], "item": ["b"], "time": ["2024-01-01 00:00:00"]}), good)
    data = good.read_bytes()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(data[: len(data) // 2])
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(LogImportError, match=r"cannot read parquet log .*broken.parquet") as err:
        import_log(broken, SHOP_MAPPING)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_file_and_bad_numbers(tmp_path: Path) -> None:
    with pytest.raises(LogImportError, match="log file not found"):
        import_log(tmp_path / "nope.csv", SHOP_MAPPING)
    log = tmp_path / "log.csv"
    log.write_text("user,item,time,secs\na,b,2024-01-01T00:00:00Z,long\n")
    mapping = write_mapping(
        tmp_path,
        "events: {user_id: user, item_id: item, event_ts: time, event_type: {value: view}, "
        "dwell_time_ms: secs}",
    )
    imported = import_log(log, mapping)
    assert imported.tables.events.empty and imported.rows_in == 1
    assert imported.quarantine["reason"].tolist() == ["not a whole number dwell_time_ms"]
