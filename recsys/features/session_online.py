"""Session rows in the Feast online store: pushed when events arrive, read by every ingress replica.

`OnlineSessions.record` reads the users' current rows, extends them with the new engaged events by
``recsys.features.session_features.advance`` and pushes the new rows (``store.push`` to the online store);
`OnlineSessions.read` reads them back through the `session_v1` feature service with the fast reader
(``recsys.features.online_read``), which, like ``online_features``, drops rows older than the view's
1-hour TTL. Replicas share nothing but the online store, so each sees the others' events.

Two replicas extending the same user's row within the same few milliseconds can each miss the other's
events (read, then write); the event log keeps every event, and a backfill through
``session_feature_table`` rebuilds the rows from it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from recsys.features.online_read import OnlineReader
from recsys.features.session_features import (
    CATEGORY_COUNTS,
    LAST_ITEMS,
    SESSION_PUSH_SOURCE,
    EngagedEvent,
    GenreLookup,
    SessionRow,
    advance,
    engaged,
    kept_from_record,
    to_ms,
    to_record,
)

if TYPE_CHECKING:
    import feast
    import pandas as pd

SESSION_SERVICE = "session_v1"
GENRE_COLUMN = "item_genre_vector"

# Online feature reads: (feature service, entity rows) -> one frame row per entity row, in order.
FeatureReads = Callable[[str, list[dict[str, Any]]], "pd.DataFrame"]


class UserEvent(Protocol):
    """What the session needs of an event (``serving.events.Event`` has these and more)."""

    @property
    def user_id(self) -> str: ...

    @property
    def item_id(self) -> str: ...

    @property
    def event_type(self) -> str: ...

    @property
    def event_ts(self) -> datetime: ...


def item_genre_lookup(read: FeatureReads, service: str) -> Callable[[list[str]], GenreLookup]:
    """Genre vectors of items from the online item features of `service` (None where unknown).

    >>> import pandas as pd
    >>> read = lambda service, rows: pd.DataFrame({GENRE_COLUMN: [[1.0, 0.0] if r["item_id"] == "a" else None
    ...                                                        for r in rows]})
    >>> item_genre_lookup(read, "two_tower_v1")(["a", "b"])
    {'a': [1.0, 0.0], 'b': None}
    """

    def lookup(item_ids: list[str]) -> GenreLookup:
        if not item_ids:
            return {}
        frame = read(service, [{"item_id": item_id} for item_id in item_ids])
        if GENRE_COLUMN not in frame.columns:
            raise ValueError(f"feature service {service!r} has no {GENRE_COLUMN!r}")
        found: dict[str, list[float] | None] = {}
        for item_id, vector in zip(item_ids, frame[GENRE_COLUMN], strict=True):
            usable = isinstance(vector, list | tuple | np.ndarray) and len(vector) > 0
            found[item_id] = [float(v) for v in vector] if usable else None
        return found

    return lookup


class OnlineSessions:
    """The session rows of the `session_recent` feature view, shared through the online store.

    Args:
        store: From ``recsys.features.store.build_store``, with the definitions applied.
        item_genres: Genre vectors of a list of items (e.g. `item_genre_lookup`).
        clock: The processing time a pushed row carries.
        read: Online reads of the session rows (default: an ``OnlineReader`` of `store`).
    """

    def __init__(
        self,
        store: feast.FeatureStore,
        item_genres: Callable[[list[str]], GenreLookup],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        read: FeatureReads | None = None,
    ) -> None:
        self._store = store
        self._read = read if read is not None else OnlineReader(store, cached_keys=())
        self._genres = item_genres
        self._clock = clock
        # One read-extend-push at a time in this process: two event batches of one user must not race.
        self._lock = threading.Lock()

    def read(self, user_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each user's live row as a dict of features; None for a user without one (or an expired one)."""
        if not user_ids:
            return []
        frame = self._read(SESSION_SERVICE, [{"user_id": u} for u in user_ids])
        rows: list[dict[str, Any] | None] = []
        for record in frame.to_dict("records"):
            live = record.get(LAST_ITEMS) is not None
            rows.append(record if live else None)
        return rows

    def items(self, user_id: str) -> list[str]:
        """The user's last engaged items, oldest first; empty without a live session."""
        # The one column, not `read`'s records: this runs on every recommendation request.
        frame = self._read(SESSION_SERVICE, [{"user_id": user_id}])
        last = frame[LAST_ITEMS].iloc[0] if LAST_ITEMS in frame.columns and len(frame) else None
        return [str(item) for item in last] if last is not None else []

    def category_counts(self, user_id: str) -> list[float] | None:
        """Engaged events per genre over the 10 minutes before the last push; None without a session."""
        row = self.read([user_id])[0]
        return [float(c) for c in row[CATEGORY_COUNTS]] if row is not None else None

    def record(self, events: Iterable[UserEvent]) -> dict[str, SessionRow]:
        """Extend the sessions of the users with engaged events and push their new rows.

        Returns:
            The pushed row per user (users without engaged events get none).
        """
        import pandas as pd
        from feast.data_source import PushMode

        new: dict[str, list[EngagedEvent]] = {}
        for event in events:
            if engaged(event.event_type):
                new.setdefault(event.user_id, []).append(EngagedEvent(event.item_id, to_ms(event.event_ts)))
        if not new:
            return {}
        with self._lock:
            at = self._clock()
            users = list(new)
            kept = {u: kept_from_record(row or {}) for u, row in zip(users, self.read(users), strict=True)}
            wanted = sorted({e.item_id for u in users for e in (*kept[u], *new[u])})
            genres = self._genres(wanted)
            rows = {u: advance(kept[u], new[u], to_ms(at), genres) for u in users}
            frame = pd.DataFrame([to_record(u, row, at) for u, row in rows.items()])
            self._store.push(SESSION_PUSH_SOURCE, frame, to=PushMode.ONLINE)
        return rows
