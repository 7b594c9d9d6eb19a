"""ranker_v2: the co-view score, the extra columns by hand, and a model that carries its feature service
from training into the serving ranking stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest

from recsys.config import RankerConfig
from recsys.features.coview import coview_scores
from recsys.vocab import GENRES
from serving.stages import Candidates, RankingStage
from training.ranker import train_ranker
from training.ranker_features import (
    RANKER_FEATURE_NAMES,
    RankerFeatureError,
    build_ranker_matrix,
    ranker_feature_names,
)
from training.runtime import ArtifactError, RankingModel, write_ranker_artifacts

V2: Literal["ranker_v2"] = "ranker_v2"


def _genres(**weights: float) -> list[float]:
    return [weights.get(g.replace("-", "_"), 0.0) for g in GENRES]


USER = {
    "user_genre_affinity": _genres(Action=1.0),
    "user_n_events": 9,
    "user_n_positive": 3,
    "user_genre_affinity_30d": _genres(Action=0.25, Drama=0.75),
    "user_account_age_days": 40.0,
    "user_avg_session_minutes_7d": None,
    "user_preferred_device": "tv",
    "user_n_events_7d": 3,
    "user_n_sessions_7d": 1,
    "user_n_sessions_30d": 7,
    "user_n_active_days_30d": 4,
    "user_category_affinity": _genres(Action=0.5, Drama=0.9, Horror=0.1),
    "user_recency_affinity": _genres(Action=0.6, Drama=0.4),
    "user_recent_items": ["x", "y"],
}
ITEMS = pd.DataFrame(
    {
        "item_id": ["a", "b", "c"],
        "item_genre_vector": [_genres(Action=1, Drama=1), _genres(Horror=1), _genres()],
        "item_popularity_7d": [3, 0, None],
        "item_avg_completion": [0.75, None, 0.1],
        "item_coview_items": [["x", "q", "y"], ["q"], None],
        "item_coview_counts": [[4, 3, 1], [2], None],
    }
)


def test_coview_scores_by_hand() -> None:
    score, share = coview_scores(["x", "y"], ITEMS["item_coview_items"], ITEMS["item_coview_counts"])
    assert score.tolist() == [5.0, 0.0, 0.0]  # x 4 + y 1; b's only neighbour is not recent; c has none
    np.testing.assert_allclose(share, [5 / 8, 0.0, np.nan])
    # A user without a snapshot: unknown, not "never co-viewed".
    unknown, unknown_share = coview_scores(None, [["x"]], [[1]])
    assert np.isnan(unknown).all() and np.isnan(unknown_share).all()
    # No recent items (a user who only skipped): known to be zero.
    assert coview_scores([], [["x"]], [[1]])[0].tolist() == [0.0]


def test_coview_scores_take_arrays_as_the_offline_store_returns_them() -> None:
    # Feast's historical reads give NumPy arrays where serving's packed reads give lists: same scores.
    neighbours = [np.array(["x", "q", "y"]), np.array(["q"]), float("nan")]
    counts = [np.array([4, 3, 1]), np.array([2]), float("nan")]
    score, share = coview_scores(np.array(["x", "y"]), neighbours, counts)
    assert score.tolist() == [5.0, 0.0, 0.0]
    np.testing.assert_allclose(share, [5 / 8, 0.0, np.nan])
    # A zero total: the share is undefined, not a division by zero.
    assert np.isnan(coview_scores(["x"], [["x"]], [[0]])[1]).all()


def test_coview_scores_refuse_counts_that_do_not_line_up() -> None:
    with pytest.raises(ValueError, match="candidate 1: 2 co-viewed items but 1 counts"):
        coview_scores(["x"], [["x"], ["x", "y"]], [[1], [3]])


def test_v2_columns_by_hand() -> None:
    matrix = build_ranker_matrix(USER, ITEMS, np.array([0.3, 0.2, 0.1]), V2)
    names = ranker_feature_names(V2)
    assert matrix.shape == (3, len(names)) and names[: len(RANKER_FEATURE_NAMES)] == RANKER_FEATURE_NAMES
    a, b, c = (dict(zip(names, row.tolist(), strict=True)) for row in matrix)
    assert a["user_log_n_events_7d"] == pytest.approx(math.log(4))
    assert a["user_log_n_sessions_30d"] == pytest.approx(math.log(8))
    assert (a["user_n_active_days_30d"], a["user_account_age_days"]) == (4, 40)
    assert math.isnan(a["user_avg_session_minutes_7d"])
    assert a["user_device"] == 2  # DEVICE_TYPES.index("tv")
    assert [r["item_log_popularity_7d"] for r in (a, b)] == pytest.approx([math.log(4), 0.0])
    assert math.isnan(c["item_log_popularity_7d"]) and math.isnan(b["item_avg_completion"])
    assert a["item_avg_completion"] == pytest.approx(0.75)
    assert a["genre_affinity_30d_dot"] == pytest.approx(1.0) and b["genre_affinity_30d_dot"] == 0
    assert (a["recency_affinity_dot"], a["recency_affinity_max"]) == pytest.approx((1.0, 0.6))
    assert (a["category_affinity_mean"], a["category_affinity_max"]) == pytest.approx((0.7, 0.9))
    assert (b["category_affinity_mean"], b["category_affinity_max"]) == pytest.approx((0.1, 0.1))
    assert math.isnan(c["category_affinity_mean"]) and math.isnan(c["category_affinity_max"])  # no genres
    assert (a["coview_log_score"], a["coview_share"]) == pytest.approx((math.log(6), 5 / 8))
    assert b["coview_log_score"] == 0 and math.isnan(c["coview_share"])
    # ranker_v1 columns are the same whichever service builds them.
    v1 = build_ranker_matrix(USER, ITEMS, np.array([0.3, 0.2, 0.1]))
    np.testing.assert_array_equal(matrix[:, : len(RANKER_FEATURE_NAMES)], v1)


def test_v2_degrades_to_missing_for_an_unknown_user() -> None:
    matrix = build_ranker_matrix({}, ITEMS[["item_id"]], np.zeros(3), V2)
    names = ranker_feature_names(V2)
    row = dict(zip(names, matrix[0].tolist(), strict=True))
    for name in ("user_device", "category_affinity_mean", "recency_affinity_dot", "coview_log_score"):
        assert math.isnan(row[name]), name


def test_unknown_service_is_refused() -> None:
    with pytest.raises(RankerFeatureError, match="ranker_v9"):
        build_ranker_matrix(USER, ITEMS, np.zeros(3), "ranker_v9")


def _v2_model(directory: Path) -> RankingModel:
    rng = np.random.default_rng(0)
    names = ranker_feature_names(V2)
    features = rng.normal(size=(200, len(names))).astype(np.float32)
    labels = (features[:, names.index("coview_log_score")] > 0.5).astype(np.float32)
    cfg = RankerConfig(n_estimators=10, min_child_samples=2, num_threads=1, feature_service=V2)
    trained = train_ranker(features, labels, np.full(20, 10), cfg)
    write_ranker_artifacts(directory, trained.booster, trained.calibrator, V2)
    return RankingModel.load(directory, "7")


def test_a_model_trained_on_v2_is_served_with_v2(tmp_path: Path) -> None:
    model = _v2_model(tmp_path / "rk")
    assert model.feature_service == V2
    asked: list[str] = []

    def read(service: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
        asked.append(service)
        users = pd.DataFrame([dict(USER)] * len(rows))
        return pd.concat([users, ITEMS.iloc[: len(rows)].reset_index(drop=True)], axis=1)

    stage = RankingStage(model, read)
    ranked = stage.rank("u", Candidates(["a", "b", "c"], [0.3, 0.2, 0.1], "1"))
    assert asked == [V2] and sorted(ranked.item_ids) == ["a", "b", "c"]
    expected = model.predict_matrix(build_ranker_matrix(USER, ITEMS, np.array([0.3, 0.2, 0.1]), V2))
    assert ranked.item_ids == [ITEMS.item_id[i] for i in np.argsort(-expected, kind="stable")]


def test_artifacts_whose_features_do_not_match_their_service_are_refused(tmp_path: Path) -> None:
    _v2_model(tmp_path / "rk")
    names = tmp_path / "rk" / "feature_names.json"
    names.write_text(names.read_text().replace(V2, "ranker_v1"))
    with pytest.raises(ArtifactError, match="ranker_v1"):
        RankingModel.load(tmp_path / "rk", "7")
