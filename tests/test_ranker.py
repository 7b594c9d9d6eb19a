"""LightGBM lambdarank: it learns a planted signal, ranks in the right direction, rejects bad groups."""

from __future__ import annotations

import numpy as np
import pytest
from factories import SMALL_RANKER as CFG
from factories import planted_ranker_rows as _planted

from training.ranker import RankerDataError, train_ranker
from training.ranker_features import RANKER_FEATURE_NAMES

DOT = RANKER_FEATURE_NAMES.index("genre_affinity_dot")


def test_ranker_learns_the_planted_signal() -> None:
    features, labels, groups = _planted()
    result = train_ranker(features, labels, groups, CFG)
    assert result.metrics["ranker_holdout_ndcg_at_10"] > 0.9
    test_x, test_y, _ = _planted(n_users=1, seed=1)
    top2 = np.argsort(-result.booster.predict(test_x))[:2]
    assert set(top2) == set(np.flatnonzero(test_y))


def test_ranker_score_rises_with_genre_affinity() -> None:
    features, labels, groups = _planted()
    booster = train_ranker(features, labels, groups, CFG).booster
    probe = np.zeros((2, len(RANKER_FEATURE_NAMES)), dtype=np.float32)
    probe[1, DOT] = 2.0
    low, high = booster.predict(probe)
    assert high > low


def test_groups_without_positives_are_dropped_and_bad_shapes_raise() -> None:
    features, labels, groups = _planted(n_users=10)
    labels[:20] = 0  # first user has no positive
    result = train_ranker(features, labels, groups, CFG)
    assert result.metrics["ranker_fit_users"] + result.metrics["ranker_holdout_users"] == 9
    with pytest.raises(RankerDataError, match="mismatch"):
        train_ranker(features, labels, groups[:-1], CFG)
    flat = train_ranker(features, np.zeros_like(labels), groups, CFG)  # no signal: a constant ranker
    assert np.ptp(flat.booster.predict(features)) == 0
