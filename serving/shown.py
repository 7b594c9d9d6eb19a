"""The no-repeat window shared by every ingress replica: each user's last answers, kept in Redis.

``serving.reranking.RecentlyShown`` keeps a replica's own window; Ray Serve sends a user's requests to
whichever replica has room, so with more than one replica a user could be shown again what another
replica showed a moment ago. `SharedShown` keeps the window in the production online store's Redis: one
list per user, newest answer first, trimmed to the window and expiring `ttl_s` after the last answer.
One round trip per read and per write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol


class ShownWindow(Protocol):
    """The items of a user's last few answers, shared by the replicas."""

    def record(self, user_id: str, item_ids: Sequence[str]) -> None: ...

    def items(self, user_id: str) -> frozenset[str]: ...


class SharedShown:
    """The items of each user's last `n_responses` answers in Redis.

    Args:
        client: A redis-py client.
        prefix: Key prefix (the Feast project's, so two projects on one Redis stay apart).
        n_responses: Answers per user kept (the re-ranking config's `no_repeat_responses`).
        ttl_s: A user's window is forgotten this long after their last answer.
    """

    def __init__(self, client: Any, prefix: str, n_responses: int, ttl_s: float) -> None:
        if n_responses < 1 or ttl_s <= 0:
            raise ValueError("n_responses and ttl_s must be positive")
        self._client = client
        self._prefix = prefix
        self.n_responses = n_responses
        self._ttl_ms = max(1, round(ttl_s * 1000))

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}:shown:{user_id}"

    def record(self, user_id: str, item_ids: Sequence[str]) -> None:
        """Add one answer; the oldest beyond the window goes (one MULTI/EXEC: never half-applied)."""
        key = self._key(user_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(list(item_ids)))
        pipe.ltrim(key, 0, self.n_responses - 1)
        pipe.pexpire(key, self._ttl_ms)
        pipe.execute()

    def items(self, user_id: str) -> frozenset[str]:
        """Every item of the user's last `n_responses` answers (empty for a user without any)."""
        answers = self._client.lrange(self._key(user_id), 0, self.n_responses - 1)
        return frozenset(item for answer in answers for item in json.loads(answer))
