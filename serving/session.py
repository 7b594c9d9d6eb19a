"""Session state: what a user engaged with in the last minutes, fed back into the next recommendation.

Batch user features are hours old; a user who has just watched three horror films should get more horror
now. The ingress records engaged items from `POST /events` (and `session_item_ids` of a request); the
retrieval stage reads those items' genre vectors and blends their profile into the user's genre affinity
before the user tower and the ranker see it, and re-ranking adds a bonus for items matching the profile.

Every replica reads and writes the session through the online store (`SharedSessions`, implemented by
``recsys.features.session_online.OnlineSessions``: the `session_recent` feature view, 1-hour TTL), so a
user's events reach every replica. `SessionStore`, an LRU over users inside one ingress replica, holds
the same items as a fallback for when the online store does not answer; replicas do not share it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

# One definition of "engaged" for the pushed session rows and this replica's fallback store.
from recsys.features.session_features import ENGAGED_EVENT_TYPES as ENGAGED_EVENT_TYPES


class SharedSessions(Protocol):
    """Sessions every ingress replica shares (through the online store)."""

    def items(self, user_id: str) -> list[str]:
        """The user's last engaged items, oldest first; empty without a live session."""
        ...

    def record(self, events: Iterable[Any]) -> Any:
        """Add events (with `user_id`, `item_id`, `event_type`, `event_ts`); only engaged ones count."""
        ...


class SessionStore:
    """The last `max_items` engaged items per user, each forgotten `ttl_s` seconds after it happened.

    >>> now = [0.0]
    >>> store = SessionStore(max_items=2, ttl_s=60, max_users=10, clock=lambda: now[0])
    >>> store.record("u", ["a", "b", "c"])
    >>> store.items("u")
    ['b', 'c']
    >>> now[0] = 61.0
    >>> store.items("u")
    []
    """

    def __init__(
        self,
        max_items: int = 10,
        ttl_s: float = 3600.0,
        max_users: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items < 1 or ttl_s <= 0 or max_users < 1:
            raise ValueError("max_items, ttl_s and max_users must be positive")
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.max_users = max_users
        self._clock = clock
        self._users: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()

    def record(self, user_id: str, item_ids: Iterable[str]) -> None:
        """Add engaged items, oldest first; an item seen again moves to the most recent place."""
        now = self._clock()
        items = self._users.pop(user_id, deque())
        for item_id in item_ids:
            for entry in [e for e in items if e[1] == item_id]:
                items.remove(entry)
            items.append((now, item_id))
            while len(items) > self.max_items:
                items.popleft()
        self._users[user_id] = items
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    def items(self, user_id: str) -> list[str]:
        """The user's live session items, oldest first."""
        items = self._users.get(user_id)
        if not items:
            return []
        cutoff = self._clock() - self.ttl_s
        while items and items[0][0] < cutoff:
            items.popleft()
        return [item_id for _, item_id in items]


def session_profile(genre_vectors: np.ndarray) -> np.ndarray | None:
    """The session's genre shares: the (n_items, n_genres) vectors summed and normalised to sum 1.

    None when the session holds no genre information (no items, or items without genres).

    >>> session_profile(np.array([[1.0, 0.0], [1.0, 1.0]])).tolist()
    [0.6666666666666666, 0.3333333333333333]
    """
    if len(genre_vectors) == 0:
        return None
    total = np.nan_to_num(np.asarray(genre_vectors, dtype=np.float64)).sum(axis=0)
    mass = total.sum()
    return total / mass if mass > 0 else None


def blend_affinity(
    affinity: Sequence[float] | np.ndarray | None, profile: np.ndarray, weight: float
) -> np.ndarray:
    """`(1 - weight) * affinity + weight * profile`, both as shares; a missing affinity is the profile.

    >>> blend_affinity([1.0, 0.0], np.array([0.0, 1.0]), 0.5).tolist()
    [0.5, 0.5]
    >>> blend_affinity(None, np.array([0.0, 1.0]), 0.5).tolist()
    [0.0, 1.0]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    base = None if affinity is None else np.nan_to_num(np.asarray(affinity, dtype=np.float64)).ravel()
    if base is None or base.shape != profile.shape or base.sum() <= 0:
        return np.asarray(profile, dtype=np.float64)
    blended: np.ndarray = (1.0 - weight) * base / base.sum() + weight * profile
    return blended


def session_match(categories: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """(n,) how much each candidate's genres match the session profile: the profile share of its genres.

    >>> session_match(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), np.array([0.75, 0.25])).tolist()
    [0.75, 0.25, 0.0]
    """
    cats = np.nan_to_num(np.asarray(categories, dtype=np.float64))
    counts = cats.sum(axis=1)
    dot = cats @ profile
    match: np.ndarray = np.divide(dot, counts, out=np.zeros_like(dot), where=counts > 0)
    return match
