"""Retrieval baselines: popularity (global, trending, per category), item-kNN and implicit ALS.

Each is a `training.retriever.Retriever` fitted from a frame of `interaction_events` rows, with no IO. They
are the bar a learned retriever has to clear, and cheap candidate generators in their own right. Only
positive events (like, save, purchase) are learned from; every item in the fitted events (or the catalogue
passed in) can be recommended. Ties, and users a model cannot serve, fall back to global popularity.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse

from training.retriever import RetrieverError, ScoringRetriever, check_events, interaction_matrix


class GlobalPopularity(ScoringRetriever):
    """Items by number of positive events: the same list for everyone, minus what each user has seen."""

    def _fit(self, events: pd.DataFrame, positives: pd.DataFrame) -> None:
        pass

    def _default_scores(self) -> np.ndarray:
        return self.popularity

    def _score(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(rows), len(self.catalogue)))


class TrendingPopularity(ScoringRetriever):
    """Items by positive events in the `days` before the reference time; global popularity breaks ties.

    Args:
        days: window length.
        reference_time: end of the window; default the newest event in the fitted frame (the moment the
            model is built, as far as the data knows).
    """

    def __init__(
        self,
        days: float = 7.0,
        reference_time: pd.Timestamp | None = None,
        catalogue: Sequence[str] | None = None,
    ) -> None:
        if days <= 0:
            raise RetrieverError(f"days must be positive, got {days}")
        super().__init__(catalogue)
        self.days = days
        self.reference_time = reference_time
        self.trending = np.zeros(0)

    def _fit(self, events: pd.DataFrame, positives: pd.DataFrame) -> None:
        times = pd.to_datetime(positives["event_ts"], utc=True)
        end = self.reference_time or pd.to_datetime(events["event_ts"], utc=True).max()
        end = pd.Timestamp(end).tz_localize("UTC") if pd.Timestamp(end).tzinfo is None else pd.Timestamp(end)
        recent = positives[(times > end - timedelta(days=self.days)) & (times <= end)]
        counts = recent["item_id"].value_counts()
        self.trending = counts.reindex(self.catalogue, fill_value=0).to_numpy(dtype=np.float64)

    def _default_scores(self) -> np.ndarray:
        return self.trending

    def _score(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.trending, (len(rows), len(self.catalogue)))


class CategoryPopularity(ScoringRetriever):
    """Popular items of the user's most-liked category first, then global popularity.

    The most-liked category is the one holding most of the user's positive events (ties: category name).
    A user with no categorised positive, or unknown, gets global popularity.

    Args:
        item_categories: item id -> its categories (e.g. genres from the `items` table).
    """

    def __init__(
        self, item_categories: Mapping[str, Collection[str]], catalogue: Sequence[str] | None = None
    ) -> None:
        super().__init__(catalogue)
        self.item_categories = {str(i): sorted(map(str, c)) for i, c in item_categories.items()}
        self.categories: list[str] = []
        self.user_category = np.zeros(0, dtype=np.int64)
        self._category_scores = np.zeros((0, 0))

    def _fit(self, events: pd.DataFrame, positives: pd.DataFrame) -> None:
        self.categories = sorted({c for cats in self.item_categories.values() for c in cats})
        if not self.categories:
            raise RetrieverError("item_categories names no category")
        membership = sparse.lil_matrix((len(self.catalogue), len(self.categories)))
        cat_col = {c: j for j, c in enumerate(self.categories)}
        for item, col in self._item_col.items():
            for cat in self.item_categories.get(item, ()):
                membership[col, cat_col[cat]] = 1.0
        member = membership.tocsr()
        likes = interaction_matrix(self.users, self.catalogue, positives["user_id"], positives["item_id"])
        per_category = np.asarray((likes @ member).todense())  # (users, categories)
        # argmax takes the first maximum: the alphabetically first category among ties.
        self.user_category = np.where(per_category.max(axis=1) > 0, per_category.argmax(axis=1), -1)
        self._category_scores = np.asarray(member.T.todense()) * self.popularity  # (categories, items)

    def _score(self, rows: np.ndarray) -> np.ndarray:
        cats = self.user_category[rows]
        out = np.zeros((len(rows), len(self.catalogue)))
        out[cats >= 0] = self._category_scores[cats[cats >= 0]]
        return out


class ItemKNN(ScoringRetriever):
    """Item-item neighbours: a user's score for an item sums its similarity to the user's liked items.

    Args:
        n_neighbours: similar items kept per item (top-M), the rest set to zero.
        basket: what co-occurrence means: the same user ("user") or the same session ("session",
            needs a `session_id` column).
        similarity: "cosine" over the binary basket x item matrix, or "count" (raw co-visitation counts).
    """

    def __init__(
        self,
        n_neighbours: int = 100,
        basket: Literal["user", "session"] = "user",
        similarity: Literal["cosine", "count"] = "cosine",
        catalogue: Sequence[str] | None = None,
    ) -> None:
        if n_neighbours < 1:
            raise RetrieverError(f"n_neighbours must be at least 1, got {n_neighbours}")
        if basket not in ("user", "session") or similarity not in ("cosine", "count"):
            raise RetrieverError(f"unknown basket {basket!r} or similarity {similarity!r}")
        super().__init__(catalogue)
        self.n_neighbours = n_neighbours
        self.basket = basket
        self.similarity = similarity
        self.neighbours = sparse.csr_matrix((0, 0))
        self.history = sparse.csr_matrix((0, 0))

    def _fit(self, events: pd.DataFrame, positives: pd.DataFrame) -> None:
        if self.basket == "session":
            check_events(events, ("session_id",))
        key = positives["session_id" if self.basket == "session" else "user_id"].astype(str)
        baskets = interaction_matrix(sorted(set(key)), self.catalogue, key, positives["item_id"])
        baskets.data[:] = 1.0
        sim = (baskets.T @ baskets).tocsr()  # (items, items) co-occurrence counts
        if self.similarity == "cosine":
            norm = np.sqrt(sim.diagonal())
            inv = sparse.diags(np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0))
            sim = (inv @ sim @ inv).tocsr()
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        self.neighbours = _keep_top(sim, self.n_neighbours)
        history = interaction_matrix(self.users, self.catalogue, positives["user_id"], positives["item_id"])
        history.data[:] = 1.0
        self.history = history

    def _score(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray((self.history[rows] @ self.neighbours).todense())


def _keep_top(matrix: sparse.csr_matrix, m: int) -> sparse.csr_matrix:
    """Each row's m largest entries (ties: lower column), the others dropped."""
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    keep = np.zeros(len(data), dtype=bool)
    for row in range(matrix.shape[0]):
        lo, hi = indptr[row], indptr[row + 1]
        if hi - lo <= m:
            keep[lo:hi] = True
        else:
            order = np.lexsort((indices[lo:hi], -data[lo:hi]))[:m]
            keep[lo + order] = True
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(indptr))
    return sparse.csr_matrix((data[keep], (rows[keep], indices[keep])), shape=matrix.shape)


NNZ_BATCH = 1024  # ALS entries per batched solve: bounds the (nnz, factors, factors) block in memory


class ImplicitALS(ScoringRetriever):
    """Weighted matrix factorisation for implicit feedback (alternating least squares, closed form).

    Preference is 1 where a user has a positive for an item, with confidence 1 + alpha * (number of
    positives); everything else is preference 0 at confidence 1. Each half-step solves, per user (item),
    (V'V + V'(C - I)V + reg I) x = V'C p exactly. Seeded, so a fit is reproducible.

    Args:
        factors: latent dimension.
        regularization: L2 weight on the factors.
        alpha: confidence slope.
        iterations: alternating sweeps (users then items).
        cg_steps: conjugate-gradient steps per half-step, warm-started from the previous factors (all
            rows at once, vectorised); None solves every system exactly (slower, for checking).
        seed: initialisation of the factors.
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.1,
        alpha: float = 10.0,
        iterations: int = 15,
        cg_steps: int | None = 3,
        seed: int = 0,
        catalogue: Sequence[str] | None = None,
    ) -> None:
        if factors < 1 or iterations < 1 or regularization < 0 or alpha < 0:
            raise RetrieverError("ALS needs factors >= 1, iterations >= 1, regularization >= 0, alpha >= 0")
        if cg_steps is not None and cg_steps < 1:
            raise RetrieverError(f"cg_steps must be at least 1 or None (exact solves), got {cg_steps}")
        super().__init__(catalogue)
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.cg_steps = cg_steps
        self.seed = seed
        self.user_factors = np.zeros((0, factors))
        self.item_factors = np.zeros((0, factors))

    def _fit(self, events: pd.DataFrame, positives: pd.DataFrame) -> None:
        counts = interaction_matrix(self.users, self.catalogue, positives["user_id"], positives["item_id"])
        rng = np.random.default_rng(self.seed)
        items = rng.normal(0.0, 0.01, (len(self.catalogue), self.factors))
        users = rng.normal(0.0, 0.01, (len(self.users), self.factors))
        by_item = counts.T.tocsr()
        for _ in range(self.iterations):
            users = self._solve(counts, items, users)
            items = self._solve(by_item, users, items)
        self.user_factors, self.item_factors = users, items

    def _solve(self, counts: sparse.csr_matrix, fixed: np.ndarray, current: np.ndarray) -> np.ndarray:
        """One half-step: the least-squares factors of every row of `counts` given the other side."""
        if self.cg_steps is None:
            return self._solve_exact(counts, fixed)
        gram = fixed.T @ fixed + self.regularization * np.eye(self.factors)
        weights = self.alpha * counts.data  # c - 1 on the liked entries
        near = fixed[counts.indices]  # (nnz, factors)
        owner = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))

        def matvec(x: np.ndarray) -> np.ndarray:  # every row's system matrix times its own x
            dots = np.einsum("ij,ij->i", near, x[owner]) * weights
            spread = sparse.csr_matrix((dots, counts.indices, counts.indptr), shape=counts.shape)
            result: np.ndarray = x @ gram + spread @ fixed
            return result

        confidence = counts.copy()
        confidence.data = 1.0 + weights
        x = current.copy()
        residual = np.asarray(confidence @ fixed) - matvec(x)
        direction = residual.copy()
        norm = np.einsum("ij,ij->i", residual, residual)
        for _ in range(self.cg_steps):
            product = matvec(direction)
            curvature = np.einsum("ij,ij->i", direction, product)
            step = np.divide(norm, curvature, out=np.zeros_like(norm), where=curvature > 0)
            x += step[:, None] * direction
            residual -= step[:, None] * product
            new_norm = np.einsum("ij,ij->i", residual, residual)
            ratio = np.divide(new_norm, norm, out=np.zeros_like(norm), where=norm > 0)
            direction = residual + ratio[:, None] * direction
            norm = new_norm
        return x

    def _solve_exact(self, counts: sparse.csr_matrix, fixed: np.ndarray) -> np.ndarray:
        """The exact half-step (rows without entries get zero factors).

        Rows are solved in batches holding about `NNZ_BATCH` entries: the per-row systems are summed
        from weighted outer products of the liked items' factors and solved together.
        """
        gram = fixed.T @ fixed + self.regularization * np.eye(self.factors)
        confidence = counts.copy()
        confidence.data = 1.0 + self.alpha * confidence.data
        rhs = np.asarray(confidence @ fixed)  # (rows, factors): V'C p, as p is 1 exactly where liked
        out = np.zeros((counts.shape[0], self.factors))
        indptr = counts.indptr
        for rows in _row_batches(indptr, NNZ_BATCH):
            lo, hi = indptr[rows[0]], indptr[rows[-1] + 1]
            near = fixed[counts.indices[lo:hi]]  # (nnz, factors)
            weighted = near * (self.alpha * counts.data[lo:hi])[:, None]
            outer = weighted[:, :, None] * near[:, None, :]  # (nnz, factors, factors)
            lhs = np.add.reduceat(outer, indptr[rows] - lo, axis=0) + gram  # (rows, factors, factors)
            out[rows] = np.linalg.solve(lhs, rhs[rows][:, :, None])[:, :, 0]
        return out

    def _score(self, rows: np.ndarray) -> np.ndarray:
        scores: np.ndarray = self.user_factors[rows] @ self.item_factors.T
        return scores


def _row_batches(indptr: np.ndarray, budget: int) -> list[np.ndarray]:
    """The non-empty rows of a CSR matrix in consecutive groups of about `budget` entries each."""
    nonempty = np.flatnonzero(np.diff(indptr))
    group = indptr[nonempty] // budget
    cuts = np.flatnonzero(np.diff(group)) + 1
    return [rows for rows in np.split(nonempty, cuts) if len(rows)]


def default_baselines(item_categories: Mapping[str, Collection[str]]) -> dict[str, ScoringRetriever]:
    """The baselines with their default settings, by the name an evaluation table shows."""
    factories: dict[str, Callable[[], ScoringRetriever]] = {
        "popularity": GlobalPopularity,
        "trending-7d": TrendingPopularity,
        "category-popularity": lambda: CategoryPopularity(item_categories),
        "item-knn": ItemKNN,
        "session-covisitation": lambda: ItemKNN(basket="session", similarity="count"),
        "implicit-als": ImplicitALS,
    }
    return {name: make() for name, make in factories.items()}
