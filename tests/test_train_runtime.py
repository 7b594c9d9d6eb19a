"""Artefacts written by training load back into the runtime models that evaluation and serving use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.config import RankerConfig
from recsys.vocab import GENRES
from training.ranker import train_ranker
from training.ranker_features import RANKER_FEATURE_NAMES
from training.runtime import (
    ArtifactError,
    RankingModel,
    RetrievalModel,
    write_ranker_artifacts,
    write_retrieval_artifacts,
)
from training.two_tower import TwoTowerModel, TwoTowerModelConfig

CONFIG = TwoTowerModelConfig(n_users=3, n_items=4, n_genres=len(GENRES), embedding_dim=8, hidden_dim=8)
CATALOG = ["i1", "i2", "i3", "i4", "i5"]


def _retrieval(tmp_path: Path) -> RetrievalModel:
    torch.manual_seed(0)
    model = TwoTowerModel(CONFIG)
    embeddings = np.eye(5, 8, dtype=np.float32)
    write_retrieval_artifacts(
        tmp_path / "tt",
        model.state_dict(),
        CONFIG,
        user_ids=["u1", "u2"],
        item_ids=["i1", "i2", "i3"],
        catalog_item_ids=CATALOG,
        item_embeddings=embeddings,
        seen={"u1": ["i1", "i2"]},
        popularity=[("i3", 10.0), ("i1", 5.0), ("i5", 1.0)],
    )
    return RetrievalModel.load(tmp_path / "tt", "7")


def test_retrieve_never_returns_seen_items(tmp_path: Path) -> None:
    model = _retrieval(tmp_path)
    assert model.version == "7" and model.knows_user("u1") and not model.knows_user("stranger")
    items, scores = model.retrieve("u1", {"user_genre_affinity": [1.0 / len(GENRES)] * len(GENRES)}, 5)
    assert sorted(items) == ["i3", "i4", "i5"]
    assert list(scores) == sorted(scores, reverse=True)
    items, scores = model.retrieve("u1", {}, 5, exclude={"i3"})
    assert sorted(items) == ["i4", "i5"]
    rows, row_scores = model.retrieve_rows("u1", {}, 5, exclude={"i3"})
    assert rows.tolist() == [CATALOG.index(i) for i in items] and row_scores.tolist() == scores.tolist()


def test_retrieve_scores_match_the_towers(tmp_path: Path) -> None:
    model = _retrieval(tmp_path)
    query = model.embed_users(["stranger"], pd.DataFrame([{}]))  # unknown user: row 0 and zero features
    items, scores = model.retrieve("stranger", {}, 5)
    expected = (np.eye(5, 8) @ query[0])[[CATALOG.index(i) for i in items]]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_new_items_become_retrievable_without_a_rebuild(tmp_path: Path) -> None:
    model = _retrieval(tmp_path)
    features = pd.DataFrame({"item_genre_vector": [[1.0] + [0.0] * (len(GENRES) - 1)] * 2})
    assert model.add_items(["new", "i1"], features) == 1  # i1 is in the catalogue already
    assert model.add_items(["new"], features.iloc[:1]) == 0
    assert model.catalog[-1] == "new" and len(model.index) == len(CATALOG) + 1
    query = model.embed_users(["stranger"], pd.DataFrame([{}]))
    expected = model.embed_items(["new"], features.iloc[:1]) @ query[0]
    items, scores = model.retrieve("stranger", {}, len(CATALOG) + 1)
    assert "new" in items
    np.testing.assert_allclose(scores[items.index("new")], expected[0], rtol=1e-5, atol=1e-6)


def test_popular_fallback(tmp_path: Path) -> None:
    model = _retrieval(tmp_path)
    items, scores = model.popular(2)
    assert items == ["i3", "i1"] and scores.tolist() == [10.0, 5.0]
    assert model.popular(5, exclude={"i1"})[0] == ["i3", "i5"]


def test_ranking_model_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, len(RANKER_FEATURE_NAMES))).astype(np.float32)
    labels = (features[:, 0] > 1).astype(np.float32)
    cfg = RankerConfig(
        n_candidates=10, n_estimators=10, min_child_samples=2, num_threads=1, feature_service="ranker_v1"
    )
    trained = train_ranker(features, labels, np.full(20, 10), cfg)
    write_ranker_artifacts(tmp_path / "rk", trained.booster, trained.calibrator)
    model = RankingModel.load(tmp_path / "rk", "3")
    items = pd.DataFrame({"item_n_events": [1, 2, 3]})
    scores = model.score({"user_n_events": 4}, items, np.array([0.9, 0.1, 0.5]))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    probabilities = model.probabilities(scores)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert (np.argsort(probabilities) == np.argsort(scores)).all()  # calibration never reorders
    assert model.feature_service == "ranker_v1"


HISTORY_CONFIG = TwoTowerModelConfig(
    n_users=3, n_items=4, n_genres=len(GENRES), embedding_dim=8, hidden_dim=8, history_length=2
)


def _history_retrieval(tmp_path: Path) -> tuple[RetrievalModel, TwoTowerModel]:
    torch.manual_seed(0)
    model = TwoTowerModel(HISTORY_CONFIG)
    write_retrieval_artifacts(
        tmp_path / "tt",
        model.state_dict(),
        HISTORY_CONFIG,
        user_ids=["u1", "u2"],
        item_ids=["i1", "i2", "i3"],
        catalog_item_ids=CATALOG,
        item_embeddings=np.eye(5, 8, dtype=np.float32),
        seen={"u1": ["i1", "i2", "i3"]},
        popularity=[("i3", 10.0)],
        history={"u1": ["i1", "i2", "i3"], "u2": []},  # only the newest 2 are kept
    )
    return RetrievalModel.load(tmp_path / "tt", "8"), model


def test_served_history_is_the_stored_one_and_feeds_the_user_tower(tmp_path: Path) -> None:
    retrieval, model = _history_retrieval(tmp_path)
    assert retrieval.history_length == 2 and retrieval.recent_items("u1") == ["i2", "i3"]
    assert retrieval.recent_items("u2") == [] and retrieval.recent_items("stranger") == []
    features = pd.DataFrame([{}])
    stored = retrieval.embed_users(["u1"], features)
    np.testing.assert_allclose(stored, retrieval.embed_users(["u1"], features, [["i2", "i3"]]), atol=1e-6)
    with torch.no_grad():  # the towers by hand: item rows 2 and 3, unknown "zzz" is padding
        dense = torch.zeros(1, HISTORY_CONFIG.user_dense_dim)
        expected = model.user_embedding(torch.tensor([1]), dense, torch.tensor([[2, 3]])).numpy()
    np.testing.assert_allclose(stored, expected, atol=1e-6)
    np.testing.assert_allclose(
        retrieval.embed_users(["u1"], features, [["zzz", "i2", "i3"]]), stored, atol=1e-6
    )
    empty = retrieval.embed_users(["u1"], features, [[]])
    assert not np.allclose(empty, stored)
    with pytest.raises(ValueError, match="histories"):
        retrieval.embed_users(["u1", "u2"], pd.DataFrame([{}, {}]), [[]])


def test_artefacts_without_history_still_load_and_a_broken_one_says_why(tmp_path: Path) -> None:
    _retrieval(tmp_path)
    config_file = tmp_path / "tt" / "model_config.json"
    old = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("history")}
    config_file.write_text(json.dumps(old))  # as written before the history input existed
    assert RetrievalModel.load(tmp_path / "tt", "7").history_length == 0
    config_file.write_text(json.dumps({**old, "history_length": 2}))
    with pytest.raises(ArtifactError, match="do not fit"):  # weights without the history input
        RetrievalModel.load(tmp_path / "tt", "7")
    config_file.write_text(json.dumps({**old, "towers": 3}))
    with pytest.raises(ArtifactError, match="two-tower model"):
        RetrievalModel.load(tmp_path / "tt", "7")
    _history_retrieval(tmp_path / "h")
    (tmp_path / "h" / "tt" / "history.json").unlink()
    with pytest.raises(ArtifactError, match=r"missing: .*history\.json"):
        RetrievalModel.load(tmp_path / "h" / "tt", "8")


def test_missing_artefacts_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        RetrievalModel.load(tmp_path, "1")
    with pytest.raises(ArtifactError, match="missing"):
        RankingModel.load(tmp_path, "1")
