"""Following the registry's `champion` aliases without a restart, so `recsys rollback` reaches the service.

The ingress checks the aliases every `serve.champion_poll_s` seconds (resolving an alias is one registry
query, never done per request) and, when one names another version than the one serving, runs the same
reload as `POST /admin/reload`: load and warm the new version, then switch in one assignment.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)


def moved_stages(serving: Mapping[str, str | None], registered: Mapping[str, str | None]) -> list[str]:
    """Stages whose alias now names another version than the one serving, in `registered`'s order.

    An alias that resolves to nothing (deleted, or the registry unreachable) is not a move: the service
    keeps what it has rather than losing its model.

    >>> moved_stages({"retrieval": "3", "ranking": "5"}, {"retrieval": "3", "ranking": "4"})
    ['ranking']
    >>> moved_stages({"retrieval": "3"}, {"retrieval": None})
    []
    """
    return [
        stage
        for stage, version in registered.items()
        if version is not None and str(version) != str(serving.get(stage))
    ]


class ChampionPoller:
    """Polls the aliases and reloads when one moved.

    Args:
        resolve: The versions the aliases name now, per stage (blocking; run in a thread).
        serving: The versions serving now, per stage.
        reload: Loads what the aliases name and switches to it.
        every_s: Seconds between checks.
    """

    def __init__(
        self,
        resolve: Callable[[], Mapping[str, str | None]],
        serving: Callable[[], Awaitable[Mapping[str, str | None]]],
        reload: Callable[[], Awaitable[Any]],
        every_s: float,
    ) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self._resolve = resolve
        self._serving = serving
        self._reload = reload
        self._every_s = every_s
        self.reloads = 0

    async def check(self) -> list[str]:
        """One check: the stages that moved (and were reloaded)."""
        registered = await asyncio.to_thread(self._resolve)
        moved = moved_stages(await self._serving(), registered)
        if moved:
            logger.info("champion moved for %s: reloading", ", ".join(moved))
            await self._reload()
            self.reloads += 1
        return moved

    async def run(self) -> None:
        """Check forever; a failed check is logged and retried at the next period."""
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except RuntimeError as err:
                if sys.is_finalizing() or "shutdown" in str(err):
                    return  # the replica is going away; nothing left to reload
                logger.exception("champion check failed; serving the loaded versions")
            except Exception:
                logger.exception("champion check failed; serving the loaded versions")
