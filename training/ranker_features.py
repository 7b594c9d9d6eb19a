"""The one transform from (user features, candidate item features, retrieval scores) to ranker input.

Training builds its rows with it from Feast point-in-time features, serving from online features: one
code path, so the ranker never sees a feature computed two ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from recsys.features.schema import ITEM_FEATURES, USER_FEATURES
from recsys.vocab import GENRES

RANKER_FEATURE_SERVICE = "ranker_v1"

RANKER_FEATURE_NAMES: tuple[str, ...] = (
    "retrieval_score",
    "retrieval_rank",
    "retrieval_score_gap",  # score minus the user's best candidate score
    "user_log_n_events",
    "user_log_n_positive",
    "user_positive_rate",
    "user_log_n_events_30d",
    "user_days_since_first_event",
    "user_days_since_last_event",
    "item_log_n_events",
    "item_log_n_positive",
    "item_log_n_events_365d",
    "item_positive_rate",
    "item_age_days",
    "item_n_genres",
    "genre_affinity_dot",  # user genre affinity . item multi-hot genres
    "genre_affinity_max",  # the user's affinity for the item's best-liked genre
    "genre_affinity_mean",  # dot divided by the item's genre count
)

# The columns the feature service `ranker_v1` serves: named once, where the offline tables are defined.
USER_COLUMNS: tuple[str, ...] = USER_FEATURES
ITEM_COLUMNS: tuple[str, ...] = ITEM_FEATURES


class RankerFeatureError(ValueError):
    """Inputs to the ranker transform that do not line up."""


def _scalar(value: Any) -> float:
    """A feature value as float; missing (None, NaN, absent) stays NaN, which LightGBM treats as missing."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _genre_vector(value: Any) -> np.ndarray:
    """A genre list as a float vector of len(GENRES); missing becomes zeros."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.zeros(len(GENRES), dtype=np.float32)
    vector: np.ndarray = np.nan_to_num(np.asarray(value, dtype=np.float32).ravel())
    if len(vector) != len(GENRES):
        raise RankerFeatureError(f"genre vector has length {len(vector)}, expected {len(GENRES)}")
    return vector


def _log1p_scalar(value: float) -> float:
    return float(np.log1p(max(value, 0.0))) if not np.isnan(value) else float("nan")


def _log1p(values: np.ndarray) -> np.ndarray:
    return np.asarray(np.log1p(np.clip(values, 0, None)), dtype=np.float32)


def build_ranker_matrix(
    user: Mapping[str, Any], items: pd.DataFrame, retrieval_scores: np.ndarray
) -> np.ndarray:
    """Ranker input for one user's candidates, columns in RANKER_FEATURE_NAMES order.

    Args:
        user: the user's feature row (USER_COLUMNS; missing keys or nulls mean unknown).
        items: one row per candidate with ITEM_COLUMNS (missing columns or nulls mean unknown).
        retrieval_scores: (n_candidates,) retrieval scores in the same order as `items`.

    Returns:
        (n_candidates, len(RANKER_FEATURE_NAMES)) float32 matrix; unknown values are NaN.
    """
    scores = np.asarray(retrieval_scores, dtype=np.float32).ravel()
    n = len(items)
    if len(scores) != n:
        raise RankerFeatureError(f"{len(scores)} retrieval scores for {n} candidate items")
    out = np.full((n, len(RANKER_FEATURE_NAMES)), np.nan, dtype=np.float32)
    if n == 0:
        return out
    col = {name: i for i, name in enumerate(RANKER_FEATURE_NAMES)}

    order = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=np.float32)
    rank[order] = np.arange(n, dtype=np.float32)
    out[:, col["retrieval_score"]] = scores
    out[:, col["retrieval_rank"]] = rank
    out[:, col["retrieval_score_gap"]] = scores - scores.max()

    n_events = _scalar(user.get("user_n_events"))
    n_positive = _scalar(user.get("user_n_positive"))
    out[:, col["user_log_n_events"]] = _log1p_scalar(n_events)
    out[:, col["user_log_n_positive"]] = _log1p_scalar(n_positive)
    out[:, col["user_positive_rate"]] = n_positive / n_events if n_events > 0 else np.nan
    out[:, col["user_log_n_events_30d"]] = _log1p_scalar(_scalar(user.get("user_n_events_30d")))
    out[:, col["user_days_since_first_event"]] = _scalar(user.get("user_days_since_first_event"))
    out[:, col["user_days_since_last_event"]] = _scalar(user.get("user_days_since_last_event"))

    def item_column(name: str) -> np.ndarray:
        if name not in items.columns:
            return np.full(n, np.nan, dtype=np.float32)
        values: np.ndarray = pd.to_numeric(items[name], errors="coerce").to_numpy(
            dtype=np.float32, na_value=np.nan
        )
        return values

    out[:, col["item_log_n_events"]] = _log1p(item_column("item_n_events"))
    out[:, col["item_log_n_positive"]] = _log1p(item_column("item_n_positive"))
    out[:, col["item_log_n_events_365d"]] = _log1p(item_column("item_n_events_365d"))
    out[:, col["item_positive_rate"]] = item_column("item_positive_rate")
    age = item_column("item_age_days")
    out[:, col["item_age_days"]] = np.where(age < 0, np.nan, age)

    affinity = _genre_vector(user.get("user_genre_affinity"))  # (n_genres,)
    if "item_genre_vector" in items.columns:
        genres = np.stack([_genre_vector(v) for v in items["item_genre_vector"]])  # (n, n_genres)
    else:
        genres = np.zeros((n, len(GENRES)), dtype=np.float32)
    n_genres = genres.sum(axis=1)  # (n,)
    dot = genres @ affinity  # (n,)
    out[:, col["item_n_genres"]] = n_genres
    out[:, col["genre_affinity_dot"]] = dot
    out[:, col["genre_affinity_max"]] = np.where(genres > 0, affinity[None, :], 0.0).max(axis=1)
    out[:, col["genre_affinity_mean"]] = np.divide(
        dot, n_genres, out=np.zeros(n, dtype=np.float32), where=n_genres > 0
    )
    return out
