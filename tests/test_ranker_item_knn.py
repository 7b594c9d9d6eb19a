"""The ranker's item-kNN signal: the baseline's score for any candidates, its columns by hand, its artefact,
and a ranker trained with it scoring the same in serving as in training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.config import RankerConfig
from serving.stages import Candidates, RankingStage
from training.baselines import ItemKNN
from training.item_knn_signal import ITEM_KNN_FILE, ItemKNNSignal, ItemKNNSignalError
from training.ranker import train_ranker
from training.ranker_features import (
    ITEM_KNN_NAMES,
    RankerFeatureError,
    build_ranker_matrix,
    ranker_columns,
)
from training.runtime import ArtifactError, RankingModel, write_ranker_artifacts

# u likes a and b; v likes a, b and c; w likes c and d; x only views a (no positive).
EVENTS = pd.DataFrame(
    {
        "user_id": ["u", "u", "v", "v", "v", "w", "w", "x"],
        "item_id": ["a", "b", "a", "b", "c", "c", "d", "a"],
        "event_type": ["like"] * 7 + ["view"],
        "event_ts": pd.Timestamp("2021-01-01", tz="UTC"),
    }
)


def test_the_signal_is_item_knn_summed_over_every_liked_item() -> None:
    signal = ItemKNNSignal.fit(EVENTS)
    # Likers: a {u, v}, b {u, v}, c {v, w}, d {w}. Cosine = shared likers / sqrt(|A| |B|):
    # a-c = 1/2, b-c = 1/2, c-d = 1/sqrt(2), a-b = 1, a-d = b-d = 0.
    u = signal.scores("u", ["c", "d", "a", "zz"])
    np.testing.assert_allclose(u, [0.5 + 0.5, 0.0, 1.0, 0.0], rtol=1e-6)
    w = signal.scores("w", ["a", "b"])
    np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-6)
    # The same numbers as the item-kNN baseline's own scores for the user's row.
    knn = ItemKNN().fit(EVENTS)
    row = knn.users.index("u")
    full = np.asarray((knn.history[row] @ knn.neighbours).todense()).ravel()
    expected = [full[knn.catalogue.index(i)] for i in ("c", "d", "a")]
    np.testing.assert_allclose(u[:3], expected, rtol=1e-6)


def test_a_user_without_likes_is_unknown_not_dissimilar() -> None:
    signal = ItemKNNSignal.fit(EVENTS)
    assert np.isnan(signal.scores("x", ["a", "b"])).all()  # only a view
    assert np.isnan(signal.scores(None, ["a"])).all()
    assert signal.scores("u", []).shape == (0,)


def test_neighbours_are_truncated_per_item() -> None:
    one = ItemKNNSignal.fit(EVENTS, n_neighbours=1)
    assert one.n_neighbours == 1 and np.diff(one.neighbours.indptr).max() == 1
    # a and b keep only each other (1.0 beats c's 1/2): u, who likes a and b, no longer reaches c.
    assert one.scores("u", ["c", "a"]).tolist() == [0.0, 1.0]
    assert ItemKNNSignal.fit(EVENTS).scores("u", ["c"]).tolist() == [1.0]


def test_the_artefact_round_trips_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    signal = ItemKNNSignal.fit(EVENTS)
    signal.save(tmp_path / ITEM_KNN_FILE)
    loaded = ItemKNNSignal.load(tmp_path / ITEM_KNN_FILE)
    assert loaded.catalogue == signal.catalogue and loaded.users == signal.users
    np.testing.assert_array_equal(loaded.scores("u", ["c", "d"]), signal.scores("u", ["c", "d"]))
    with pytest.raises(ItemKNNSignalError, match="missing"):
        ItemKNNSignal.load(tmp_path / "nothing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ItemKNNSignalError, match="unreadable"):
        ItemKNNSignal.load(tmp_path / "bad.npz")


def test_the_columns_by_hand() -> None:
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"]})
    knn = np.array([0.5, 2.0, 0.0, 2.0], dtype=np.float32)
    matrix = build_ranker_matrix({}, items, np.zeros(4), "ranker_v1", item_knn_scores=knn)
    names = ranker_columns("ranker_v1", item_knn=True)
    assert matrix.shape == (4, len(names)) and names[-3:] == ITEM_KNN_NAMES
    column = {name: matrix[:, names.index(name)].tolist() for name in ITEM_KNN_NAMES}
    assert column["item_knn_score"] == [0.5, 2.0, 0.0, 2.0]
    assert column["item_knn_rank"] == [2.0, 0.0, 3.0, 1.0]  # ties keep candidate order
    assert column["item_knn_share"] == [0.25, 1.0, 0.0, 1.0]
    # The other columns are the ones a ranker without the signal gets.
    without = build_ranker_matrix({}, items, np.zeros(4), "ranker_v1")
    np.testing.assert_array_equal(matrix[:, : without.shape[1]], without)


def test_unknown_users_and_nothing_similar_stay_missing() -> None:
    items = pd.DataFrame({"item_id": ["a", "b"]})
    unknown = build_ranker_matrix({}, items, np.zeros(2), "ranker_v1", item_knn_scores=np.full(2, np.nan))
    assert np.isnan(unknown[:, -3:]).all()
    flat = build_ranker_matrix({}, items, np.zeros(2), "ranker_v1", item_knn_scores=np.zeros(2))
    assert flat[:, -3].tolist() == [0.0, 0.0] and np.isnan(flat[:, -1]).all()  # no share of nothing
    with pytest.raises(RankerFeatureError, match="1 item-kNN scores for 2"):
        build_ranker_matrix({}, items, np.zeros(2), "ranker_v1", item_knn_scores=np.zeros(1))


def _knn_model(directory: Path) -> RankingModel:
    """A ranker that learnt to follow the item-kNN score, with the signal fitted on EVENTS beside it."""
    rng = np.random.default_rng(0)
    names = ranker_columns("ranker_v1", item_knn=True)
    features = rng.normal(size=(300, len(names))).astype(np.float32)
    labels = (features[:, names.index("item_knn_score")] > 0.5).astype(np.float32)
    cfg = RankerConfig(n_estimators=20, min_child_samples=2, num_threads=1, feature_service="ranker_v1")
    trained = train_ranker(features, labels, np.full(30, 10), cfg, item_knn=True)
    write_ranker_artifacts(
        directory, trained.booster, trained.calibrator, "ranker_v1", ItemKNNSignal.fit(EVENTS)
    )
    return RankingModel.load(directory, "3")


def test_a_ranker_trained_with_the_signal_serves_with_it(tmp_path: Path) -> None:
    model = _knn_model(tmp_path / "rk")
    assert model.item_knn is not None and model.item_knn.users == ["u", "v", "w"]
    items = pd.DataFrame({"item_id": ["d", "c", "zz"]})

    def read(service: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
        return items.iloc[: len(rows)].reset_index(drop=True)

    ranked = RankingStage(model, read).rank("u", Candidates(["d", "c", "zz"], [0.3, 0.2, 0.1], "1"))
    # u likes a and b: c (similarity 1.0) goes first although retrieval put d first.
    assert ranked.item_ids[0] == "c"
    knn = model.item_knn.scores("u", ["d", "c", "zz"])
    expected = model.predict_matrix(
        build_ranker_matrix({}, items, np.array([0.3, 0.2, 0.1]), "ranker_v1", item_knn_scores=knn)
    )
    direct = model.score({}, items, np.array([0.3, 0.2, 0.1]), user_id="u", item_ids=["d", "c", "zz"])
    np.testing.assert_allclose(direct, expected)
    with pytest.raises(ValueError, match="item-kNN"):
        model.score({}, items, np.array([0.3, 0.2, 0.1]))


def test_as_of_refits_the_signal_on_the_history_given(tmp_path: Path) -> None:
    model = _knn_model(tmp_path / "rk")
    before = model.as_of(EVENTS[EVENTS["user_id"] != "v"])
    assert before.item_knn is not None and before.item_knn.users == ["u", "w"]
    # Without v, nobody liked c together with a or b.
    assert before.item_knn.scores("u", ["c"]).tolist() == [0.0]
    assert model.item_knn is not None and model.item_knn.scores("u", ["c"]).tolist() == [1.0]


def test_a_missing_or_corrupt_signal_artefact_is_refused_at_load(tmp_path: Path) -> None:
    _knn_model(tmp_path / "rk")
    (tmp_path / "rk" / ITEM_KNN_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(ArtifactError, match="item-kNN artefact unreadable"):
        RankingModel.load(tmp_path / "rk", "3")
    (tmp_path / "rk" / ITEM_KNN_FILE).unlink()
    with pytest.raises(ArtifactError, match="item-kNN artefact missing"):
        RankingModel.load(tmp_path / "rk", "3")


def test_a_ranker_without_the_signal_loads_without_one(tmp_path: Path) -> None:
    names = ranker_columns("ranker_v1", item_knn=False)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(100, len(names))).astype(np.float32)
    cfg = RankerConfig(n_estimators=5, min_child_samples=2, num_threads=1, feature_service="ranker_v1")
    trained = train_ranker(features, (features[:, 0] > 0).astype(np.float32), np.full(10, 10), cfg)
    write_ranker_artifacts(tmp_path / "rk", trained.booster, trained.calibrator, "ranker_v1")
    model = RankingModel.load(tmp_path / "rk", "1")
    assert model.item_knn is None and model.as_of(EVENTS) is model
    assert not (tmp_path / "rk" / ITEM_KNN_FILE).exists()
    assert not math.isnan(float(model.score({}, pd.DataFrame({"item_id": ["a"]}), np.zeros(1))[0]))


def test_the_live_session_joins_the_liked_items_in_serving(tmp_path: Path) -> None:
    model = _knn_model(tmp_path / "rk")
    items = pd.DataFrame({"item_id": ["d", "c"]})

    def read(service: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
        return items.iloc[: len(rows)].reset_index(drop=True)

    stage = RankingStage(model, read)
    # A user the signal does not know: without a session the columns are missing, with one they are not.
    assert model.item_knn is not None and np.isnan(model.item_knn.scores("new", ["d", "c"])).all()
    session = Candidates(["d", "c"], [0.3, 0.2], "1", details={"session_items": ["a", "b"]})
    ranked = stage.rank("new", session)
    assert ranked.item_ids[0] == "c"  # c is similar to a and b (1.0), d to neither
    np.testing.assert_allclose(model.item_knn.scores("new", ["d", "c"], also_liked=["a", "b"]), [0.0, 1.0])
