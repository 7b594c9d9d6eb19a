"""Contracts and cleaning of a date-partitioned event log a few days at a time, in bounded memory.

The result equals what validating and cleaning the whole log at once gives (``tests/test_chunked_ingest.py``
checks it), because the only state that crosses chunks is kept, small, in the right places:

* ``event_id`` uniqueness: a 64-bit hash of every id (8 bytes an event) finds the ids that occur in more
  than one chunk; the rows carrying them are gathered and go through the contracts together, so resent
  copies collapse and conflicting ones are quarantined exactly as in one pass, then rejoin their chunk.
* duplicates within 5 minutes: chunks are disjoint runs of whole UTC days in event-time order, so a kept
  event can only suppress later events within the window: the kept events of the last window of a chunk
  are carried into the next as anchors.
* bots: the per-minute and per-day limits are judged inside whole UTC days, so within one chunk, but
  all of a bot's events go: the bot set is complete after the first pass, and the second pass drops them.
* dwell cap: medians per item over every non-bot view of the log, collected between the two passes.

The first pass writes each chunk's validated, collapsed events to a work folder; the second drops the
bots, caps dwell and hands whole days to the snapshot writer. Peak memory is one chunk plus the id hashes
and the views' dwell.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recsys.ingest.cleaning import (
    CleaningConfig,
    apply_dwell_caps,
    collapse_repeats,
    count_late,
    drop_duplicate_ids,
    dwell_caps,
    find_bots,
    quarantine_future,
)
from recsys.ingest.event_store import EVENTS_DIR, PARTITION_KEY
from recsys.ingest.schema import EVENTS_SCHEMA, QUARANTINE_SCHEMA, empty_frame, to_arrow, to_pandas
from recsys.ingest.snapshot import SnapshotWriter

# Events per chunk: a chunk is at least one whole day, and days are added while the chunk stays below it.
CHUNK_ROWS = 500_000
_CARRY = "_carried"


class PartitionLayoutError(ValueError):
    """A date partition holds events of another date, so chunks would not be disjoint in time."""


class PartitionedLog:
    """Events stored as ``<root>/interaction_events/event_date=YYYY-MM-DD/*.parquet`` (the simulator's
    layout and a snapshot's), read a few days at a time."""

    def __init__(self, root: Path) -> None:
        self.folder = Path(root) / EVENTS_DIR
        prefix = f"{PARTITION_KEY}="
        self.days = sorted(p.name.removeprefix(prefix) for p in self.folder.glob(f"{prefix}*") if p.is_dir())

    def rows(self, day: str) -> int:
        """Rows of one day, from the Parquet footers."""
        return int(ds.dataset(self._folder(day), format="parquet").count_rows())

    def read(self, days: Collection[str], columns: list[str] | None = None) -> pd.DataFrame:
        """The events of ``days`` in pandas form (``EVENTS_SCHEMA`` columns, or ``columns``)."""
        files = [str(path) for day in days for path in sorted(self._folder(day).glob("*.parquet"))]
        dataset = ds.dataset(files, format="parquet")
        schema = EVENTS_SCHEMA if columns is None else pa.schema([EVENTS_SCHEMA.field(c) for c in columns])
        return to_pandas(dataset.to_table(columns=schema.names).cast(schema))

    def _folder(self, day: str) -> Path:
        return self.folder / f"{PARTITION_KEY}={day}"


def release_memory() -> None:
    """Hand freed memory back to the system between chunks. A chunk's millions of short strings leave
    glibc's heap fragmented; without a trim the resident size grows by a chunk's worth every few chunks
    (measured: 480 -> 690 MiB over 30 chunks of 32,000 events; flat at ~500 MiB with it)."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc is not None:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)


def plan_chunks(day_rows: dict[str, int], chunk_rows: int) -> list[tuple[str, ...]]:
    """Consecutive days grouped into chunks of at most ``chunk_rows`` events (a bigger day stands alone).

    >>> plan_chunks({"d1": 3, "d2": 3, "d3": 9, "d4": 1}, 6)
    [('d1', 'd2'), ('d3',), ('d4',)]
    """
    chunks: list[tuple[str, ...]] = []
    current: list[str] = []
    size = 0
    for day, rows in sorted(day_rows.items()):
        if current and size + rows > chunk_rows:
            chunks.append(tuple(current))
            current, size = [], 0
        current.append(day)
        size += rows
    if current:
        chunks.append(tuple(current))
    return chunks


def id_hashes(ids: pd.Series) -> np.ndarray:
    """A 64-bit hash of each event id (equal ids, equal hashes; a collision only gathers a few rows more)."""
    return np.asarray(pd.util.hash_array(ids.astype(object).fillna("").to_numpy()), dtype=np.uint64)


@dataclass
class ChunkedEvents:
    """What the contracts and cleaning did to the events of every chunk, in reconciliation terms."""

    rows_in: int = 0
    clean: int = 0
    resent: int = 0
    collapsed: int = 0
    bots: int = 0
    bot_users: int = 0
    dwell_capped: int = 0
    late: int = 0
    chunks: int = 0
    quarantine: list[pd.DataFrame] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def quarantined(self) -> int:
        return sum(len(q) for q in self.quarantine)

    @property
    def duplicates(self) -> int:
        return self.resent + self.collapsed


class ChunkedCleaner:
    """Runs the two passes over a :class:`PartitionedLog` (see the module's docstring)."""

    def __init__(
        self,
        log: PartitionedLog,
        cleaning: CleaningConfig,
        known_users: pd.Index,
        known_items: pd.Index,
        now: pd.Timestamp,
        work_dir: Path,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.log = log
        self.cfg = cleaning
        self.known_users = known_users
        self.known_items = known_items
        self.now = now
        self.work_dir = Path(work_dir)
        self.chunks = plan_chunks({day: log.rows(day) for day in log.days}, chunk_rows)
        self.outcome = ChunkedEvents(chunks=len(self.chunks))

    def run(self, writer: SnapshotWriter) -> ChunkedEvents:
        """Validate and clean every chunk, and hand the clean events to ``writer`` in date order."""
        shared = self._shared_ids()
        returning = self._judge_shared(shared)
        window = pd.Timedelta(minutes=self.cfg.duplicate_window_minutes)
        carry = empty_frame(EVENTS_SCHEMA)
        bots: set[str] = set()
        stages: list[Path] = []
        for number, frame in enumerate(self._chunks()):
            if shared.size:
                frame = frame[~np.isin(id_hashes(frame["event_id"]), shared)]
            self.outcome.rows_in += len(frame)
            parts = [self._contracts(frame), *([returning[number]] if number in returning else [])]
            clean = pd.concat(parts, ignore_index=True)
            kept, carry = self._collapse(clean, carry, window)
            bots |= find_bots(kept, self.cfg)
            stages.append(self.work_dir / f"chunk-{number:05d}.parquet")
            pq.write_table(to_arrow(kept, EVENTS_SCHEMA), stages[-1])
            del frame, parts, clean, kept
            release_memory()
        self.outcome.bot_users = len(bots)
        caps = self._dwell_caps(stages, bots)
        for stage in stages:
            events = to_pandas(pq.read_table(stage, schema=EVENTS_SCHEMA))
            is_bot = events["user_id"].isin(bots).to_numpy()
            events, capped = apply_dwell_caps(events[~is_bot].reset_index(drop=True), caps)
            self.outcome.bots += int(is_bot.sum())
            self.outcome.dwell_capped += capped
            self.outcome.late += count_late(events, pd.Timedelta(minutes=self.cfg.late_after_minutes))
            self.outcome.clean += len(events)
            writer.add_events(to_arrow(events, EVENTS_SCHEMA))
            stage.unlink()
            del events
            release_memory()
        return self.outcome

    def _chunks(self) -> Iterator[pd.DataFrame]:
        for days in self.chunks:
            frame = self.log.read(days)
            # Chunks must be disjoint in time: every event within its chunk's first and last day.
            ts = frame["event_ts"].dropna()
            first, end = (
                pd.Timestamp(days[0], tz="UTC"),
                pd.Timestamp(days[-1], tz="UTC") + pd.Timedelta(days=1),
            )
            if len(ts) and (ts.min() < first or ts.max() >= end):
                stray = ts.min() if ts.min() < first else ts.max()
                raise PartitionLayoutError(
                    f"partitions {days[0]}..{days[-1]} hold events dated {stray.date().isoformat()}: a "
                    "partition must hold only its own date's events"
                )
            yield frame

    def _shared_ids(self) -> np.ndarray:
        """Sorted hashes of the ids found in more than one chunk (usually none)."""
        per_chunk = [
            np.unique(id_hashes(self.log.read(days, ["event_id"])["event_id"])) for days in self.chunks
        ]
        if len(per_chunk) < 2:
            return np.empty(0, np.uint64)
        values, counts = np.unique(np.concatenate(per_chunk), return_counts=True)
        return np.asarray(values[counts > 1], dtype=np.uint64)

    def _judge_shared(self, shared: np.ndarray) -> dict[int, pd.DataFrame]:
        """Run the rows whose ids occur in several chunks through the contracts together; the clean ones
        go back to the chunk of their event date."""
        if not shared.size:
            return {}
        gathered = [frame[np.isin(id_hashes(frame["event_id"]), shared)] for frame in self._chunks()]
        frame = pd.concat(gathered, ignore_index=True)
        self.outcome.rows_in += len(frame)
        clean = self._contracts(frame)
        # Each chunk covers the days from its first day to the next chunk's first day.
        starts = np.array([days[0] for days in self.chunks])
        chunk_of = (
            np.searchsorted(starts, clean["event_ts"].dt.strftime("%Y-%m-%d").to_numpy(), side="right") - 1
        )
        return {int(n): part.reset_index(drop=True) for n, part in clean.groupby(chunk_of, sort=True)}

    def _contracts(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Future timestamps and resent copies out, then the events contract: the clean rows."""
        from data_contracts import validate_table

        present, future = quarantine_future(
            frame, self.now, pd.Timedelta(minutes=self.cfg.future_tolerance_minutes)
        )
        unique, resent = drop_duplicate_ids(present)
        result = validate_table(
            "interaction_events", unique, known_user_ids=self.known_users, known_item_ids=self.known_items
        )
        self.outcome.resent += resent
        self.outcome.quarantine += [q for q in (future, result.quarantine) if len(q)]
        self.outcome.failures.update(result.failures)
        return result.clean

    def _collapse(
        self, clean: pd.DataFrame, carry: pd.DataFrame, window: pd.Timedelta
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Collapse repeats with the previous chunk's last kept events as anchors (never counted again)."""
        work = pd.concat([carry.assign(**{_CARRY: True}), clean.assign(**{_CARRY: False})], ignore_index=True)
        kept, dropped = collapse_repeats(work, window)
        self.outcome.collapsed += dropped
        kept_all = kept.drop(columns=_CARRY)
        ts = kept_all["event_ts"]
        last = ts.max() if len(ts) else None
        next_carry = kept_all[ts >= last - window] if last is not None else kept_all.iloc[:0]
        mine = kept[~kept[_CARRY].to_numpy(dtype=bool)].drop(columns=_CARRY).reset_index(drop=True)
        return mine, next_carry.reset_index(drop=True)

    def _dwell_caps(self, stages: list[Path], bots: set[str]) -> pd.Series:
        """Per-item caps from every non-bot view of the log (only four columns of views are held)."""
        columns = ["user_id", "item_id", "event_type", "dwell_time_ms"]
        views = []
        for stage in stages:
            table = pq.read_table(stage, columns=columns, filters=[("event_type", "=", "view")])
            frame = to_pandas(table)
            views.append(frame[~frame["user_id"].isin(bots).to_numpy()])
        if not views:
            return pd.Series(dtype="float64")
        return dwell_caps(pd.concat(views, ignore_index=True), self.cfg.dwell_cap_multiple)


def merged_quarantine(outcome: ChunkedEvents) -> pd.DataFrame:
    """Every chunk's quarantined events in one frame."""
    frames = outcome.quarantine or [empty_frame(QUARANTINE_SCHEMA)]
    return pd.concat(frames, ignore_index=True).astype(object)
