"""The roles serving depends on, as protocols: serving names what it needs, not which class provides it.

`training.runtime` supplies the real models and `recsys.features.store` the online feature reads;
tests supply small real implementations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd


@runtime_checkable
class RetrievalModel(Protocol):
    """Candidate generation: the champion two-tower model and its item index."""

    @property
    def version(self) -> str:
        """Registry version of the model."""
        ...

    def knows_user(self, user_id: str) -> bool:
        """Whether the model has learnt anything about this user."""
        ...

    def retrieve(self, user_id: str, user_features: dict[str, Any], n: int) -> tuple[list[str], np.ndarray]:
        """The `n` best items for the user, best first, excluding items the user has seen."""
        ...

    def popular(self, n: int) -> tuple[list[str], np.ndarray]:
        """The `n` most popular items, most popular first: the answer for users the model does not know."""
        ...


@runtime_checkable
class RankingModel(Protocol):
    """Candidate scoring: the champion ranker."""

    @property
    def version(self) -> str:
        """Registry version of the model."""
        ...

    @property
    def feature_service(self) -> str:
        """The Feast feature service the ranker was trained on."""
        ...

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        """One score per row of `item_features` (higher is better)."""
        ...


# Online feature reads: (feature service, entity rows) -> one frame row per entity row, in order.
FeatureReader = Callable[[str, list[dict[str, Any]]], pd.DataFrame]
