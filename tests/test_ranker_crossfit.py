"""The default ranker: a pointwise objective, user folds pick the tree count, one refit on every user."""

from __future__ import annotations

import numpy as np
from factories import planted_ranker_rows as _planted

from recsys.config import RankerConfig
from training.ranker import train_ranker

CFG = RankerConfig(feature_service="ranker_v1", n_estimators=200, min_child_samples=20, num_threads=1)


def test_defaults_are_the_cross_fitted_pointwise_ranker() -> None:
    default = RankerConfig()
    assert (default.objective, default.folds) == ("binary", 5)


def test_cross_fitted_ranker_learns_the_planted_signal_from_every_user() -> None:
    features, labels, groups = _planted(n_users=60)
    labels[: 5 * 20] = 0  # five users without a positive
    result = train_ranker(features, labels, groups, CFG)
    m = result.metrics
    assert m["ranker_folds"] == 5
    # The served trees saw all 55 users with a positive; each of them picked a fold's tree count once.
    assert m["ranker_fit_users"] == 55 and m["ranker_holdout_users"] == 55
    # Every row was scored out of fold for calibration, the five users without a positive included.
    assert m["ranker_calibration_rows"] == 60 * 20 and m["ranker_calibration_in_sample"] == 0.0
    assert m["ranker_holdout_ndcg_at_10"] > 0.9
    # The refit keeps the folds' mean tree count: one tree per round for a binary objective.
    assert result.booster.num_trees() == m["ranker_best_iteration"] >= 1
    test_x, test_y, _ = _planted(n_users=1, seed=1)
    top2 = np.argsort(-result.booster.predict(test_x))[:2]
    assert set(top2) == set(np.flatnonzero(test_y))
    probabilities = result.calibrator.probabilities(result.booster.predict(features))
    assert abs(probabilities.mean() - labels.mean()) < 0.03


def test_folds_never_outnumber_the_users_with_a_positive_and_seeds_repeat() -> None:
    features, labels, groups = _planted(n_users=8)
    labels[3 * 20 :] = 0  # three users with a positive: three folds of one user each
    first = train_ranker(features, labels, groups, CFG)
    assert first.metrics["ranker_folds"] == 3 and first.metrics["ranker_holdout_users"] == 3
    again = train_ranker(features, labels, groups, CFG)
    np.testing.assert_array_equal(first.booster.predict(features), again.booster.predict(features))
