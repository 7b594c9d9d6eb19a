"""Import anyone's interaction log (CSV or Parquet) through a column-mapping YAML file.

The mapping names, per target column of ``interaction_events``, ``items`` and ``users``, either a source
column (``user_id: customer``), a constant (``event_type: {value: purchase}``) or a column with a default
for its nulls (``surface: {column: page, default: homepage}``), and says how timestamps are written.
Whatever the log lacks is derived as for MovieLens: event ids from the event's content (so a re-import
gives the same ids), sessions from 30-minute gaps, one item per item id (title defaults to the id), one
user per user id (signup at the first event). Rows whose timestamp or whole number (dwell, position)
cannot be parsed are quarantined with the reason; every other row is kept.
``configs/mappings/shop_purchases.example.yaml`` is an example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recsys.ingest.movielens import RawTables, event_ids, session_numbers
from recsys.ingest.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, QUARANTINE_SCHEMA, USERS_SCHEMA, empty_frame

TIMESTAMP_TARGETS: frozenset[str] = frozenset({"event_ts", "server_ts", "published_at", "signup_ts"})
TARGETS: dict[str, tuple[str, ...]] = {
    "events": tuple(EVENTS_SCHEMA.names),
    "items": tuple(name for name in ITEMS_SCHEMA.names if name != "item_id"),
    "users": tuple(name for name in USERS_SCHEMA.names if name != "user_id"),
}
WHOLE_NUMBER_TARGETS: frozenset[str] = frozenset({"dwell_time_ms", "position"})
REQUIRED_EVENT_TARGETS: tuple[str, ...] = ("user_id", "item_id", "event_type", "event_ts")


class LogImportError(ValueError):
    """The log or its mapping cannot be imported (one readable line says why)."""


class ColumnSource(BaseModel):
    """Where a target column comes from: a source ``column`` (nulls filled by ``default``), or a ``value``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str | None = None
    value: Any = None
    default: Any = None


class TimestampFormat(BaseModel):
    """How the log writes times: numbers in ``unit`` since the epoch, or text (``format`` optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: Literal["s", "ms", "us", "ns"] | None = None
    format: str | None = None
    # Zone of times written without one.
    timezone: str = "UTC"


class LogMapping(BaseModel):
    """A column mapping file: the source format, timestamps, and each table's target columns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["csv", "parquet"] | None = None
    timestamps: TimestampFormat = TimestampFormat()
    session_gap_minutes: int = Field(default=30, ge=1)
    # Separator of several categories in one text cell.
    category_separator: str = "|"
    events: dict[str, ColumnSource] = Field(default_factory=dict)
    items: dict[str, ColumnSource] = Field(default_factory=dict)
    users: dict[str, ColumnSource] = Field(default_factory=dict)

    @field_validator("events", "items", "users", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """``target: source_column`` is short for ``target: {column: source_column}``."""
        if isinstance(value, dict):
            return {k: {"column": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


@dataclass(frozen=True)
class ImportedLog:
    """The three tables (before the contracts), the rows quarantined on import, and rows read."""

    tables: RawTables
    quarantine: pd.DataFrame
    rows_in: int


def read_mapping(path: Path) -> LogMapping:
    """Read and check a mapping file: unknown keys or targets, and missing required targets, are errors."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise LogImportError(f"cannot read mapping {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(tree, dict):
        raise LogImportError(f"mapping {path} must be a YAML mapping, got {type(tree).__name__}")
    try:
        mapping = LogMapping.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise LogImportError(f"invalid mapping {path} at {where}: {first['msg']}") from err
    for table, known in TARGETS.items():
        for target, source in getattr(mapping, table).items():
            if target not in known:
                raise LogImportError(
                    f"mapping {path}: unknown target {table}.{target}; known: {', '.join(known)}"
                )
            if (source.column is None) == (source.value is None):
                raise LogImportError(f"mapping {path}: {table}.{target} needs exactly one of column, value")
    absent = [t for t in REQUIRED_EVENT_TARGETS if t not in mapping.events]
    if absent:
        raise LogImportError(f"mapping {path}: events lacks required targets {absent}")
    return mapping


def read_log(source: Path, fmt: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet log with every column as it is written (CSV cells as strings)."""
    kind = fmt or ("parquet" if source.suffix.lower() in (".parquet", ".pq") else "csv")
    if not source.is_file():
        raise LogImportError(f"log file not found: {source}")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(source).to_pandas()
        return pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as err:  # pyarrow and pandas raise many types for a damaged file
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LogImportError(f"cannot read {kind} log {source}: {message}") from err


def _column(frame: pd.DataFrame, table: str, target: str, source: ColumnSource) -> pd.Series:
    if source.column is None:
        return pd.Series([source.value] * len(frame), index=frame.index, dtype=object)
    if source.column not in frame.columns:
        raise LogImportError(
            f"mapped column {source.column!r} ({table}.{target}) not in the log; "
            f"it has {', '.join(map(str, frame.columns))}"
        )
    values = frame[source.column]
    return values if source.default is None else values.where(values.notna(), source.default)


def parse_timestamps(values: pd.Series, fmt: TimestampFormat) -> pd.Series:
    """Times as ``datetime64[us, UTC]``; what cannot be parsed becomes NaT (the caller quarantines it)."""
    if fmt.unit is not None:
        numbers = pd.to_numeric(values, errors="coerce")
        parsed = pd.to_datetime(numbers, unit=fmt.unit, utc=True, errors="coerce")
    else:
        parsed = pd.to_datetime(values, format=fmt.format or "ISO8601", errors="coerce")
        if getattr(parsed.dt, "tz", None) is None:
            parsed = parsed.dt.tz_localize(fmt.timezone)
        parsed = parsed.dt.tz_convert("UTC")
    return parsed.astype("datetime64[us, UTC]")


def _text(values: pd.Series) -> pd.Series:
    """Strings (ids as written, never via floats), nulls as None."""
    return values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))


def _mapped(frame: pd.DataFrame, mapping: LogMapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every mapped target as a column (prefixed ``items.``/``users.``), and the rows whose times or
    whole numbers cannot be parsed (quarantined, with every reason)."""
    out = pd.DataFrame(index=frame.index)
    bad_reason = pd.Series("", index=frame.index, dtype=object)
    for table in TARGETS:
        for target, source in getattr(mapping, table).items():
            values = _column(frame, table, target, source)
            name = target if table == "events" else f"{table}.{target}"
            if target in TIMESTAMP_TARGETS:
                parsed = parse_timestamps(values, mapping.timestamps)
                failed = parsed.isna() & values.notna()
                bad_reason[failed] += f"unparsable timestamp {name}; "
                values = parsed
            elif target in WHOLE_NUMBER_TARGETS:
                numbers = pd.to_numeric(values, errors="coerce")
                failed = values.notna() & (numbers.isna() | (numbers.round() != numbers))
                bad_reason[failed] += f"not a whole number {name}; "
                values = numbers.where(~failed)
            out[name] = values
    bad = bad_reason != ""
    quarantine = pd.DataFrame(
        {
            "table": "interaction_events",
            "reason": bad_reason[bad].str.rstrip("; "),
            "record": [json.dumps(row, default=str) for row in frame[bad].to_dict(orient="records")],
        },
        columns=QUARANTINE_SCHEMA.names,
    ).astype(object)
    return out[~bad].reset_index(drop=True), quarantine.reset_index(drop=True)


def _events(mapped: pd.DataFrame, mapping: LogMapping) -> pd.DataFrame:
    n = len(mapped)
    frame = mapped.assign(
        user_id=_text(mapped["user_id"]),
        item_id=_text(mapped["item_id"]),
        event_type=_text(mapped["event_type"]),
        _user=_text(mapped["user_id"]).fillna(""),
    )
    frame = frame.sort_values(["_user", "event_ts"], kind="stable").reset_index(drop=True)
    ts_ms = frame["event_ts"].astype("int64") // 1000
    if "event_id" in frame:
        frame["event_id"] = _text(frame["event_id"])
    else:
        frame["event_id"] = event_ids(
            frame["_user"], frame["item_id"].fillna(""), ts_ms, frame["event_type"].fillna("")
        )
    if "session_id" in frame:
        frame["session_id"] = _text(frame["session_id"])
    else:
        sessions = session_numbers(frame["_user"], frame["event_ts"], mapping.session_gap_minutes)
        frame["session_id"] = (frame["_user"] + "-" + pd.Series(sessions).astype(str)).astype(object)
    if "server_ts" not in frame:
        frame["server_ts"] = frame["event_ts"]
    for name in ("surface", "device_type", "request_id"):
        frame[name] = _text(frame[name]) if name in frame else pd.Series([None] * n, dtype=object)
    for name, dtype in (("dwell_time_ms", "Int64"), ("position", "Int32")):
        raw = frame[name] if name in frame else pd.Series([None] * n, dtype=object)
        try:
            frame[name] = pd.to_numeric(raw, errors="raise").astype(dtype)
        except (ValueError, TypeError) as err:
            raise LogImportError(f"events.{name}: not whole numbers ({str(err).splitlines()[0]})") from err
    return frame[EVENTS_SCHEMA.names]


def _first_per(frame: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """One row per ``key`` with the first non-null value of each column."""
    keyed = frame.assign(_key=_text(frame[key])).dropna(subset=["_key"])
    if not columns:
        return pd.DataFrame({key: pd.unique(keyed["_key"])})
    first = keyed.groupby("_key", sort=True)[columns].first()
    return first.rename_axis(key).reset_index()


def _items(mapped: pd.DataFrame, mapping: LogMapping) -> pd.DataFrame:
    columns = [f"items.{t}" for t in mapping.items]
    items = _first_per(mapped, "item_id", columns).rename(columns=lambda c: c.removeprefix("items."))
    n = len(items)
    title = _text(items["title"]) if "title" in items else pd.Series([None] * n, dtype=object)
    items["title"] = title.where(title.notna() & (title != ""), items["item_id"])
    text = _text(items["text"]) if "text" in items else pd.Series([None] * n, dtype=object)
    items["text"] = text.where(text.notna(), items["title"])
    if "categories" in items:
        sep = mapping.category_separator
        items["categories"] = [
            [] if c is None or pd.isna(c) else [p.strip() for p in str(c).split(sep) if p.strip()]
            for c in items["categories"]
        ]
    else:
        items["categories"] = [[] for _ in range(n)]
    items["duration_s"] = (
        pd.to_numeric(items["duration_s"], errors="coerce") if "duration_s" in items else np.nan
    )
    items["duration_s"] = items["duration_s"].astype("float64")
    published = items["published_at"] if "published_at" in items else pd.Series([pd.NaT] * n)
    items["published_at"] = pd.to_datetime(published, utc=True).astype("datetime64[us, UTC]")
    return items[ITEMS_SCHEMA.names].reset_index(drop=True)


def _users(mapped: pd.DataFrame, events: pd.DataFrame, mapping: LogMapping) -> pd.DataFrame:
    columns = [f"users.{t}" for t in mapping.users]
    users = _first_per(mapped, "user_id", columns).rename(columns=lambda c: c.removeprefix("users."))
    first_event = events.dropna(subset=["user_id"]).groupby("user_id")["event_ts"].min()
    signup = users["signup_ts"] if "signup_ts" in users else pd.Series([pd.NaT] * len(users))
    signup = pd.to_datetime(signup, utc=True).astype("datetime64[us, UTC]")
    users["signup_ts"] = signup.where(signup.notna(), users["user_id"].map(first_event))
    users["signup_ts"] = pd.to_datetime(users["signup_ts"], utc=True).astype("datetime64[us, UTC]")
    region = _text(users["region"]) if "region" in users else pd.Series([None] * len(users), dtype=object)
    users["region"] = region
    return users[USERS_SCHEMA.names].reset_index(drop=True)


def import_frame(frame: pd.DataFrame, mapping: LogMapping) -> ImportedLog:
    """Map a log already in memory to the three tables (pure: no IO)."""
    mapped, quarantine = _mapped(frame, mapping)
    events = _events(mapped, mapping)
    tables = RawTables(events=events, items=_items(mapped, mapping), users=_users(mapped, events, mapping))
    return ImportedLog(tables=tables, quarantine=quarantine, rows_in=len(frame))


def import_log(source: Path, mapping: Path) -> ImportedLog:
    """Read ``source`` (CSV or Parquet) and map it with the YAML file ``mapping``; writes nothing.

    Raises:
        LogImportError: the mapping is invalid, a mapped column is missing, or the file is unreadable
            (a truncated Parquet file, for one).
    """
    rules = read_mapping(mapping)
    frame = read_log(Path(source), rules.format)
    if frame.empty:
        return ImportedLog(
            tables=RawTables(
                events=empty_frame(EVENTS_SCHEMA),
                items=empty_frame(ITEMS_SCHEMA),
                users=empty_frame(USERS_SCHEMA),
            ),
            quarantine=empty_frame(QUARANTINE_SCHEMA),
            rows_in=0,
        )
    return import_frame(frame, rules)
