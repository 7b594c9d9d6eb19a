"""Session features: a user's last engaged items and genre counts over the last minutes.

One implementation for every path: the ingress pushes the row `advance` computes when events arrive
(``recsys.features.session_online``), and `session_feature_table` replays an event log through the same
`advance` to write the push source's offline table, so a backfilled row equals the pushed one.

A row describes what serving had seen at time ``at``: the events whose ``server_ts`` is at or before it.
Its timestamp is therefore the processing time of the push, not an event time: a late mobile event joins
the session when it reaches the server, as it did for serving. The 10-minute window and the order of
the last items use event times. A training example at time t must ask for the row strictly before t, or
the row holding the example's own event leaks into it.

Besides the two features, a row keeps the engaged events a later update still needs (those of the
window and those behind the last items): any ingress replica can extend the session from the stored
row alone, and the result equals a recomputation from every event (a test holds them to it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from recsys.vocab import GENRES

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd
    import pyarrow as pa

SESSION_FEATURES_FILE = "session_features.parquet"
SESSION_VIEW = "session_recent"
SESSION_PUSH_SOURCE = "session_push"
FEATURE_TS = "feature_ts"
CREATED_TS = "created_ts"
LAST_ITEMS = "session_last_item_ids"
CATEGORY_COUNTS = "session_category_counts"
KEPT_ITEMS = "session_kept_item_ids"
KEPT_EVENT_MS = "session_kept_event_ms"

SESSION_ITEMS = 10
CATEGORY_WINDOW = timedelta(minutes=10)
SESSION_TTL = timedelta(hours=1)
# A person does not engage hundreds of times in ten minutes; past this the oldest window events are
# dropped (the counts then undercount), which bounds the row a bot can grow.
MAX_KEPT_EVENTS = 200
# Impressions say nothing about taste and skips say the opposite: neither joins the session.
ENGAGED_EVENT_TYPES = frozenset({"click", "view", "like", "save", "add_to_cart", "purchase"})

GenreLookup = Mapping[str, Sequence[float] | None]


@dataclass(frozen=True)
class EngagedEvent:
    """An engaged event as the session sees it: the item and its event time (ms since the epoch)."""

    item_id: str
    event_ms: int


@dataclass(frozen=True)
class SessionRow:
    """The session features at one time, and the events a later update needs (oldest first)."""

    last_item_ids: tuple[str, ...]
    category_counts: tuple[float, ...]
    kept: tuple[EngagedEvent, ...]


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of a time-zone-aware time.

    >>> to_ms(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    1000
    """
    if moment.tzinfo is None:
        raise ValueError(f"time {moment.isoformat()} has no time zone")
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def advance(
    kept: Sequence[EngagedEvent],
    new: Iterable[EngagedEvent],
    at_ms: int,
    genres: GenreLookup,
    n_items: int = SESSION_ITEMS,
    window: timedelta = CATEGORY_WINDOW,
) -> SessionRow:
    """The session at `at_ms` from the previous row's kept events and the events that arrived since.

    Args:
        kept: `SessionRow.kept` of the previous row (empty for a new session).
        new: Engaged events that arrived since, in arrival order.
        at_ms: The row's time (the processing time); the window is ``(at_ms - window, ...]``.
        genres: Multi-hot genre vector (over ``recsys.vocab.GENRES``) per item; missing items count nothing.
        n_items: How many distinct items `last_item_ids` holds; an item engaged again moves to the end.
        window: The span of `category_counts`.

    >>> horror = [0.0] * len(GENRES); horror[GENRES.index("Horror")] = 1.0
    >>> seen = [EngagedEvent("a", 0), EngagedEvent("b", 1), EngagedEvent("a", 2)]
    >>> row = advance([], seen, 3, {"a": horror})
    >>> row.last_item_ids, row.category_counts[GENRES.index("Horror")]
    (('b', 'a'), 2.0)
    """
    # Stable: events with equal times keep their arrival order, old ones before new ones.
    events = sorted([*kept, *new], key=lambda e: e.event_ms)
    latest: dict[str, EngagedEvent] = {}
    for event in events:
        latest.pop(event.item_id, None)
        latest[event.item_id] = event
    last = list(latest.values())[-n_items:] if n_items > 0 else []
    cutoff = at_ms - window // timedelta(milliseconds=1)
    in_window = [e for e in events if e.event_ms > cutoff][-MAX_KEPT_EVENTS:]
    counts = [0.0] * len(GENRES)
    for event in in_window:
        vector = genres.get(event.item_id)
        if vector is None:
            continue
        for g, value in enumerate(vector[: len(GENRES)]):
            counts[g] += float(value or 0.0)
    # The last items' own events that fell out of the window, then the window's events, oldest first.
    kept_now = sorted([e for e in last if e.event_ms <= cutoff] + in_window, key=lambda e: e.event_ms)
    return SessionRow(tuple(e.item_id for e in last), tuple(counts), tuple(kept_now))


def session_at(events: Iterable[EngagedEvent], at_ms: int, genres: GenreLookup) -> SessionRow:
    """The session at `at_ms` recomputed from every engaged event seen by then (no previous row)."""
    return advance((), events, at_ms, genres)


def engaged(event_type: str) -> bool:
    return event_type in ENGAGED_EVENT_TYPES


def to_record(user_id: str, row: SessionRow, at: datetime) -> dict[str, Any]:
    """The row as the push source takes it (one record of the push frame)."""
    return {
        "user_id": user_id,
        FEATURE_TS: at,
        CREATED_TS: at,
        LAST_ITEMS: list(row.last_item_ids),
        CATEGORY_COUNTS: list(row.category_counts),
        KEPT_ITEMS: [e.item_id for e in row.kept],
        KEPT_EVENT_MS: [e.event_ms for e in row.kept],
    }


def kept_from_record(record: Mapping[str, Any]) -> tuple[EngagedEvent, ...]:
    """The kept events of a stored row (empty when the row is missing or expired)."""
    items = record.get(KEPT_ITEMS)
    stamps = record.get(KEPT_EVENT_MS)
    if items is None or stamps is None:
        return ()
    if len(items) != len(stamps):
        raise ValueError(f"session row keeps {len(items)} items but {len(stamps)} event times")
    return tuple(EngagedEvent(str(i), int(t)) for i, t in zip(items, stamps, strict=True))


def session_features_schema() -> pa.Schema:
    """Arrow layout of ``offline/session_features.parquet`` (the push source's batch source)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("user_id", pa.string()),
            (FEATURE_TS, ts),
            (CREATED_TS, ts),
            (LAST_ITEMS, pa.list_(pa.string())),
            (CATEGORY_COUNTS, pa.list_(pa.float32())),
            (KEPT_ITEMS, pa.list_(pa.string())),
            (KEPT_EVENT_MS, pa.list_(pa.int64())),
        ]
    )


def session_feature_table(
    events: pd.DataFrame,
    genres: GenreLookup | Callable[[list[str]], GenreLookup],
    time_column: str = "server_ts",
) -> pd.DataFrame:
    """The push source's offline table: the row each push would have written, replayed from a log.

    Args:
        events: ``user_id``, ``item_id``, ``event_type``, ``event_ts`` and `time_column` (aware times).
        genres: Genre vector per item, or a function returning them for a list of item ids.
        time_column: When serving saw each event; events seen together form one push.

    Returns:
        One row per (user, time a batch of engaged events arrived), columns in the order of
        `to_record`, sorted by user and time.
    """
    import pandas as pd

    missing = {"user_id", "item_id", "event_type", "event_ts", time_column} - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    frame = events[events["event_type"].isin(ENGAGED_EVENT_TYPES)]
    columns = list(to_record("", SessionRow((), (), ()), datetime.now(UTC)))
    if frame.empty:
        return pd.DataFrame({name: [] for name in columns}).astype(
            {"user_id": "string", FEATURE_TS: "datetime64[us, UTC]", CREATED_TS: "datetime64[us, UTC]"}
        )
    seen = pd.to_datetime(frame[time_column], utc=True)
    frame = frame.assign(
        _seen=seen,
        _event_ms=pd.to_datetime(frame["event_ts"], utc=True).dt.as_unit("ms").astype("int64"),
        _at_ms=seen.dt.as_unit("ms").astype("int64"),
        _order=range(len(frame)),
    ).sort_values(["user_id", "_seen", "_order"], kind="stable")
    lookup = genres(sorted(set(frame["item_id"]))) if callable(genres) else genres
    records: list[dict[str, Any]] = []
    for user_id, by_user in frame.groupby("user_id", sort=True):
        kept: tuple[EngagedEvent, ...] = ()
        for (at, at_ms), batch in by_user.groupby(["_seen", "_at_ms"], sort=True):
            new = [EngagedEvent(i, int(t)) for i, t in zip(batch["item_id"], batch["_event_ms"], strict=True)]
            row = advance(kept, new, int(at_ms), lookup)
            kept = row.kept
            records.append(to_record(str(user_id), row, pd.Timestamp(at).to_pydatetime()))
    table = pd.DataFrame.from_records(records, columns=columns)
    for name in (FEATURE_TS, CREATED_TS):
        table[name] = pd.to_datetime(table[name], utc=True).astype("datetime64[us, UTC]")
    return table


def write_session_table(table: pd.DataFrame, path: Path) -> None:
    """Write `session_feature_table`'s frame in the layout of `session_features_schema`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(table, schema=session_features_schema(), preserve_index=False), path)
