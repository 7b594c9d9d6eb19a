"""The simulated platform as the live side of an experiment: show slates, get back what users did.

`Platform` wraps `recsys.simulator.world.World` for experiments: a fixed set of recommendable items
(published before the exploration log starts), the item metadata a model may read (genres, as the
``items`` table publishes them), and `show`, which sends slates through `World.respond` and folds the
events back into one row per slate: what a per-user analysis needs. Policies never see the simulator's
latent tastes or item quality; they learn from logs produced here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from recsys.simulator.population import to_us
from recsys.simulator.settings import SimulatorConfig
from recsys.simulator.world import World


@dataclass(frozen=True)
class SlateOutcomes:
    """What happened to each shown slate, one row per slate (same order as shown).

    Attributes:
        user: User index of each slate.
        items: (n_slates, k) item columns (indexes into `Platform.items`) in shown order.
        clicked: (n_slates, k) bool: the item at that position was clicked at least once.
        watch_s: Seconds watched over the slate's views.
        views: Views started from the slate.
        skips: Views abandoned early (completion below the simulator's skip threshold).
    """

    user: np.ndarray
    items: np.ndarray
    clicked: np.ndarray
    watch_s: np.ndarray
    views: np.ndarray
    skips: np.ndarray

    @property
    def clicks(self) -> np.ndarray:
        """Distinct items clicked per slate (double clicks count once)."""
        return np.asarray(self.clicked.sum(axis=1))

    @property
    def any_click(self) -> np.ndarray:
        """Whether the slate drew at least one click: the per-user Bernoulli metric of the A/B test."""
        return np.asarray(self.clicked.any(axis=1))

    def take(self, rows: np.ndarray) -> SlateOutcomes:
        """The outcomes of a subset of slates (an arm, a time window)."""
        return SlateOutcomes(
            self.user[rows],
            self.items[rows],
            self.clicked[rows],
            self.watch_s[rows],
            self.views[rows],
            self.skips[rows],
        )


class Platform:
    """A simulated platform prepared for experiments.

    Args:
        config: The simulator configuration (its ``n_users`` is the experiment population).
        log_days: Length of the exploration period before ``epoch``; items published after the period
            starts are not recommendable, so every policy ranks the same catalogue.
    """

    def __init__(self, config: SimulatorConfig, log_days: float = 14.0) -> None:
        self.world = World(config)
        self.epoch: datetime = config.start
        self.log_start: datetime = config.start - timedelta(days=log_days)
        catalogue = self.world.catalogue
        self.items: np.ndarray = np.flatnonzero(catalogue.published_us <= to_us(self.log_start))
        if len(self.items) < 20:
            raise ValueError(f"only {len(self.items)} items published before the log starts: need 20")
        # Public metadata (the items table's categories); quality and tastes stay hidden in the world.
        self.genres: np.ndarray = catalogue.genres[self.items].astype(np.float64)
        self.n_users = config.n_users
        self._item_ids = np.array([f"i{i}" for i in self.items])

    def show(
        self, users: np.ndarray, columns: np.ndarray, at: datetime | list[datetime], seed: int
    ) -> SlateOutcomes:
        """Shows slate ``columns[r]`` (indexes into `items`) to user ``users[r]`` at ``at``.

        Each user may appear at most once per call: outcomes are matched back to slates by user.
        """
        users = np.asarray(users, dtype=np.int64)
        columns = np.asarray(columns, dtype=np.int64)
        if columns.ndim != 2 or len(columns) != len(users):
            raise ValueError(f"need one row of item columns per user, got {columns.shape} for {len(users)}")
        if len(np.unique(users)) != len(users):
            raise ValueError("a user appears twice in one call to show")
        k = columns.shape[1]
        clicked = np.zeros((len(users), k), dtype=bool)
        watch = np.zeros(len(users))
        views = np.zeros(len(users), dtype=np.int64)
        skips = np.zeros(len(users), dtype=np.int64)
        if len(users) == 0:
            return SlateOutcomes(users, columns, clicked, watch, views, skips)
        events = self.world.respond([f"u{u}" for u in users], self._item_ids[columns].tolist(), at, seed=seed)
        slate_of = pd.Series(np.arange(len(users)), index=users)
        rows = slate_of.reindex(events["user_id"].str.slice(1).astype(np.int64)).to_numpy()
        position = events["position"].to_numpy(dtype=np.int64) - 1
        kind = events["event_type"].to_numpy()
        is_click = kind == "click"
        clicked[rows[is_click], position[is_click]] = True
        is_view = kind == "view"
        dwell = events["dwell_time_ms"].to_numpy(dtype=np.float64, na_value=0.0)
        np.add.at(watch, rows[is_view], dwell[is_view] / 1000.0)
        np.add.at(views, rows[is_view], 1)
        np.add.at(skips, rows[kind == "skip"], 1)
        return SlateOutcomes(users, columns, clicked, watch, views, skips)


@dataclass(frozen=True)
class ExplorationLog:
    """Impressions of a uniformly random exploration bucket: the data policies are fitted on.

    Slates drawn uniformly at random make every item equally likely at every position, so the log
    identifies position bias and item effects without the feedback loop of a production policy.
    """

    user: np.ndarray  # (n,) user index per impression
    column: np.ndarray  # (n,) item column (index into Platform.items)
    position: np.ndarray  # (n,) 1-based
    clicked: np.ndarray  # (n,) bool


def exploration_log(
    platform: Platform, users: np.ndarray, slates_per_user: int, k: int, seed: int
) -> ExplorationLog:
    """Random slates (k distinct items each) for every user, ``slates_per_user`` times, before the epoch."""
    rng = np.random.default_rng([seed, 7])
    parts: list[SlateOutcomes] = []
    span_s = (platform.epoch - platform.log_start).total_seconds()
    for round_ in range(slates_per_user):
        columns = np.argsort(rng.random((len(users), len(platform.items))), axis=1)[:, :k]
        offsets = rng.random(len(users)) * span_s
        moments = [platform.log_start + timedelta(seconds=float(s)) for s in offsets]
        parts.append(platform.show(users, columns, moments, seed=int(rng.integers(1 << 31)) + round_))
    n = len(users) * k
    return ExplorationLog(
        user=np.concatenate([np.repeat(p.user, k) for p in parts]),
        column=np.concatenate([p.items.ravel() for p in parts]),
        position=np.tile(np.arange(1, k + 1), n // k * len(parts)),
        clicked=np.concatenate([p.clicked.ravel() for p in parts]),
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of each row's k best scores, best first (ties: lower column)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)
