"""The two-tower item tower with content embeddings: lookup by time, artefacts, and unseen items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.vocab import GENRES
from training.runtime import ArtifactError, ItemContent, RetrievalModel, write_retrieval_artifacts
from training.two_tower import TwoTowerModel, TwoTowerModelConfig, in_batch_softmax_loss, item_dense_features

DIM = 4
T1, T2 = pd.Timestamp("2001-01-01", tz="UTC"), pd.Timestamp("2005-01-01", tz="UTC")


def _us(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


CONTENT = ItemContent(
    ["a", "b"], np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32), np.array([_us(T1), _us(T2)])
)


def test_content_rows_leave_out_what_was_not_known_yet_and_fall_back_to_features() -> None:
    as_of = pd.Series([T1, T1, T2, T2])
    rows = CONTENT.rows(["a", "b", "b", "x"], as_of=as_of)
    np.testing.assert_array_equal(rows, [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    # An item the table lacks (a new one) takes the content its features carry.
    features = pd.DataFrame({"item_content_embedding": [None, [0.0, 0.0, 0.5, 0.5]]})
    np.testing.assert_array_equal(
        CONTENT.rows(["a", "x"], features=features), [[1, 0, 0, 0], [0, 0, 0.5, 0.5]]
    )
    dense = item_dense_features(
        np.zeros((2, len(GENRES))), np.zeros(2), np.zeros(2), CONTENT.rows(["a", "x"])
    )
    assert dense.shape == (2, len(GENRES) + 2 + DIM)


def test_content_from_feature_rows_drops_items_without_a_vector() -> None:
    rows = pd.DataFrame(
        {
            "item_id": ["a", "b"],
            "item_content_embedding": [[0.6, 0.8, 0.0, 0.0], None],
            "item_content__feature_ts": [T1, pd.NaT],
        }
    )
    content = ItemContent.from_rows(rows)
    assert content.item_ids == ["a"] and content.dim == DIM
    assert content.known_at_us.tolist() == [_us(T1)]


def _model(tmp_path: Path, content: ItemContent | None) -> RetrievalModel:
    config = TwoTowerModelConfig(
        n_users=2, n_items=3, n_genres=len(GENRES), embedding_dim=8, hidden_dim=8, content_dim=DIM
    )
    torch.manual_seed(0)
    write_retrieval_artifacts(
        tmp_path / "tt",
        TwoTowerModel(config).state_dict(),
        config,
        user_ids=["u1"],
        item_ids=["a", "b"],
        catalog_item_ids=["a", "b"],
        item_embeddings=np.eye(2, 8, dtype=np.float32),
        seen={},
        popularity=[("a", 1.0)],
        content=content,
    )
    return RetrievalModel.load(tmp_path / "tt", "1")


def test_a_content_model_keeps_its_content_and_tells_unseen_items_apart(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="content"):
        _model(tmp_path, None)
    model = _model(tmp_path, CONTENT)
    assert model.content is not None and model.content.item_ids == ["a", "b"]
    no_features = pd.DataFrame(index=range(2))
    # Known items read their content from the model's own table, not from the request.
    manual = model._model.item_tower(
        torch.tensor([1, 2]),
        torch.as_tensor(
            item_dense_features(np.zeros((2, len(GENRES))), np.zeros(2), np.zeros(2), CONTENT.vectors)
        ),
    )
    np.testing.assert_allclose(model.embed_items(["a", "b"], no_features), manual.detach().numpy(), atol=1e-6)
    # Unseen items share the unknown ID row: only their content separates them.
    features = pd.DataFrame({"item_content_embedding": [[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]]})
    new = model.embed_items(["n1", "n2", "n3"], features)
    np.testing.assert_allclose(new[0], new[1], atol=1e-6)
    assert not np.allclose(new[0], new[2], atol=1e-3)


def test_the_item_tower_learns_to_place_items_by_content_alone() -> None:
    """Every item is unknown to the ID table (row 0): users can only be matched through content."""
    rng = np.random.default_rng(0)
    config = TwoTowerModelConfig(
        n_users=3, n_items=1, n_genres=len(GENRES), embedding_dim=8, hidden_dim=16, content_dim=DIM
    )
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    topics = np.eye(DIM, dtype=np.float32)
    # User 1 likes items about topic 0, user 2 items about topic 1 (with noise in the text vectors).
    users = rng.integers(1, 3, size=64)
    content = topics[users - 1] + rng.normal(0, 0.1, size=(64, DIM)).astype(np.float32)
    zeros = np.zeros(len(users))
    batch = (
        torch.as_tensor(users, dtype=torch.long),
        torch.zeros((len(users), config.user_dense_dim)),
        torch.zeros(len(users), dtype=torch.long),
        torch.as_tensor(item_dense_features(np.zeros((64, len(GENRES))), zeros, zeros, content)),
    )
    losses = []
    for _ in range(60):
        # Every item id is 0, so no id-collision masking: each row's negatives are the other rows.
        user_emb, item_emb = model(*batch)
        loss = in_batch_softmax_loss(user_emb, item_emb, temperature=0.1)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
    # Half the batch shares each user's topic, so the loss floor is about log(32), not 0.
    assert losses[-1] < losses[0] - 0.5
    model.eval()
    with torch.no_grad():
        user_emb = model.user_tower(torch.tensor([1, 2]), torch.zeros((2, config.user_dense_dim)))
        dense = item_dense_features(np.zeros((2, len(GENRES))), np.zeros(2), np.zeros(2), topics[:2])
        item_emb = model.item_tower(torch.zeros(2, dtype=torch.long), torch.as_tensor(dense))
    scores = (user_emb @ item_emb.T).numpy()  # (user, topic)
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]
