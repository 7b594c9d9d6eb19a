"""The simulated platform as a live counterpart: ask what users do with the items a model recommends.

>>> from datetime import datetime, UTC
>>> world = World(SimulatorConfig(n_users=100, n_items=50))
>>> events = world.respond(["u1", "u2"], [["i3", "i4"], ["i5"]], datetime(2024, 1, 10, tzinfo=UTC), seed=0)
>>> int((events["event_type"] == "impression").sum())
3
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from recsys.ingest.schema import to_pandas
from recsys.simulator.behaviour import Slates, behave, relevance
from recsys.simulator.catalogue import Catalogue, item_ids, make_catalogue
from recsys.simulator.population import cached_population, taste_shift, to_us
from recsys.simulator.settings import SimulatorConfig
from recsys.simulator.writer import events_table
from recsys.vocab import DEVICE_TYPES, SURFACES

_SESSION_US = 30 * 60 * 1_000_000


class UnknownIdError(ValueError):
    """A user or item id the simulated platform does not have."""


def _indexes(ids: Sequence[str], prefix: str, limit: int, what: str) -> np.ndarray:
    out = np.empty(len(ids), dtype=np.int64)
    for n, value in enumerate(ids):
        digits = value[len(prefix) :] if value.startswith(prefix) else ""
        if not digits.isdigit() or int(digits) >= limit:
            raise UnknownIdError(f"unknown {what} id {value!r}: expected {prefix}0 .. {prefix}{limit - 1}")
        out[n] = int(digits)
    return out


class World:
    """The population and catalogue of a configuration, answering served slates with events."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.catalogue: Catalogue = make_catalogue(config)
        self._item_ids = item_ids(len(self.catalogue))
        self._shift = taste_shift(config)

    def taste(self, users: np.ndarray) -> np.ndarray:
        """(n, n_genres) taste vectors of user indexes, rebuilt from their chunks."""
        size = self.config.chunk_users
        out = np.empty((len(users), self.catalogue.vector.shape[1]), dtype=np.float32)
        for chunk in np.unique(users // size):
            rows = np.flatnonzero(users // size == chunk)
            population = cached_population(self.config, int(chunk))
            out[rows] = population.taste[users[rows] - population.first]
        return out

    def respond(
        self,
        user_ids: Sequence[str],
        recommended_item_ids: Sequence[Sequence[str]],
        at: datetime | Sequence[datetime],
        surface: str = "homepage",
        device: str = "desktop",
        seed: int | None = None,
    ) -> pd.DataFrame:
        """The events (impressions first) the users would produce for the slates shown to them at ``at``.

        Args:
            user_ids: one user per slate.
            recommended_item_ids: the slate of each user, best first (position 1).
            at: when each slate is shown (one moment for all, or one per slate).
            surface: where the slates are shown (``recsys.vocab.SURFACES``).
            device: the users' device (``recsys.vocab.DEVICE_TYPES``).
            seed: seeds the draws; None draws fresh randomness.

        Returns:
            events in the pandas form of ``EVENTS_SCHEMA``; ``request_id`` ties each slate's events.
        """
        if len(user_ids) != len(recommended_item_ids):
            raise ValueError(f"{len(user_ids)} users but {len(recommended_item_ids)} slates")
        if surface not in SURFACES or device not in DEVICE_TYPES:
            raise ValueError(f"surface must be one of {SURFACES} and device one of {DEVICE_TYPES}")
        users = _indexes(user_ids, "u", self.config.n_users, "user")
        sizes = np.array([len(slate) for slate in recommended_item_ids], dtype=np.int64)
        flat = [item for slate in recommended_item_ids for item in slate]
        item = _indexes(flat, "i", len(self.catalogue), "item")
        moments = [at] * len(user_ids) if isinstance(at, datetime) else list(at)
        if len(moments) != len(user_ids):
            raise ValueError(f"{len(user_ids)} users but {len(moments)} moments")
        slate = np.repeat(np.arange(len(user_ids)), sizes)
        at_us = np.array([to_us(m) for m in moments], dtype=np.int64)[slate]
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        rng = np.random.default_rng(seed)
        request = rng.integers(0, 1 << 62, len(user_ids))
        slates = Slates(
            user=users[slate],
            item=item,
            position=(np.arange(len(item)) - np.repeat(starts, sizes) + 1).astype(np.int32),
            at_us=at_us,
            session=at_us // _SESSION_US,
            request=request[slate],
            device=np.full(len(item), DEVICE_TYPES.index(device), dtype=np.int8),
            surface=np.full(len(item), SURFACES.index(surface), dtype=np.int8),
            late_us=np.zeros(len(item), dtype=np.int64),
        )
        rel = relevance(self.config, self.taste(slates.user), self.catalogue, item, at_us, self._shift)
        block = behave(self.config, slates, rel, self.catalogue, rng)
        keys = (np.uint64(1) << np.uint64(63)) | rng.integers(0, 1 << 62, len(block)).astype(np.uint64)
        return to_pandas(events_table(block, self._item_ids, keys))

    def relevance(self, user_id: str, item_ids_: Sequence[str], at: datetime) -> np.ndarray:
        """The latent click probability (before position bias) of each item for one user at ``at``."""
        user = _indexes([user_id], "u", self.config.n_users, "user")
        item = _indexes(item_ids_, "i", len(self.catalogue), "item")
        at_us = np.full(len(item), to_us(at), dtype=np.int64)
        taste = np.repeat(self.taste(user), len(item), axis=0)
        return relevance(self.config, taste, self.catalogue, item, at_us, self._shift)
