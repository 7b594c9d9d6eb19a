"""`POST /events`: validate a batch of client events and append the good ones durably to the event log.

Events follow the log schema (`recsys.ingest.schema.EVENTS_SCHEMA`); `server_ts` is set here, never by
the client. Each event is validated on its own, so one bad event does not cost the batch its good ones.
The log is date-partitioned Parquet under the state directory,
`events/event_date=YYYY-MM-DD/part-<time>-<uuid>.parquet`, one file per partition per batch; each file is
written to a temporary name, fsync'd, renamed, and its folder fsync'd, so an acknowledged batch survives a
crash and a reader never sees half a file. The extra `propensity` column records, for impressions of
served items, the probability the serving policy had of showing the item there (off-policy evaluation).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recsys.ingest.schema import EVENTS_SCHEMA, to_arrow
from recsys.vocab import DEVICE_TYPES, EVENT_TYPES, SURFACES
from serving.schemas import printable_name

SERVED_EVENTS_SCHEMA = EVENTS_SCHEMA.append(pa.field("propensity", pa.float64()))
# Clocks disagree a little; an event stamped further in the future than this is a client bug.
MAX_CLOCK_SKEW = timedelta(minutes=5)
_INT32_MAX = 2**31 - 1


class EventBatchError(ValueError):
    """A body that is not a batch of events at all (not JSON, no `events` list, too many events)."""


def _one_of(allowed: Sequence[str]) -> Any:
    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return check


class Event(BaseModel):
    """One client event; `event_ts` must carry a time zone (an offset or Z)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    event_type: str
    dwell_time_ms: int | None = Field(default=None, ge=0, le=_INT32_MAX * 1000)
    surface: str | None = None
    session_id: str = Field(min_length=1, max_length=128)
    device_type: str | None = None
    position: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    request_id: str | None = Field(default=None, max_length=128)
    event_ts: datetime = Field(strict=False)

    _event_type = field_validator("event_type")(_one_of(EVENT_TYPES))
    _surface = field_validator("surface")(_one_of(SURFACES))
    _device = field_validator("device_type")(_one_of(DEVICE_TYPES))

    @field_validator("event_ts", mode="before")
    @classmethod
    def _iso_string(cls, value: Any) -> Any:
        # Only ISO 8601 strings: numbers would be read as epoch seconds or milliseconds, a guess.
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 string with a time zone, e.g. 2026-01-31T12:00:00Z")
        return value

    @field_validator("event_ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone (an offset or Z)")
        return value.astimezone(UTC)


@dataclass(frozen=True)
class Rejected:
    """An event that failed validation: its index in the batch and what is wrong."""

    index: int
    error: str


@dataclass(frozen=True)
class ParsedBatch:
    accepted: list[Event]
    rejected: list[Rejected]


def _describe(err: ValidationError) -> str:
    parts = []
    for error in err.errors():
        where = ".".join(printable_name(str(p)) for p in error.get("loc", ())) or "event"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def parse_events(raw: bytes, max_events: int, now: datetime | None = None) -> ParsedBatch:
    """Split a `{"events": [...]}` body into valid events and rejected ones (with reasons).

    Raises:
        EventBatchError: the body itself is unusable; no event is kept.

    >>> body = b'{"events": [{"event_id": "e1", "user_id": "u", "item_id": "i", "event_type": "view",'
    >>> body += b' "session_id": "s", "event_ts": "2026-01-01T00:00:00Z"}, {"event_id": 3}]}'
    >>> batch = parse_events(body, max_events=10)
    >>> [e.event_id for e in batch.accepted], batch.rejected[0].index
    (['e1'], 1)
    """
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise EventBatchError(f"body: invalid JSON ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(payload, dict) or set(payload) != {"events"} or not isinstance(payload["events"], list):
        raise EventBatchError('body: must be an object {"events": [...]} and nothing else')
    items = payload["events"]
    if not items:
        raise EventBatchError("events: the batch is empty")
    if len(items) > max_events:
        raise EventBatchError(f"events: at most {max_events} per batch, got {len(items)}")
    latest = (now or datetime.now(UTC)) + MAX_CLOCK_SKEW
    accepted: list[Event] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            rejected.append(Rejected(index, "event: must be an object"))
            continue
        try:
            event = Event.model_validate(item)
        except ValidationError as err:
            rejected.append(Rejected(index, _describe(err)))
            continue
        if event.event_ts > latest:
            rejected.append(Rejected(index, "event_ts: is in the future"))
            continue
        if event.dwell_time_ms is not None and event.event_type != "view":
            rejected.append(Rejected(index, "dwell_time_ms: only view events carry a dwell time"))
            continue
        accepted.append(event)
    return ParsedBatch(accepted, rejected)


def events_frame(
    events: Sequence[Event], server_ts: datetime, propensities: Sequence[float | None] | None = None
) -> pd.DataFrame:
    """The events as a frame with the columns of `SERVED_EVENTS_SCHEMA`."""
    rows = [event.model_dump() for event in events]
    frame = pd.DataFrame(rows, columns=[f for f in SERVED_EVENTS_SCHEMA.names if f != "server_ts"])
    frame["event_ts"] = pd.to_datetime(frame["event_ts"], utc=True)
    frame["server_ts"] = pd.Timestamp(server_ts).tz_convert("UTC")
    frame["dwell_time_ms"] = frame["dwell_time_ms"].astype("Int64")
    frame["position"] = frame["position"].astype("Int32")
    frame["propensity"] = pd.array(
        list(propensities) if propensities is not None else [None] * len(frame), dtype="Float64"
    )
    return frame


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """The append-only event log of the serving API, partitioned by event date."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def append(self, frame: pd.DataFrame) -> list[Path]:
        """Write the rows durably, one file per event date; returns the files written."""
        if frame.empty:
            return []
        written: list[Path] = []
        dates = frame["event_ts"].dt.strftime("%Y-%m-%d")
        stamp = f"{time.time_ns()}-{uuid.uuid4().hex[:12]}"
        for date, part in frame.groupby(dates, sort=True):
            folder = self.root / f"event_date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"part-{stamp}.parquet"
            tmp = folder / f".{target.name}.tmp"
            table = to_arrow(part.reset_index(drop=True), SERVED_EVENTS_SCHEMA)
            with open(tmp, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            _fsync_dir(folder)
            written.append(target)
        return written

    def read(self) -> pd.DataFrame:
        """Every event in the log (for tests and batch jobs); an empty log gives an empty frame."""
        files = sorted(self.root.glob("event_date=*/part-*.parquet"))
        if not files:
            return SERVED_EVENTS_SCHEMA.empty_table().to_pandas()
        return pa.concat_tables([pq.read_table(f, schema=SERVED_EVENTS_SCHEMA) for f in files]).to_pandas()
