"""Date-partitioned storage of ``interaction_events`` inside a snapshot, and its two access paths.

Layout: ``<snapshot>/interaction_events/event_date=YYYY-MM-DD/part-0.parquet`` (the event's UTC date).
Within a partition rows are sorted by (``user_id``, ``event_ts``, ``event_id``) and written in row groups
of ``ROW_GROUP_ROWS`` with min/max statistics, so the two queries of the spec touch little data:

* a user's recent history (``user_id``, ``event_ts`` desc): partitions older than ``since`` are never
  opened (partition pruning on ``event_date``), and inside a partition only the row groups whose
  ``user_id`` min/max range holds the user are read, since sorting puts each user's rows together;
* a session (``session_id``, ``event_ts``): the same row-group pruning on ``session_id`` (session ids
  start with their user id in every source, so they cluster with the user), and ``on_date`` limits it to
  the session's dates.

Snapshots written before partitioning hold one ``interaction_events.parquet``; every reader accepts both.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recsys.ingest.schema import EVENTS_SCHEMA, to_pandas

EVENTS_DIR = "interaction_events"
PARTITION_KEY = "event_date"
# Small enough that one user's rows sit in few groups, large enough to keep the footer small.
ROW_GROUP_ROWS = 64_000
_US_PER_DAY = 86_400_000_000
_SORT = [("user_id", "ascending"), ("event_ts", "ascending"), ("event_id", "ascending")]


def split_by_date(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """``table`` (``EVENTS_SCHEMA``) cut by UTC event date, dates ascending, each part in storage order."""
    day = pc.divide(table["event_ts"].cast(pa.int64()), _US_PER_DAY).to_numpy(zero_copy_only=False)
    parts = []
    for value in np.unique(day):
        part = table.filter(pa.array(day == value)).sort_by(_SORT).combine_chunks()
        name = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=int(value))).date().isoformat()
        parts.append((name, part))
    return parts


def write_partition(snapshot_dir: Path, name: str, part: pa.Table) -> None:
    """Write one date's events (already in storage order) as ``event_date=<name>/part-0.parquet``."""
    folder = snapshot_dir / EVENTS_DIR / f"{PARTITION_KEY}={name}"
    folder.mkdir(parents=True)
    pq.write_table(part, folder / "part-0.parquet", row_group_size=ROW_GROUP_ROWS)


def write_partitioned_events(table: pa.Table, snapshot_dir: Path) -> dict[str, int]:
    """Write ``table`` (``EVENTS_SCHEMA``) under ``snapshot_dir/interaction_events/`` by event date.

    Returns:
        rows written per event date (``YYYY-MM-DD``).
    """
    (snapshot_dir / EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for name, part in split_by_date(table):
        write_partition(snapshot_dir, name, part)
        written[name] = part.num_rows
    return written


def events_location(snapshot_dir: Path) -> Path:
    """The partitioned directory of a snapshot, or its single file for snapshots that predate it."""
    folder = snapshot_dir / EVENTS_DIR
    return folder if folder.is_dir() else snapshot_dir / f"{EVENTS_DIR}.parquet"


def events_dataset(snapshot_dir: Path) -> ds.Dataset:
    """A pyarrow dataset over a snapshot's events; ``event_date`` is a partition field when partitioned."""
    location = events_location(snapshot_dir)
    if not location.exists():
        raise FileNotFoundError(f"{location} not found: run `recsys ingest` first")
    if location.is_dir():
        partitioning = ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive")
        return ds.dataset(location, format="parquet", partitioning=partitioning)
    return ds.dataset(location, format="parquet")


def _read(snapshot_dir: Path, condition: ds.Expression | None) -> pd.DataFrame:
    table = events_dataset(snapshot_dir).to_table(columns=EVENTS_SCHEMA.names, filter=condition)
    return to_pandas(table.cast(EVENTS_SCHEMA))


def read_events(snapshot_dir: Path) -> pd.DataFrame:
    """Every event of a snapshot (pandas form, ``EVENTS_SCHEMA`` columns)."""
    return _read(snapshot_dir, None)


def _date_filter(snapshot_dir: Path, first: date | None, last: date | None) -> ds.Expression | None:
    if not events_location(snapshot_dir).is_dir():
        return None
    condition: ds.Expression | None = None
    if first is not None:
        condition = ds.field(PARTITION_KEY) >= first.isoformat()
    if last is not None:
        upper = ds.field(PARTITION_KEY) <= last.isoformat()
        condition = upper if condition is None else condition & upper
    return condition


def _and(left: ds.Expression | None, right: ds.Expression) -> ds.Expression:
    return right if left is None else left & right


def read_user_history(
    snapshot_dir: Path, user_id: str, since: datetime | None = None, limit: int | None = None
) -> pd.DataFrame:
    """A user's events at or after ``since``, newest first, at most ``limit`` of them."""
    condition = _date_filter(snapshot_dir, since.astimezone(UTC).date() if since else None, None)
    condition = _and(condition, ds.field("user_id") == user_id)
    if since is not None:
        cut = pa.scalar(since, EVENTS_SCHEMA.field("event_ts").type)
        condition = condition & (ds.field("event_ts") >= cut)
    events = _read(snapshot_dir, condition)
    events = events.sort_values(["event_ts", "event_id"], ascending=False, kind="stable")
    return (events if limit is None else events.head(limit)).reset_index(drop=True)


def read_session(snapshot_dir: Path, session_id: str, on_date: date | None = None) -> pd.DataFrame:
    """A session's events in time order; ``on_date`` (the session's start date) limits the partitions
    read to that day and the next (a session may run past midnight)."""
    last = on_date + timedelta(days=1) if on_date is not None else None
    condition = _and(_date_filter(snapshot_dir, on_date, last), ds.field("session_id") == session_id)
    events = _read(snapshot_dir, condition)
    return events.sort_values(["event_ts", "event_id"], kind="stable").reset_index(drop=True)


def event_time_range(snapshot_dir: Path) -> tuple[datetime, datetime] | None:
    """The first and last ``event_ts`` from the Parquet footers' statistics (no row is read)."""
    location = events_location(snapshot_dir)
    files = sorted(location.rglob("*.parquet")) if location.is_dir() else [location]
    lows: list[datetime] = []
    highs: list[datetime] = []
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        column = metadata.schema.names.index("event_ts")
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(column).statistics
            if stats is not None and stats.has_min_max:
                lows.append(pd.Timestamp(stats.min).tz_convert(UTC).to_pydatetime())
                highs.append(pd.Timestamp(stats.max).tz_convert(UTC).to_pydatetime())
    return (min(lows), max(highs)) if lows else None


def count_events(snapshot_dir: Path) -> int:
    """Rows of a snapshot's events, from the footers."""
    return int(events_dataset(snapshot_dir).count_rows())
