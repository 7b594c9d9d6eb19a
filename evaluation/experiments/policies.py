"""Recommendation policies for simulated experiments, fitted on an exploration log.

A policy scores every recommendable item for a batch of users; the slate is the top k. Two models
are fitted from logged impressions and clicks only (never from the simulator's latent truth):

- `Popularity`: one list for everyone, items by click rate per expected examination.
- `Taste`: a per-user genre click rate, shrunk towards the population's, plus the item's own effect,
  on a log scale: score(u, i) = sum_g genre_ig log ctr_ug + log(ctr_i / ctr). It needs the item genres
  the catalogue publishes.

Position bias is estimated from the log first (random slates put every item at every position alike),
and every count is divided by the examination it implies, so low positions do not read as dislike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from evaluation.experiments.simulation import ExplorationLog, top_k

_SCORE_BATCH = 2048  # users scored at once: bounds the (users x items) block in memory


class Policy(Protocol):
    """Scores items for users; higher is better."""

    @property
    def name(self) -> str:
        """How reports and the experiments file name the policy."""
        ...

    def scores(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) scores over the platform's recommendable items."""
        ...


def examination(log: ExplorationLog) -> np.ndarray:
    """Estimated examination probability per position (index 0 = position 1), relative to position 1."""
    k = int(log.position.max())
    shown = np.bincount(log.position - 1, minlength=k).astype(np.float64)
    clicks = np.bincount(log.position - 1, weights=log.clicked, minlength=k)
    rate = clicks / np.maximum(shown, 1.0)
    if rate[0] <= 0:
        raise ValueError("no click at position 1 in the exploration log: cannot estimate position bias")
    return np.asarray(np.clip(rate / rate[0], 1e-3, 1.0))


@dataclass(frozen=True)
class Popularity:
    """The same ranking for every user: smoothed clicks per examined impression of each item."""

    item_score: np.ndarray
    name: str = "popularity"

    @staticmethod
    def fit(log: ExplorationLog, n_items: int, prior: float = 20.0) -> Popularity:
        """Fits on the log; ``prior`` examinations at the global rate smooth rarely shown items."""
        exam = examination(log)[log.position - 1]
        shown = np.bincount(log.column, weights=exam, minlength=n_items)
        clicks = np.bincount(log.column, weights=log.clicked, minlength=n_items)
        overall = clicks.sum() / shown.sum()
        return Popularity(np.log((clicks + prior * overall) / (shown + prior)))

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_score, (len(users), len(self.item_score)))


@dataclass(frozen=True)
class Taste:
    """Per-user genre click rates (log scale) weighted by each item's genres, plus an item effect.

    Users missing from the log get the population's genre rates, so they see the item effect alone.
    """

    user_genre: np.ndarray  # (n_users, n_genres) log click rate per examination
    genre_item: np.ndarray  # (n_genres, n_items) genre weights of each item, rows sum over an item to 1
    item_effect: np.ndarray  # (n_items,) log of the item's rate over the overall rate
    name: str = "taste"

    @staticmethod
    def fit(
        log: ExplorationLog,
        genres: np.ndarray,
        n_users: int,
        user_prior: float = 3.0,
        item_prior: float = 20.0,
    ) -> Taste:
        """Fits on the log.

        Args:
            genres: (n_items, n_genres) multi-hot genres of the recommendable items.
            n_users: Size of the user index space.
            user_prior: Examinations at the population's genre rate added to each user's counts.
            item_prior: Examinations at the overall rate added to each item's counts.
        """
        weight = genres / np.maximum(genres.sum(axis=1, keepdims=True), 1.0)  # (items, genres)
        exam = examination(log)[log.position - 1]
        per_row = weight[log.column]  # (impressions, genres)
        shown = np.zeros((n_users, genres.shape[1]))
        clicks = np.zeros_like(shown)
        np.add.at(shown, log.user, per_row * exam[:, None])
        np.add.at(clicks, log.user, per_row * log.clicked[:, None])
        genre_rate = (clicks.sum(axis=0) + 1.0) / (shown.sum(axis=0) + 1.0)
        user_genre = np.log((clicks + user_prior * genre_rate) / (shown + user_prior))
        item_shown = np.bincount(log.column, weights=exam, minlength=len(genres))
        item_clicks = np.bincount(log.column, weights=log.clicked, minlength=len(genres))
        overall = item_clicks.sum() / item_shown.sum()
        item_effect = np.log((item_clicks + item_prior * overall) / (item_shown + item_prior) / overall)
        return Taste(user_genre, weight.T.copy(), item_effect)

    def scores(self, users: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.user_genre[users] @ self.genre_item + self.item_effect
        return out


@dataclass(frozen=True)
class Degraded:
    """A deliberately worse copy of a policy: its scores plus fixed per-(user, item) noise.

    The noise is a function of (seed, user, item) only, so a user sees the same ranking in every call,
    as with a real (bad) model.
    """

    base: Policy
    noise: float
    seed: int = 0
    name: str = "degraded"

    def scores(self, users: np.ndarray) -> np.ndarray:
        base = self.base.scores(users)
        noise = np.stack(
            [np.random.default_rng([self.seed, int(u)]).standard_normal(base.shape[1]) for u in users]
        )
        out: np.ndarray = base + self.noise * noise
        return out


def slates(policy: Policy, users: np.ndarray, k: int) -> np.ndarray:
    """(len(users), k) item columns: each user's top k under the policy."""
    users = np.asarray(users, dtype=np.int64)
    parts = [
        top_k(policy.scores(users[start : start + _SCORE_BATCH]), k)
        for start in range(0, len(users), _SCORE_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)
