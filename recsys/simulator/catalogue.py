"""Simulated items: genres (``recsys.vocab.GENRES``), text, durations, quality, popularity, publish times.

Items are numbered in order of publication, so "the items published by time t" is always a prefix of
the catalogue; the sampling pools below rely on that to draw only items that exist at a moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.features.content import item_text
from recsys.ingest.schema import ITEMS_SCHEMA
from recsys.simulator.population import US_PER_DAY, to_us
from recsys.simulator.settings import SimulatorConfig
from recsys.vocab import GENRES

_ADJECTIVES = ("Silent", "Golden", "Last", "Hidden", "Broken", "Bright", "Lost", "Wild", "Cold", "Secret")
_NOUNS = ("River", "Empire", "Garden", "Signal", "Harbour", "Machine", "Summer", "Road", "Island", "Voice")
# Drama and Comedy dominate real catalogues; Film-Noir and IMAX are rare.
_GENRE_WEIGHT = np.array([6, 4, 2, 2, 9, 4, 2, 10, 2, 0.5, 3, 0.5, 1, 2, 5, 3, 5, 1, 0.5])
# Keys of different pools never collide: publish times (microseconds) stay far below 2**56.
_POOL_STRIDE = np.int64(1) << np.int64(56)


@dataclass(frozen=True)
class Catalogue:
    """All items of a run (ids ``i<index>``, index = publication order) and the pools to draw them from."""

    genres: np.ndarray  # (n_items, n_genres) bool, multi-hot
    vector: np.ndarray  # (n_items, n_genres) float32, multi-hot / sqrt(n genres)
    quality: np.ndarray  # (n_items,) float32, added to every user's affinity
    duration_s: np.ndarray  # (n_items,) float64
    published_us: np.ndarray  # (n_items,) int64, non-decreasing
    pool_key: np.ndarray  # pool index * stride + published_us, pools = genres then "all"
    pool_item: np.ndarray  # item index per pool entry
    pool_cum: np.ndarray  # cumulative popularity, one longer than pool_item, starts at 0
    pool_start: np.ndarray  # (n_genres + 1,) first entry of each pool

    def __len__(self) -> int:
        return len(self.quality)

    @property
    def all_pool(self) -> int:
        return int(self.genres.shape[1])

    def draw(self, pool: np.ndarray, at_us: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One item per row from ``pool`` among items published by ``at_us``, by popularity; -1 if none.

        Args:
            pool: pool index per row (a genre index, or ``all_pool``).
            at_us: the moment of each draw.
            u: uniform numbers in [0, 1), one per row.
        """
        base = pool.astype(np.int64) * _POOL_STRIDE
        start = self.pool_start[pool]
        stop = np.searchsorted(self.pool_key, base + at_us, side="right")
        low, high = self.pool_cum[start], self.pool_cum[stop]
        picked = np.searchsorted(self.pool_cum, low + u * (high - low), side="right") - 1
        picked = np.clip(picked, start, np.maximum(stop - 1, start))
        return np.where(stop > start, self.pool_item[np.minimum(picked, len(self.pool_item) - 1)], -1)


def _publish_times(config: SimulatorConfig, rng: np.random.Generator) -> np.ndarray:
    start, span = to_us(config.start), config.days * US_PER_DAY
    backlog = rng.random(config.n_items) < config.backlog_fraction
    backlog[0] = True  # something exists before the first session
    times = np.where(
        backlog,
        start - rng.integers(1, config.backlog_days * US_PER_DAY + 1, size=config.n_items),
        start + rng.integers(0, span, size=config.n_items),
    )
    drift = config.drift
    if drift is not None and drift.new_items:
        wave = to_us(drift.at) + rng.integers(0, int(drift.wave_days * US_PER_DAY), size=drift.new_items)
        times = np.concatenate([times, wave])
    return np.sort(times).astype(np.int64)


def make_catalogue(config: SimulatorConfig) -> Catalogue:
    """The whole catalogue of a run, drift wave included (it is small next to the event log)."""
    rng = np.random.default_rng([config.seed, 3])
    published = _publish_times(config, rng)
    n, n_genres = len(published), len(GENRES)
    weights = _GENRE_WEIGHT / _GENRE_WEIGHT.sum()
    drawn = rng.choice(n_genres, size=(n, 3), p=weights)
    keep = np.arange(3)[None, :] < rng.integers(1, 4, size=n)[:, None]
    genres = np.zeros((n, n_genres), dtype=bool)
    rows = np.broadcast_to(np.arange(n)[:, None], drawn.shape)
    genres[rows[keep], drawn[keep]] = True
    vector = (genres / np.sqrt(genres.sum(axis=1, keepdims=True))).astype(np.float32)
    quality = rng.normal(0.0, 0.5, size=n).astype(np.float32)
    popularity = (rng.permutation(n) + 1.0) ** -config.popularity_exponent * np.exp(quality)
    duration = np.clip(rng.lognormal(np.log(600.0), 0.8, size=n), 30.0, 4 * 3600.0).round()

    members = [np.flatnonzero(genres[:, g]) for g in range(n_genres)] + [np.arange(n)]
    pool_item = np.concatenate(members)
    pool_id = np.repeat(np.arange(n_genres + 1, dtype=np.int64), [len(m) for m in members])
    pool_key = pool_id * _POOL_STRIDE + published[pool_item]
    pool_cum = np.concatenate([[0.0], np.cumsum(popularity[pool_item])])
    pool_start = np.concatenate([[0], np.cumsum([len(m) for m in members])[:-1]]).astype(np.int64)
    return Catalogue(genres, vector, quality, duration, published, pool_key, pool_item, pool_cum, pool_start)


def item_ids(n: int) -> pa.Array:
    """``i0 .. i<n-1>`` as an Arrow string array."""
    return _prefixed("i", np.arange(n))


def _prefixed(prefix: str, values: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(prefix, pa.array(values).cast(pa.string()), "")


def items_table(config: SimulatorConfig, catalogue: Catalogue) -> pa.Table:
    """The ``items`` table (``ITEMS_SCHEMA``): a generated title, genres, text, duration, publish time."""
    rng = np.random.default_rng([config.seed, 4])
    n = len(catalogue)
    adjective = rng.integers(0, len(_ADJECTIVES), size=n)
    noun = rng.integers(0, len(_NOUNS), size=n)
    pairs = enumerate(zip(adjective, noun, strict=True))
    titles = [f"The {_ADJECTIVES[a]} {_NOUNS[b]} {i}" for i, (a, b) in pairs]
    categories = [[GENRES[g] for g in np.flatnonzero(row)] for row in catalogue.genres]
    text = [item_text(t, c, []) for t, c in zip(titles, categories, strict=True)]
    columns = {
        "item_id": item_ids(n),
        "title": pa.array(titles, pa.string()),
        "text": pa.array(text, pa.string()),
        "categories": pa.array(categories, pa.list_(pa.string())),
        "duration_s": pa.array(catalogue.duration_s, pa.float64()),
        "published_at": pa.array(catalogue.published_us, ITEMS_SCHEMA.field("published_at").type),
    }
    return pa.table(columns, schema=ITEMS_SCHEMA)
