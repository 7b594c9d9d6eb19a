"""`recsys features materialize`: incremental, idempotent and crash-safe loads of the online store.

The online store should hold, for every entity of a batch view, its newest offline row with
``feature_ts <= end`` (ties broken by the newest ``created_ts``). Each load of a view is recorded in a
watermark in the state directory, ``<state>/feast/materialized.json``, per online store: the ``end`` it
loaded up to, the newest ``created_ts`` it could see, and the offline build it read. The next run of that
view reads only

- snapshots with ``feature_ts`` in ``(end of the last run, end]`` (new snapshots), and, earlier,
- everything from the oldest ``feature_ts`` among rows created after the last run (a corrected backfill
  writes its rows with a new ``created_ts``),

and reads the whole history when the offline tables were rebuilt since (a new dataset version may change
any snapshot without touching ``created_ts``), when the view was never loaded into this online store, or
when ``full`` is asked for. ``store.materialize`` overwrites, on Redis too, so that every entity the
window touches ends at its newest row: running again gives the same online state.

A view's watermark moves only after the whole view is written: a run that dies halfway leaves the old
one, and the next run loads the same window again, which completes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.state import StateDir

if TYPE_CHECKING:
    import feast
    import pandas as pd

    from recsys.config import FeaturesConfig

WATERMARK_FILE = "materialized.json"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Snapshot times are stored to the microsecond: the first time after the last load's end.
_TICK = timedelta(microseconds=1)


class MaterializeError(ValueError):
    """A materialisation that cannot run as asked (nothing registered, or an end before the watermark)."""


@dataclass(frozen=True)
class Watermark:
    """What the last complete load of one view into one online store read."""

    end: datetime
    created: datetime | None  # newest created_ts among the rows with feature_ts <= end
    build: dict[str, Any] | None  # the offline tables' build record (features_build.json)

    def to_json(self) -> dict[str, Any]:
        return {
            "end": self.end.isoformat(),
            "created": self.created.isoformat() if self.created else None,
            "build": self.build,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Watermark:
        created = raw.get("created")
        return cls(
            end=datetime.fromisoformat(raw["end"]),
            created=datetime.fromisoformat(created) if created else None,
            build=raw.get("build"),
        )


@dataclass(frozen=True)
class Window:
    """The snapshot times one view's load reads, and why."""

    start: datetime
    end: datetime
    reason: str

    @property
    def full(self) -> bool:
        return self.start == EPOCH

    @property
    def empty(self) -> bool:
        """Nothing to read: the view is up to date."""
        return self.start > self.end


@dataclass(frozen=True)
class MaterializeSummary:
    """What a run loaded: per view, the window read (``None``: the view has no snapshot yet)."""

    online_store: str
    end: datetime
    windows: dict[str, Window | None]


def plan_window(
    previous: Watermark | None,
    build: dict[str, Any] | None,
    end: datetime,
    corrected_from: datetime | None,
    full: bool = False,
) -> Window:
    """The window one view must load so that every entity ends at its newest row with feature_ts <= end.

    Args:
        previous: The view's watermark for this online store, None when never loaded there.
        build: The offline tables' build record now.
        end: Newest snapshot time to load.
        corrected_from: Oldest feature_ts (<= end) among rows created after ``previous.created``.
        full: Read the whole history whatever the watermark says.

    >>> t = [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)]
    >>> plan_window(Watermark(t[1], t[1], None), None, t[2], None).start > t[1]
    True
    >>> plan_window(Watermark(t[1], t[1], None), None, t[2], t[0]).start == t[0]  # a corrected backfill
    True
    >>> plan_window(Watermark(t[2], t[2], None), None, t[2], None).empty  # nothing new: nothing read
    True
    >>> rebuilt = {"dataset_version": "b"}
    >>> plan_window(Watermark(t[1], t[1], {"dataset_version": "a"}), rebuilt, t[2], None).full
    True
    """
    if full:
        return Window(EPOCH, end, "full load (--full)")
    if previous is None:
        return Window(EPOCH, end, "full load: first load into this online store")
    if previous.build != build:
        return Window(EPOCH, end, "full load: the offline tables were rebuilt since the last load")
    if end < previous.end:
        raise MaterializeError(
            f"the online store already holds features as of {previous.end.isoformat()}; --end "
            f"{end.isoformat()} is older: pass --full to reload it as of {end.isoformat()}"
        )
    if corrected_from is not None and corrected_from <= previous.end:
        return Window(corrected_from, end, "rows created since the last load (a corrected backfill)")
    if end == previous.end:
        return Window(previous.end + _TICK, end, "up to date: nothing newer than the last load")
    return Window(previous.end + _TICK, end, "incremental: snapshots since the last load")


def corrections_since(stamps: pd.DataFrame, created_after: datetime | None, end: datetime) -> datetime | None:
    """Oldest ``feature_ts <= end`` among rows whose ``created_ts`` is after ``created_after``.

    ``stamps`` has the columns ``feature_ts`` and ``created_ts`` (UTC).
    """
    if created_after is None or stamps.empty:
        return None
    changed = stamps[(stamps["created_ts"] > created_after) & (stamps["feature_ts"] <= end)]
    return changed["feature_ts"].min().to_pydatetime() if len(changed) else None


def newest_created(stamps: pd.DataFrame, end: datetime) -> datetime | None:
    """Newest ``created_ts`` among the rows a load up to ``end`` can see."""
    seen = stamps.loc[stamps["feature_ts"] <= end, "created_ts"]
    return seen.max().to_pydatetime() if len(seen) else None


def read_stamps(view: feast.FeatureView) -> pd.DataFrame:
    """``feature_ts`` and ``created_ts`` (UTC) of every row of the view's snapshot table."""
    import pandas as pd
    from feast import FileSource

    source = view.batch_source
    if not isinstance(source, FileSource):
        raise MaterializeError(f"view {view.name!r} is not backed by a snapshot file: load it with feast")
    path = Path(source.path)
    if not path.exists():
        return pd.DataFrame({"feature_ts": pd.Series([], dtype="datetime64[us, UTC]"), "created_ts": []})
    created = source.created_timestamp_column or source.timestamp_field
    columns = list(dict.fromkeys([source.timestamp_field, created]))
    table = pd.read_parquet(path, columns=columns)
    return pd.DataFrame(
        {
            "feature_ts": pd.to_datetime(table[source.timestamp_field], utc=True),
            "created_ts": pd.to_datetime(table[created], utc=True),
        }
    )


def read_watermarks(state: StateDir, online_store: str) -> dict[str, Watermark]:
    """The recorded watermark of each view loaded into ``online_store`` (empty when none or unreadable)."""
    path = state.feast / WATERMARK_FILE
    try:
        raw = json.loads(path.read_text()).get(online_store, {})
        return {view: Watermark.from_json(mark) for view, mark in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_watermark(state: StateDir, online_store: str, view: str, mark: Watermark) -> None:
    """Record one view's watermark, atomically (a crash leaves the old file or the new one)."""
    path = state.feast / WATERMARK_FILE
    try:
        every: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        every = {}
    every.setdefault(online_store, {})[view] = mark.to_json()
    partial = path.with_name(f".{WATERMARK_FILE}.partial")
    partial.write_text(json.dumps(every, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def materialize_online(
    state: StateDir,
    config: FeaturesConfig,
    end: datetime | None = None,
    full: bool = False,
    store: feast.FeatureStore | None = None,
) -> MaterializeSummary:
    """Bring the online store up to ``end`` (default: the newest snapshot), reading as little as it may.

    Raises:
        MaterializeError: Nothing is registered, or ``end`` is before the watermark without ``full``.
        FeatureStoreUnavailable: The online store is down or refused writes; run again to complete.
    """
    from recsys.features.stage import read_build_info
    from recsys.features.store import batch_views, build_store, describe_online_store, materialize

    store = store or build_store(state, config)
    views = batch_views(store)
    if not views:
        raise MaterializeError("no feature views are registered: run `recsys features` first")
    if end is not None and end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    target = describe_online_store(store)
    build = read_build_info(state)
    marks = read_watermarks(state, target)
    stamps = {view.name: read_stamps(view) for view in views}
    newest = [s["feature_ts"].max().to_pydatetime() for s in stamps.values() if not s.empty]
    until = end or (max(newest) if newest else EPOCH)
    windows: dict[str, Window | None] = {}
    # Plan every view before loading any, so that a bad --end fails before anything is written.
    for view in views:
        previous = marks.get(view.name)
        corrected = corrections_since(stamps[view.name], previous.created if previous else None, until)
        windows[view.name] = plan_window(previous, build, until, corrected, full)
    for view in views:
        window = windows[view.name]
        assert window is not None
        if stamps[view.name].empty:
            windows[view.name] = None
            continue
        if window.empty:
            continue
        materialize(store, window.end, window.start, [view.name])
        created = newest_created(stamps[view.name], window.end)
        write_watermark(state, target, view.name, Watermark(window.end, created, build))
    return MaterializeSummary(online_store=target, end=until, windows=windows)
