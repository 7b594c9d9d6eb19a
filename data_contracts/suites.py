"""The Great Expectations suites: one per ingest table, the written form of docs/architecture.md.

Each suite is built from plain flags, so it holds no state and can be rebuilt by any process that needs
it. Column-map expectations flag single rows; the table-level ones (column set, dtypes of typed columns)
flag the whole table.

Referential integrity (an event's user and item exist) is judged on a precomputed boolean column per
reference (:data:`REFERENCE_COLUMNS`), filled by a hash lookup against the clean ids before validation:
GX copies an expectation's ``value_set`` on every use, so an in-set rule over a million user ids costs
minutes per batch, whatever the batch's size, while a lookup column costs a vectorised pass.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from recsys.ingest.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA
from recsys.vocab import DEVICE_TYPES, EVENT_TYPES, SURFACES

if TYPE_CHECKING:
    from great_expectations.expectations.expectation import Expectation

TABLES: tuple[str, ...] = ("interaction_events", "items", "users")
# Events column -> the precomputed column that says whether its id exists in the referenced table.
REFERENCE_COLUMNS: dict[str, str] = {"user_id": "user_id_in_users", "item_id": "item_id_in_items"}


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


def events_expectations(references: Collection[str] = ()) -> list[Expectation]:
    """Expectations of ``interaction_events``; ``references`` (keys of :data:`REFERENCE_COLUMNS`) adds
    referential integrity, judged on the precomputed columns that follow the schema's columns."""
    gxe = _gxe()
    lookups = [REFERENCE_COLUMNS[column] for column in REFERENCE_COLUMNS if column in references]
    exps: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=[*EVENTS_SCHEMA.names, *lookups])
    ]
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
    exps += [gxe.ExpectColumnValuesToBeInSet(column=lookup, value_set=[True]) for lookup in lookups]
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
