"""Per-request work of the retrieval and ranking deployments, free of Ray so it can be tested directly.

Each stage holds a model and a feature reader built once per replica; a request only reads online
features and calls the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys.vocab import GENRES
from serving.reranking import ItemInfo, ItemVectors, RerankConfig, genre_matrix, rerank
from serving.roles import FeatureReader, RankingModel, RetrievalModel

USER_KEY = "user_id"
ITEM_KEY = "item_id"
RETRIEVAL_FEATURE_SERVICE = "two_tower_v1"
UNKNOWN_USER = "unknown_user"
# Item features of the ranker's online read that re-ranking reuses (no second read).
GENRE_COLUMN = "item_genre_vector"
AGE_COLUMN = "item_age_days"


class FeatureReadError(ValueError):
    """The online store answered with a frame that does not line up with the entities asked for."""


@dataclass(frozen=True)
class Candidates:
    """Items in the order a stage put them, with their scores and the version of the model that chose them.

    `fallback_reason` is set when the list is not the model's personal answer (for example popularity
    for an unknown user), and then it must not be re-ranked.
    """

    item_ids: list[str]
    scores: list[float]
    model_version: str
    fallback_reason: str | None = None

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.scores):
            raise ValueError(f"{len(self.item_ids)} item ids but {len(self.scores)} scores")

    def top(self, k: int) -> Candidates:
        """The first `k` items."""
        return Candidates(self.item_ids[:k], self.scores[:k], self.model_version, self.fallback_reason)

    def without(self, item_ids: frozenset[str]) -> Candidates:
        """The same list minus `item_ids` (items that must not be shown), order kept."""
        if not item_ids:
            return self
        keep = [j for j, item in enumerate(self.item_ids) if item not in item_ids]
        return Candidates(
            [self.item_ids[j] for j in keep],
            [self.scores[j] for j in keep],
            self.model_version,
            self.fallback_reason,
        )


def order_by_score(item_ids: list[str], scores: np.ndarray) -> tuple[list[str], list[float]]:
    """Items sorted by descending score; ties keep their input (retrieval) order.

    >>> order_by_score(["a", "b", "c"], np.array([0.1, 0.5, 0.1]))
    (['b', 'a', 'c'], [0.5, 0.1, 0.1])
    """
    if len(item_ids) != len(scores):
        raise ValueError(f"{len(item_ids)} item ids but {len(scores)} scores")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [item_ids[i] for i in order], [float(scores[i]) for i in order]


def item_info(items: pd.DataFrame, item_ids: list[str], vectors: ItemVectors | None) -> ItemInfo:
    """What re-ranking needs from the candidates' online item features (and the retrieval embeddings).

    Columns the read did not return are left out (None), which switches the rules using them off.

    >>> info = item_info(pd.DataFrame({"item_age_days": [3.0]}), ["a"], None)
    >>> info.categories is None, info.age_days.tolist()
    (True, [3.0])
    """
    categories = (
        genre_matrix(items[GENRE_COLUMN], len(items), len(GENRES)) if GENRE_COLUMN in items.columns else None
    )
    age = (
        pd.to_numeric(items[AGE_COLUMN], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if AGE_COLUMN in items.columns
        else None
    )
    embeddings = vectors.lookup(item_ids) if vectors is not None else None
    return ItemInfo(embeddings=embeddings, categories=categories, age_days=age)


def split_features(frame: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Split one online read of (user, item) rows into the user's features and a per-item frame.

    User features are the `user_*` columns (the naming contract of the feature views); they are the same
    on every row, so the first row's values are taken. Everything else stays in the item frame.

    >>> frame = pd.DataFrame(
    ...     {"user_id": ["u", "u"], "item_id": ["a", "b"], "user_n": [3, 3], "item_n": [1, 2]}
    ... )
    >>> user, items = split_features(frame)
    >>> sorted(user), list(items.columns)
    (['user_id', 'user_n'], ['item_id', 'item_n'])
    """
    user_columns = [c for c in frame.columns if c.startswith("user_")]
    user = {c: frame[c].iloc[0] for c in user_columns} if len(frame) else {}
    return user, frame.drop(columns=user_columns).reset_index(drop=True)


class RetrievalStage:
    """Candidate generation for one request: the user's online features, then the two-tower model.

    Args:
        model: The champion retrieval model.
        read_features: Online feature reads.
        feature_service: The feature service whose user features the model takes.
    """

    def __init__(
        self,
        model: RetrievalModel,
        read_features: FeatureReader,
        feature_service: str = RETRIEVAL_FEATURE_SERVICE,
    ) -> None:
        self.model = model
        self._read = read_features
        self._service = feature_service

    @property
    def version(self) -> str:
        return self.model.version

    def warm_up(self) -> None:
        """One throwaway read, so the first real request does not pay for opening the online store."""
        self._read(self._service, [{USER_KEY: "__warm_up__"}])

    def user_features(self, user_id: str) -> dict[str, Any]:
        frame = self._read(self._service, [{USER_KEY: user_id}])
        if len(frame) != 1:
            raise FeatureReadError(f"online store returned {len(frame)} rows for one user")
        return {str(key): value for key, value in frame.iloc[0].to_dict().items()}

    def candidates(self, user_id: str, n: int, k: int) -> Candidates:
        """Up to `n` personal candidates; the `k` most popular items for a user the model does not know."""
        if not self.model.knows_user(user_id):
            ids, scores = self.model.popular(k)
            return Candidates(list(ids), [float(s) for s in scores], self.version, UNKNOWN_USER)
        ids, scores = self.model.retrieve(user_id, self.user_features(user_id), n)
        return Candidates(list(ids), [float(s) for s in scores], self.version)

    def popular(self, n: int) -> Candidates:
        ids, scores = self.model.popular(n)
        return Candidates(list(ids), [float(s) for s in scores], self.version)


class RankingStage:
    """Candidate scoring for one request: one batched online read of all candidates, then the ranker.

    Args:
        model: The champion ranking model.
        read_features: Online feature reads.
        rerank_config: Re-ranking applied to the ranker's order; None returns the ranker's order as is.
        item_vectors: Item embeddings for MMR similarity; without them MMR compares genre vectors.
    """

    def __init__(
        self,
        model: RankingModel,
        read_features: FeatureReader,
        rerank_config: RerankConfig | None = None,
        item_vectors: ItemVectors | None = None,
    ) -> None:
        self.model = model
        self._read = read_features
        self._rerank = rerank_config
        self._vectors = item_vectors

    @property
    def version(self) -> str:
        return self.model.version

    def warm_up(self) -> None:
        """One throwaway read, so the first real request does not pay for opening the online store."""
        self._read(self.model.feature_service, [{USER_KEY: "__warm_up__", ITEM_KEY: "__warm_up__"}])

    def rank(self, user_id: str, candidates: Candidates) -> Candidates:
        """The candidates re-ordered by the ranker's score, then re-ranked when a config is set."""
        if not candidates.item_ids:
            return Candidates([], [], self.version)
        rows = [{USER_KEY: user_id, ITEM_KEY: item_id} for item_id in candidates.item_ids]
        frame = self._read(self.model.feature_service, rows)
        if len(frame) != len(rows):
            raise FeatureReadError(f"online store returned {len(frame)} rows for {len(rows)} candidates")
        user, items = split_features(frame)
        scores = np.asarray(
            self.model.score(user, items, np.asarray(candidates.scores, dtype=np.float32)), dtype=np.float64
        )
        if scores.shape != (len(rows),):
            raise ValueError(f"ranker returned scores of shape {scores.shape} for {len(rows)} candidates")
        if self._rerank is not None:
            info = item_info(items, candidates.item_ids, self._vectors)
            ids, ordered = rerank(candidates.item_ids, scores, info, self._rerank)
        else:
            ids, ordered = order_by_score(candidates.item_ids, scores)
        return Candidates(ids, ordered, self.version)
