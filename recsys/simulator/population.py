"""Simulated users: a latent taste vector over genres, a region, a signup time, an activity level, bots.

Users are generated in chunks of consecutive indexes, each from its own seeded generator, so any chunk
can be rebuilt on its own (the responder does this to answer for a few users of a million).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np

from recsys.simulator.settings import SimulatorConfig
from recsys.vocab import GENRES

REGIONS: tuple[str, ...] = ("eu-west", "eu-north", "us-east", "us-west", "latam", "apac", "africa")
US_PER_DAY = 86_400_000_000
# Share of users who signed up before the simulated period; the rest join during it.
EXISTING_USERS = 0.7


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of a timezone-aware datetime."""
    return int(moment.timestamp() * 1_000_000)


@dataclass(frozen=True)
class Population:
    """Users ``first .. first + len - 1`` (ids ``u<index>``) with their latent attributes."""

    first: int
    taste: np.ndarray  # (n_users, n_genres) float32
    region: np.ndarray  # (n_users,) int8 index into REGIONS
    signup_us: np.ndarray  # (n_users,) int64
    activity: np.ndarray  # (n_users,) float64, mean 1
    is_bot: np.ndarray  # (n_users,) bool

    def __len__(self) -> int:
        return len(self.region)


def region_tastes(config: SimulatorConfig) -> np.ndarray:
    """Mean taste of each region, the prior a cold-start model can learn from ``users.region``."""
    rng = np.random.default_rng([config.seed, 0])
    return rng.normal(0.0, 0.8, size=(len(REGIONS), len(GENRES))).astype(np.float32)


def taste_shift(config: SimulatorConfig) -> np.ndarray:
    """The drift direction in genre space (unit length), scaled by ``drift.taste_shift``."""
    if config.drift is None:
        return np.zeros(len(GENRES), dtype=np.float32)
    direction = np.random.default_rng([config.seed, 2]).normal(size=len(GENRES))
    return (direction / np.linalg.norm(direction) * config.drift.taste_shift).astype(np.float32)


def make_population(config: SimulatorConfig, chunk: int) -> Population:
    """Users of chunk ``chunk`` (indexes ``chunk * chunk_users`` onwards), reproducible from the seed."""
    first = chunk * config.chunk_users
    n = min(config.chunk_users, config.n_users - first)
    if n <= 0:
        raise ValueError(f"chunk {chunk} is past the last of {config.n_users} users")
    rng = np.random.default_rng([config.seed, 1, chunk])
    region = rng.integers(0, len(REGIONS), size=n).astype(np.int8)
    taste = region_tastes(config)[region] + rng.normal(0.0, 1.0, size=(n, len(GENRES))).astype(np.float32)
    start = to_us(config.start)
    span = config.days * US_PER_DAY
    existing = rng.random(n) < EXISTING_USERS
    signup = np.where(
        existing,
        start - rng.integers(1, 2 * 365 * US_PER_DAY, size=n),
        start + rng.integers(0, span, size=n),
    ).astype(np.int64)
    sigma = config.activity_sigma
    activity = rng.lognormal(-(sigma**2) / 2, sigma, size=n)
    is_bot = rng.random(n) < config.bot_fraction
    return Population(first, taste, region, signup, activity, is_bot)


@lru_cache(maxsize=8)
def cached_population(config: SimulatorConfig, chunk: int) -> Population:
    """:func:`make_population`, kept for repeated questions about the same users."""
    return make_population(config, chunk)
