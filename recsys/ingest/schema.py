"""Arrow schemas of the three ingest tables and the quarantine, and their pandas form.

Every writer of these tables goes through :func:`to_arrow`, so a Parquet file under ``datasets/`` always
carries exactly these column names and types, whatever produced the frame.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("dwell_time_ms", pa.int64()),
        pa.field("surface", pa.string()),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("device_type", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("request_id", pa.string()),
        pa.field("event_ts", TS, nullable=False),
        pa.field("server_ts", TS, nullable=False),
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("categories", pa.list_(pa.string()), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("published_at", TS),
    ]
)

USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("signup_ts", TS, nullable=False),
        pa.field("region", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("record", pa.string(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "interaction_events": EVENTS_SCHEMA,
    "items": ITEMS_SCHEMA,
    "users": USERS_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
}

# Nullable integers stay integers in pandas (plain int64 would turn into float64 at the first null).
_PANDAS_INTS = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}


class SchemaError(ValueError):
    """A frame that cannot be represented with a table's Arrow schema."""


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert a frame to a table with exactly ``schema`` (column order, types, no pandas metadata).

    Raises:
        SchemaError: a column is missing or a value does not fit its type.
    """
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise SchemaError(f"frame lacks columns {missing} required by the schema")
    try:
        table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise SchemaError(f"frame does not fit the schema: {str(err).splitlines()[0]}") from err
    return table.replace_schema_metadata(None).combine_chunks()


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """The pandas form every stage works with: object strings, nullable ints, tz-aware UTC timestamps."""
    return table.to_pandas(types_mapper=_PANDAS_INTS.get)


def empty_frame(schema: pa.Schema) -> pd.DataFrame:
    """A zero-row frame with the pandas dtypes of ``schema``."""
    return to_pandas(schema.empty_table())
