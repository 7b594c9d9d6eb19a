"""The prediction cache: a user's answer for the same surface, device and context, kept for a few seconds.

Most repeated requests are page reloads and back-navigation; answering them from memory costs
microseconds instead of a trip through retrieval and ranking. An event from the user drops their entries
(`invalidate_user`), so what they just did is reflected at once. One cache per ingress replica.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class PredictionCache(Generic[V]):
    """A TTL + LRU cache keyed by (user, rest of the key); counts hits and misses.

    >>> now = [0.0]
    >>> cache = PredictionCache[str](ttl_s=30, max_entries=100, clock=lambda: now[0])
    >>> cache.put("u", ("homepage",), "answer")
    >>> cache.get("u", ("homepage",)), cache.get("u", ("search",))
    ('answer', None)
    >>> now[0] = 31.0
    >>> cache.get("u", ("homepage",)), cache.hits, cache.misses
    (None, 1, 2)
    """

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("ttl_s and max_entries must be positive")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, Hashable], tuple[float, V]] = OrderedDict()
        self._keys_by_user: dict[str, set[Hashable]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str, context: Hashable) -> V | None:
        """The cached answer, or None (a miss) when absent or older than `ttl_s`."""
        key = (user_id, context)
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] > self.ttl_s:
            if entry is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, user_id: str, context: Hashable, value: V) -> None:
        key = (user_id, context)
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        self._keys_by_user.setdefault(user_id, set()).add(context)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def invalidate_user(self, user_id: str) -> int:
        """Drop every entry of the user; returns how many there were."""
        contexts = self._keys_by_user.pop(user_id, set())
        for context in contexts:
            self._entries.pop((user_id, context), None)
        return len(contexts)

    def _drop(self, key: tuple[str, Hashable]) -> None:
        self._entries.pop(key, None)
        contexts = self._keys_by_user.get(key[0])
        if contexts is not None:
            contexts.discard(key[1])
            if not contexts:
                del self._keys_by_user[key[0]]
