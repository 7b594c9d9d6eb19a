"""The one transform from (user features, candidate item features, retrieval scores) to ranker input.

Training builds its rows with it from Feast point-in-time features, serving from online features: one
code path, so the ranker never sees a feature computed two ways.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from recsys.features.coview import coview_scores
from recsys.features.schema import (
    ITEM_FEATURES,
    USER_ACTIVITY_FEATURES,
    USER_CROSS_FEATURES,
    USER_FEATURES,
)
from recsys.vocab import DEVICE_TYPES, GENRES

# The first ranker's service; a model records the service it was trained on (RankerConfig.feature_service).
RANKER_FEATURE_SERVICE = "ranker_v1"
RANKER_V2_SERVICE = "ranker_v2"

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
# What ranker_v2 adds, after the ranker_v1 columns.
RANKER_V2_EXTRA_NAMES: tuple[str, ...] = (
    "user_log_n_events_7d",
    "user_log_n_sessions_30d",
    "user_n_active_days_30d",
    "user_account_age_days",
    "user_avg_session_minutes_7d",
    "user_device",  # index in recsys.vocab.DEVICE_TYPES; NaN when unknown
    "item_log_popularity_7d",
    "item_avg_completion",
    "genre_affinity_30d_dot",  # 30-day affinity (the spec's weights) . item genres
    "recency_affinity_dot",  # recency-weighted affinity . item genres
    "recency_affinity_max",
    "category_affinity_mean",  # the user's shrunk positive rate, averaged over the item's genres
    "category_affinity_max",
    "coview_log_score",  # log1p of the candidate's co-views with the user's recent items
    "coview_share",  # that count over all of the candidate's listed co-views
)
# Columns from the ranker's item-kNN signal (training/item_knn_signal.py), after the service's columns
# when the ranker was trained with it: a model output like the retrieval score, not a Feast feature.
ITEM_KNN_NAMES: tuple[str, ...] = (
    "item_knn_score",  # summed cosine similarity to the user's liked items
    "item_knn_rank",  # its rank among the user's candidates, 0 = most similar
    "item_knn_share",  # the score over the user's best candidate score
)
RANKER_FEATURES_BY_SERVICE: dict[str, tuple[str, ...]] = {
    RANKER_FEATURE_SERVICE: RANKER_FEATURE_NAMES,
    RANKER_V2_SERVICE: RANKER_FEATURE_NAMES + RANKER_V2_EXTRA_NAMES,
}

# The user columns the ranker services serve (a frame of ranker_v1 simply lacks the later ones): named
# once, where the offline tables are defined.
USER_COLUMNS: tuple[str, ...] = USER_FEATURES + USER_ACTIVITY_FEATURES + USER_CROSS_FEATURES
ITEM_COLUMNS: tuple[str, ...] = ITEM_FEATURES


class RankerFeatureError(ValueError):
    """Inputs to the ranker transform that do not line up."""


def ranker_feature_names(service: str) -> tuple[str, ...]:
    """The matrix columns a ranker trained on ``service`` takes.

    >>> ranker_feature_names("ranker_v2")[-1]
    'coview_share'
    """
    try:
        return RANKER_FEATURES_BY_SERVICE[service]
    except KeyError:
        raise RankerFeatureError(
            f"unknown ranker feature service {service!r}; known: {sorted(RANKER_FEATURES_BY_SERVICE)}"
        ) from None


def ranker_columns(service: str, item_knn: bool) -> tuple[str, ...]:
    """The matrix columns of a ranker trained on ``service``, with or without the item-kNN signal.

    >>> ranker_columns("ranker_v2", item_knn=True)[-1]
    'item_knn_share'
    """
    return ranker_feature_names(service) + (ITEM_KNN_NAMES if item_knn else ())


def _scalar(value: Any) -> float:
    """A feature value as float; missing (None, NaN, absent) stays NaN, which LightGBM treats as missing."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _missing(value: Any) -> bool:
    """None or a float NaN: how a frame holds a list feature the store has no value for."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def _genre_row(value: Any) -> np.ndarray:
    """One genre list as a float vector of len(GENRES), NaN kept (the caller zeroes them)."""
    vector: np.ndarray = np.asarray(value, dtype=np.float32).ravel()
    if len(vector) != len(GENRES):
        raise RankerFeatureError(f"genre vector has length {len(vector)}, expected {len(GENRES)}")
    return vector


def _genre_vector(value: Any) -> np.ndarray:
    """A genre list as a float vector of len(GENRES); missing becomes zeros, NaN values too."""
    if _missing(value):
        return np.zeros(len(GENRES), dtype=np.float32)
    vector: np.ndarray = np.nan_to_num(_genre_row(value))
    return vector


def _known_genre_vector(value: Any) -> np.ndarray | None:
    """A genre list as a float vector, or None when missing (unlike ``_genre_vector``, which gives zeros)."""
    if _missing(value):
        return None
    return _genre_vector(value)


def genre_matrix(values: Iterable[Any]) -> np.ndarray:
    """A column of genre lists (lists, arrays; None or NaN when missing) as an (n, len(GENRES)) float32
    matrix: missing rows and NaN values are zeros, a vector of another length is a RankerFeatureError.

    Row for row what ``_genre_vector`` gives, built with one conversion of the present rows (this runs
    for every candidate of every request).

    >>> genre_matrix([[1.0] + [0.0] * 18, None, np.full(19, np.nan)]).sum(axis=1).tolist()
    [1.0, 0.0, 0.0]
    """
    cells = list(values)
    rows = [row for row, value in enumerate(cells) if not _missing(value)]
    if not rows:
        return np.zeros((len(cells), len(GENRES)), dtype=np.float32)
    present = cells if len(rows) == len(cells) else [cells[row] for row in rows]
    try:
        block = np.array(present, dtype=np.float32)
    except (ValueError, TypeError):  # ragged or odd cells: row by row, which says what is wrong
        block = None
    if block is None or block.shape != (len(rows), len(GENRES)):
        block = np.stack([_genre_row(value) for value in present])
    if len(rows) == len(cells):
        out = block
    else:
        out = np.zeros((len(cells), len(GENRES)), dtype=np.float32)
        out[rows] = block
    # One pass for the matrix instead of one per row; NaN -> 0 and +-inf -> the largest float32, as before.
    matrix: np.ndarray = np.nan_to_num(out, copy=False)
    return matrix


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Each candidate's rank by score, 0 = highest; ties keep candidate order.

    >>> _ranks(np.array([0.5, 2.0, 0.0, 2.0])).tolist()
    [2.0, 0.0, 3.0, 1.0]
    """
    rank = np.empty(len(scores), dtype=np.float32)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores), dtype=np.float32)
    return rank


def _log1p_scalar(value: float) -> float:
    return float(np.log1p(max(value, 0.0))) if not np.isnan(value) else float("nan")


def _log1p(values: np.ndarray) -> np.ndarray:
    return np.asarray(np.log1p(np.clip(values, 0, None)), dtype=np.float32)


def build_ranker_matrix(
    user: Mapping[str, Any],
    items: pd.DataFrame,
    retrieval_scores: np.ndarray,
    service: str = RANKER_FEATURE_SERVICE,
    item_knn_scores: np.ndarray | None = None,
) -> np.ndarray:
    """Ranker input for one user's candidates, columns in ``ranker_columns(service, item_knn)`` order.

    Args:
        user: the user's feature row (USER_COLUMNS; missing keys or nulls mean unknown).
        items: one row per candidate with the service's item features (missing columns or nulls mean
            unknown).
        retrieval_scores: (n_candidates,) retrieval scores in the same order as `items`.
        service: the feature service the ranker was trained on.
        item_knn_scores: (n_candidates,) item-kNN signal scores (NaN for a user the signal does not
            know), for a ranker trained with it; None for one trained without.

    Returns:
        (n_candidates, len(ranker_columns(service, item_knn))) float32 matrix; unknown values are NaN.
    """
    names = ranker_columns(service, item_knn_scores is not None)
    scores = np.asarray(retrieval_scores, dtype=np.float32).ravel()
    n = len(items)
    if len(scores) != n:
        raise RankerFeatureError(f"{len(scores)} retrieval scores for {n} candidate items")
    if item_knn_scores is not None and len(item_knn_scores) != n:
        raise RankerFeatureError(f"{len(item_knn_scores)} item-kNN scores for {n} candidate items")
    out = np.full((n, len(names)), np.nan, dtype=np.float32)
    if n == 0:
        return out
    col = {name: i for i, name in enumerate(names)}

    out[:, col["retrieval_score"]] = scores
    out[:, col["retrieval_rank"]] = _ranks(scores)
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
        column = items[name]
        values: np.ndarray
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "iuf":  # numbers: no parsing pass
            values = column.to_numpy(dtype=np.float32)
        else:
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        return values

    out[:, col["item_log_n_events"]] = _log1p(item_column("item_n_events"))
    out[:, col["item_log_n_positive"]] = _log1p(item_column("item_n_positive"))
    out[:, col["item_log_n_events_365d"]] = _log1p(item_column("item_n_events_365d"))
    out[:, col["item_positive_rate"]] = item_column("item_positive_rate")
    age = item_column("item_age_days")
    out[:, col["item_age_days"]] = np.where(age < 0, np.nan, age)

    affinity = _genre_vector(user.get("user_genre_affinity"))  # (n_genres,)
    if "item_genre_vector" in items.columns:
        genres = genre_matrix(items["item_genre_vector"])  # (n, n_genres)
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
    if service == RANKER_V2_SERVICE:
        _v2_columns(out, col, user, items, genres, item_column)
    if item_knn_scores is not None:
        _item_knn_columns(out, col, np.asarray(item_knn_scores, dtype=np.float32).ravel())
    return out


def _item_knn_columns(out: np.ndarray, col: Mapping[str, int], knn: np.ndarray) -> None:
    """Fill the item-kNN columns of ``out`` in place; all NaN for a user the signal does not know."""
    if np.isnan(knn).all():
        return
    best = float(knn.max())
    out[:, col["item_knn_score"]] = knn
    out[:, col["item_knn_rank"]] = _ranks(knn)
    # Users with long histories have larger sums: the share puts every user on one scale.
    out[:, col["item_knn_share"]] = knn / best if best > 0 else np.nan


def _v2_columns(
    out: np.ndarray,
    col: Mapping[str, int],
    user: Mapping[str, Any],
    items: pd.DataFrame,
    genres: np.ndarray,
    item_column: Callable[[str], np.ndarray],
) -> None:
    """Fill ranker_v2's extra columns of ``out`` in place; ``genres`` is the (n, n_genres) multi-hot."""
    n = len(items)
    out[:, col["user_log_n_events_7d"]] = _log1p_scalar(_scalar(user.get("user_n_events_7d")))
    out[:, col["user_log_n_sessions_30d"]] = _log1p_scalar(_scalar(user.get("user_n_sessions_30d")))
    out[:, col["user_n_active_days_30d"]] = _scalar(user.get("user_n_active_days_30d"))
    out[:, col["user_account_age_days"]] = _scalar(user.get("user_account_age_days"))
    out[:, col["user_avg_session_minutes_7d"]] = _scalar(user.get("user_avg_session_minutes_7d"))
    device = user.get("user_preferred_device")
    out[:, col["user_device"]] = DEVICE_TYPES.index(device) if device in DEVICE_TYPES else np.nan
    out[:, col["item_log_popularity_7d"]] = _log1p(item_column("item_popularity_7d"))
    out[:, col["item_avg_completion"]] = item_column("item_avg_completion")

    has_genre = genres > 0  # (n, n_genres)
    n_genres = has_genre.sum(axis=1)  # (n,)
    recent = _known_genre_vector(user.get("user_genre_affinity_30d"))
    if recent is not None:
        out[:, col["genre_affinity_30d_dot"]] = genres @ recent
    recency = _known_genre_vector(user.get("user_recency_affinity"))
    if recency is not None:
        out[:, col["recency_affinity_dot"]] = genres @ recency
        out[:, col["recency_affinity_max"]] = np.where(has_genre, recency[None, :], 0.0).max(axis=1)
    category = _known_genre_vector(user.get("user_category_affinity"))
    if category is not None:
        # Undefined (NaN) for an item without genres: a rate is not zero just because nothing applies.
        total = np.where(has_genre, category[None, :], 0.0).sum(axis=1)  # (n,)
        best = np.where(has_genre, category[None, :], -np.inf).max(axis=1)  # (n,)
        out[:, col["category_affinity_mean"]] = np.where(
            n_genres > 0, total / np.maximum(n_genres, 1), np.nan
        )
        out[:, col["category_affinity_max"]] = np.where(n_genres > 0, best, np.nan)
    empty = pd.Series([None] * n, dtype=object)
    score, share = coview_scores(
        user.get("user_recent_items"),
        items["item_coview_items"] if "item_coview_items" in items.columns else empty,
        items["item_coview_counts"] if "item_coview_counts" in items.columns else empty,
    )
    out[:, col["coview_log_score"]] = np.log1p(score)
    out[:, col["coview_share"]] = share
