"""The Great Expectations suites: one per ingest table, the written form of docs/architecture.md.

Each suite is built fresh from plain arguments (the ids that events may refer to), so it holds no state
and can be rebuilt by any process that needs it. Column-map expectations flag single rows; the
table-level ones (column set, dtypes of typed columns) flag the whole table.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from recsys.ingest.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA
from recsys.vocab import DEVICE_TYPES, EVENT_TYPES, SURFACES

if TYPE_CHECKING:
    from great_expectations.expectations.expectation import Expectation

TABLES: tuple[str, ...] = ("interaction_events", "items", "users")


def _gxe() -> Any:
    """The expectation classes, imported on use (GX is slow to import and untyped in its re-exports)."""
    import great_expectations.expectations

    return great_expectations.expectations


def _types(columns: dict[str, str]) -> list[Expectation]:
    gxe = _gxe()
    # For object columns GX checks each value (row level); for typed columns it checks the dtype.
    return [gxe.ExpectColumnValuesToBeOfType(column=col, type_=kind) for col, kind in columns.items()]


def _not_null(columns: Collection[str]) -> list[Expectation]:
    gxe = _gxe()
    return [gxe.ExpectColumnValuesToNotBeNull(column=col) for col in columns]


def events_expectations(
    known_user_ids: Collection[str] | None = None, known_item_ids: Collection[str] | None = None
) -> list[Expectation]:
    """Expectations of ``interaction_events``; with known ids, also referential integrity."""
    gxe = _gxe()
    exps: list[Expectation] = [gxe.ExpectTableColumnsToMatchOrderedList(column_list=EVENTS_SCHEMA.names)]
    exps += _types(
        {
            "event_id": "str",
            "user_id": "str",
            "item_id": "str",
            "event_type": "str",
            "session_id": "str",
            "dwell_time_ms": "int64",
            "position": "int32",
            "event_ts": "Timestamp",
            "server_ts": "Timestamp",
        }
    )
    exps += _not_null(["event_id", "user_id", "item_id", "event_type", "session_id", "event_ts", "server_ts"])
    exps += [
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="surface", value_set=list(SURFACES)),
        gxe.ExpectColumnValuesToBeInSet(column="device_type", value_set=list(DEVICE_TYPES)),
        gxe.ExpectColumnValuesToBeNull(
            column="dwell_time_ms", row_condition='event_type != "view"', condition_parser="pandas"
        ),
        gxe.ExpectColumnValuesToBeBetween(column="dwell_time_ms", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="server_ts", column_B="event_ts", or_equal=True, ignore_row_if="either_value_is_missing"
        ),
    ]
    if known_user_ids is not None:
        exps.append(gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set=sorted(known_user_ids)))
    if known_item_ids is not None:
        exps.append(gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=sorted(known_item_ids)))
    return exps


def items_expectations() -> list[Expectation]:
    """Expectations of ``items``."""
    gxe = _gxe()
    exps: list[Expectation] = [gxe.ExpectTableColumnsToMatchOrderedList(column_list=ITEMS_SCHEMA.names)]
    exps += _types(
        {
            "item_id": "str",
            "title": "str",
            "text": "str",
            "categories": "list",
            "duration_s": "float64",
            "published_at": "Timestamp",
        }
    )
    exps += _not_null(["item_id", "title", "text", "categories"])
    exps += [
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0),
    ]
    return exps


def users_expectations() -> list[Expectation]:
    """Expectations of ``users``."""
    gxe = _gxe()
    exps: list[Expectation] = [gxe.ExpectTableColumnsToMatchOrderedList(column_list=USERS_SCHEMA.names)]
    exps += _types({"user_id": "str", "signup_ts": "Timestamp"})
    exps += _not_null(["user_id", "signup_ts"])
    exps.append(gxe.ExpectColumnValuesToBeUnique(column="user_id"))
    return exps
