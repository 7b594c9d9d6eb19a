"""The ranker transform, checked value by value on a hand-made user and two candidates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recsys.vocab import GENRES
from training.ranker_features import RANKER_FEATURE_NAMES, RankerFeatureError, build_ranker_matrix


def _genres(**weights: float) -> list[float]:
    return [weights.get(g.replace("-", "_"), 0.0) for g in GENRES]


USER = {
    "user_genre_affinity": _genres(Action=0.5, Comedy=0.25, Drama=0.25),
    "user_n_events": 9,
    "user_n_positive": 3,
    "user_n_events_30d": 0,
    "user_days_since_first_event": 100.0,
    "user_days_since_last_event": 2.5,
}
ITEMS = pd.DataFrame(
    {
        "item_genre_vector": [_genres(Action=1, Drama=1), _genres(Horror=1)],
        "item_n_events": [99, 0],
        "item_n_positive": [49, None],
        "item_n_events_365d": [9, 0],
        "item_positive_rate": [0.5, 0.1],
        "item_age_days": [365.0, -1.0],
    }
)


def _row(matrix: np.ndarray, i: int) -> dict[str, float]:
    return dict(zip(RANKER_FEATURE_NAMES, matrix[i].tolist(), strict=True))


def test_values_by_hand() -> None:
    matrix = build_ranker_matrix(USER, ITEMS, np.array([0.2, 0.7]))
    assert matrix.shape == (2, len(RANKER_FEATURE_NAMES)) and matrix.dtype == np.float32
    first, second = _row(matrix, 0), _row(matrix, 1)
    assert first["retrieval_rank"] == 1 and second["retrieval_rank"] == 0
    assert first["retrieval_score_gap"] == pytest.approx(-0.5)
    assert first["user_log_n_events"] == pytest.approx(math.log(10))
    assert first["user_positive_rate"] == pytest.approx(1 / 3)
    assert first["user_log_n_events_30d"] == 0.0
    assert first["user_days_since_last_event"] == 2.5
    assert first["item_log_n_events"] == pytest.approx(math.log(100))
    assert first["item_log_n_positive"] == pytest.approx(math.log(50))
    assert math.isnan(second["item_log_n_positive"])
    assert first["item_age_days"] == 365.0 and math.isnan(second["item_age_days"])
    assert first["item_n_genres"] == 2
    assert first["genre_affinity_dot"] == pytest.approx(0.75)
    assert first["genre_affinity_max"] == pytest.approx(0.5)
    assert first["genre_affinity_mean"] == pytest.approx(0.375)
    assert second["genre_affinity_dot"] == 0.0 and second["genre_affinity_max"] == 0.0


def test_unknown_user_and_missing_columns_become_nan_not_errors() -> None:
    matrix = build_ranker_matrix({}, pd.DataFrame({"item_id": ["a"]}), np.array([1.0]))
    row = _row(matrix, 0)
    assert math.isnan(row["user_log_n_events"]) and math.isnan(row["item_positive_rate"])
    assert row["genre_affinity_dot"] == 0.0 and row["retrieval_rank"] == 0


def test_mismatched_inputs_raise() -> None:
    with pytest.raises(RankerFeatureError, match="2 retrieval scores for 1"):
        build_ranker_matrix(USER, ITEMS.iloc[:1], np.array([0.1, 0.2]))
    with pytest.raises(RankerFeatureError, match="genre vector"):
        build_ranker_matrix({"user_genre_affinity": [1.0, 0.0]}, ITEMS, np.zeros(2))


def test_empty_candidates_give_an_empty_matrix() -> None:
    assert build_ranker_matrix(USER, ITEMS.iloc[:0], np.zeros(0)).shape == (0, len(RANKER_FEATURE_NAMES))
