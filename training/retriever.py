"""The retriever interface every candidate generator meets, and the scoring machinery baselines share.

A retriever is fitted on a frame of `interaction_events` rows and then recommends, for a batch of users,
the top-n items of its whole catalogue, skipping each user's excluded items. Ties are broken the same way
everywhere: by global popularity (positive events in the fitted data, most first), then by item id. This
makes every list deterministic and makes popularity the fallback of every model: a user a model knows
nothing about (unknown, or with no usable history) gets the global popularity list.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd
from scipy import sparse

from recsys.vocab import POSITIVE_EVENT_TYPES

REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "event_ts")
USER_BATCH = 256  # users scored at once: bounds the dense (users x items) score block in memory


class RetrieverError(ValueError):
    """A retriever used with input it cannot serve (missing columns, n < 1, not fitted)."""


@runtime_checkable
class Retriever(Protocol):
    """Fit on events, then recommend top-n items per user from the full catalogue."""

    def fit(self, train_events: pd.DataFrame) -> Retriever:
        """Learn from `interaction_events` rows (only positive events count); returns self."""
        ...

    def recommend(self, user_ids: Sequence[str], n: int, exclude: Mapping[str, set[str]]) -> list[list[str]]:
        """Per user (same order), up to n distinct catalogue items, best first, none in exclude[user]."""
        ...


def check_events(events: pd.DataFrame, extra: Sequence[str] = ()) -> None:
    """Raise RetrieverError naming the first missing column."""
    for column in (*REQUIRED_COLUMNS, *extra):
        if column not in events.columns:
            raise RetrieverError(f"events frame has no {column!r} column")


def positive_events(events: pd.DataFrame) -> pd.DataFrame:
    """The positive rows (like, save, purchase) with string ids: what the baselines learn from."""
    rows = events[events["event_type"].isin(POSITIVE_EVENT_TYPES)]
    return rows.assign(user_id=rows["user_id"].astype(str), item_id=rows["item_id"].astype(str))


def seen_items(events: pd.DataFrame) -> dict[str, set[str]]:
    """User id -> every item the user has any event for: the usual `exclude` argument."""
    return {str(u): set(map(str, g)) for u, g in events.groupby("user_id", sort=False)["item_id"]}


def interaction_matrix(
    rows: Sequence[str], columns: Sequence[str], row_ids: pd.Series, column_ids: pd.Series
) -> sparse.csr_matrix:
    """A (len(rows), len(columns)) count matrix: entry (r, c) = number of events with that pair."""
    row_pos = pd.Index(rows).get_indexer(row_ids.astype(str))
    col_pos = pd.Index(columns).get_indexer(column_ids.astype(str))
    keep = (row_pos >= 0) & (col_pos >= 0)
    data = np.ones(int(keep.sum()), dtype=np.float64)
    matrix = sparse.coo_matrix((data, (row_pos[keep], col_pos[keep])), shape=(len(rows), len(columns)))
    return matrix.tocsr()  # duplicates are summed


def top_n(scores: np.ndarray, tie_rank: np.ndarray, n: int, banned: np.ndarray) -> np.ndarray:
    """Columns of the n best scores, best first; ties go to the lower `tie_rank`; `banned` never returned.

    >>> top_n(np.array([1.0, 3.0, 3.0, 2.0]), np.array([0, 2, 1, 3]), 3, np.array([0]))
    array([2, 1, 3])
    """
    score = scores.astype(np.float64, copy=True)
    score[banned] = -np.inf
    allowed = int(np.isfinite(score).sum())
    take = min(n, allowed)
    if take == 0:
        return np.zeros(0, dtype=np.int64)
    # Every column scoring at least the take-th best value, ties included, then an exact two-key sort.
    threshold = np.partition(score, len(score) - take)[len(score) - take]
    candidates = np.flatnonzero(score >= threshold)
    order = np.lexsort((tie_rank[candidates], -score[candidates]))
    return candidates[order[:take]].astype(np.int64)


class ScoringRetriever:
    """Base of the baselines: a catalogue, a user index and a popularity tie-break; subclasses score.

    Subclasses implement `_fit` (learn from positive events, after `catalogue`, `users` and the
    popularity are set) and `_score` (a dense (len(rows), n_items) block for known-user rows).
    """

    def __init__(self, catalogue: Sequence[str] | None = None) -> None:
        self._given_catalogue = None if catalogue is None else sorted({str(i) for i in catalogue})
        self.catalogue: list[str] = []
        self.users: list[str] = []
        self.popularity = np.zeros(0)
        self._tie_rank = np.zeros(0, dtype=np.int64)
        self._user_row: dict[str, int] = {}
        self._item_col: dict[str, int] = {}
        self._fitted = False

    def fit(self, train_events: pd.DataFrame) -> Self:
        """Fit on `interaction_events` rows; the catalogue is every item in them (or the one given)."""
        check_events(train_events)
        positives = positive_events(train_events)
        if self._given_catalogue is not None:
            self.catalogue = self._given_catalogue
        else:
            self.catalogue = sorted({str(i) for i in train_events["item_id"]})
        self.users = sorted(set(positives["user_id"]))
        self._item_col = {item: col for col, item in enumerate(self.catalogue)}
        self._user_row = {user: row for row, user in enumerate(self.users)}
        counts = positives["item_id"].value_counts()
        self.popularity = counts.reindex(self.catalogue, fill_value=0).to_numpy(dtype=np.float64)
        # Rank 0 = most popular; equal counts by item id (the catalogue is sorted).
        self._tie_rank = np.empty(len(self.catalogue), dtype=np.int64)
        self._tie_rank[np.lexsort((np.arange(len(self.catalogue)), -self.popularity))] = np.arange(
            len(self.catalogue)
        )
        self._fit(train_events, positives)
        self._fitted = True
        return self

    def _fit(self, events: pd.DataFrame, positives: pd.DataFrame) -> None:
        raise NotImplementedError

    def _score(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _default_scores(self) -> np.ndarray:
        """Scores for a user the model has no row for: none, so the popularity tie-break decides."""
        return np.zeros(len(self.catalogue))

    def _batches(self, user_ids: Sequence[str]) -> Iterator[tuple[list[int], np.ndarray]]:
        """(positions in user_ids, score block) per batch of known users."""
        known = [(pos, self._user_row[u]) for pos, u in enumerate(user_ids) if u in self._user_row]
        for start in range(0, len(known), USER_BATCH):
            chunk = known[start : start + USER_BATCH]
            yield [p for p, _ in chunk], self._score(np.array([r for _, r in chunk], dtype=np.int64))

    def recommend(self, user_ids: Sequence[str], n: int, exclude: Mapping[str, set[str]]) -> list[list[str]]:
        """Per user, the top-n catalogue items not in exclude[user]; unknown users get popularity."""
        if not self._fitted:
            raise RetrieverError(f"{type(self).__name__} must be fitted before recommending")
        if n < 1:
            raise RetrieverError(f"n must be at least 1, got {n}")
        users = [str(u) for u in user_ids]
        out: list[list[str]] = [[] for _ in users]

        def pick(pos: int, scores: np.ndarray) -> None:
            banned = np.fromiter(
                (self._item_col[i] for i in exclude.get(users[pos], ()) if i in self._item_col),
                dtype=np.int64,
            )
            out[pos] = [self.catalogue[c] for c in top_n(scores, self._tie_rank, n, banned)]

        known: set[int] = set()
        for positions, block in self._batches(users):
            for pos, row in zip(positions, block, strict=True):
                pick(pos, row)
                known.add(pos)
        fallback = self._default_scores()
        for pos in range(len(users)):
            if pos not in known:
                pick(pos, fallback)
        return out
