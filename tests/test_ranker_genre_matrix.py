"""The vectorised genre transform: a column of genre cells (lists, arrays, None, NaN) becomes the matrix
computed here by hand, and the ranker matrix built from it equals, bit for bit, the one the row-by-row
conversion gave (the transform training and serving share)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recsys.vocab import GENRES
from serving.reranking import genre_matrix as rerank_genre_matrix
from training.ranker_features import (
    RANKER_FEATURE_NAMES,
    RankerFeatureError,
    _genre_vector,
    build_ranker_matrix,
    genre_matrix,
)

G = len(GENRES)
ACTION, COMEDY, DRAMA = GENRES.index("Action"), GENRES.index("Comedy"), GENRES.index("Drama")


def _hot(*columns: int, value: float = 1.0) -> list[float]:
    vector = [0.0] * G
    for column in columns:
        vector[column] = value
    return vector


def _cells() -> list[object]:
    with_nan = _hot(ACTION, DRAMA)
    with_nan[COMEDY] = float("nan")  # a NaN inside a vector counts as 0
    return [
        _hot(ACTION),  # a list
        None,  # no value
        np.asarray(_hot(COMEDY, DRAMA), dtype=np.float32),  # an array, as an offline frame holds it
        float("nan"),  # a missing list after a merge
        with_nan,
        np.asarray(_hot(DRAMA, value=0.5), dtype=np.float64),
    ]


# Row by row, by hand: the genres each row holds, zeros elsewhere.
EXPECTED = np.zeros((6, G), dtype=np.float32)
EXPECTED[0, ACTION] = 1.0
EXPECTED[2, [COMEDY, DRAMA]] = 1.0
EXPECTED[4, [ACTION, DRAMA]] = 1.0
EXPECTED[5, DRAMA] = 0.5


def test_genre_cells_become_the_matrix_by_hand() -> None:
    matrix = genre_matrix(_cells())
    assert matrix.dtype == np.float32 and matrix.shape == (6, G)
    np.testing.assert_array_equal(matrix, EXPECTED)
    # The same rows the one-row conversion gives (the user's affinity still goes through it).
    np.testing.assert_array_equal(matrix, np.stack([_genre_vector(cell) for cell in _cells()]))
    assert genre_matrix([None, float("nan")]).tolist() == [[0.0] * G, [0.0] * G]
    assert genre_matrix([]).shape == (0, G)
    # Infinities become the largest float32, as numpy's nan_to_num always made them.
    assert genre_matrix([_hot(ACTION, value=math.inf)])[0, ACTION] == np.finfo(np.float32).max


def test_a_genre_vector_of_another_length_is_refused() -> None:
    with pytest.raises(RankerFeatureError, match=f"length 3, expected {G}"):
        genre_matrix([_hot(ACTION), [1.0, 0.0, 0.0]])
    with pytest.raises(RankerFeatureError, match=f"length 1, expected {G}"):
        genre_matrix([_hot(ACTION), 2.0])
    # A (1, n_genres) cell is one vector, as before.
    np.testing.assert_array_equal(genre_matrix([np.ones((1, G))]), np.ones((1, G), dtype=np.float32))


def test_ranker_matrix_genre_columns_by_hand() -> None:
    affinity = _hot(ACTION, value=0.5)
    affinity[COMEDY], affinity[DRAMA] = 0.25, 0.25
    user = {"user_genre_affinity": affinity, "user_n_events": 4}
    items = pd.DataFrame({"item_genre_vector": pd.Series(_cells(), dtype=object)})
    matrix = build_ranker_matrix(user, items, np.arange(6, dtype=np.float32))
    column = {name: matrix[:, j].tolist() for j, name in enumerate(RANKER_FEATURE_NAMES)}
    assert column["item_n_genres"] == [1.0, 0.0, 2.0, 0.0, 2.0, 0.5]
    assert column["genre_affinity_dot"] == [0.5, 0.0, 0.5, 0.0, 0.75, 0.125]
    assert column["genre_affinity_max"] == [0.5, 0.0, 0.25, 0.0, 0.5, 0.25]
    assert column["genre_affinity_mean"] == [0.5, 0.0, 0.25, 0.0, 0.375, 0.25]


def test_rerank_genre_matrix_takes_the_same_cells() -> None:
    cells = [*_cells(), [1.0, 0.0], "Action"]  # re-ranking skips cells it cannot use instead of failing
    matrix = rerank_genre_matrix(cells, len(cells), G)
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix[:6], EXPECTED.astype(np.float64))
    assert not matrix[6:].any()
