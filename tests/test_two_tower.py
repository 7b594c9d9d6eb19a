"""Two-tower model: the loss by hand, shapes, unit norm, and overfitting one batch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from training.retrieval import EarlyStopping, TowerOptimizer, split_history, train_step, use_sparse_tables
from training.two_tower import (
    AGE_SCALE_DAYS,
    TwoTowerModel,
    TwoTowerModelConfig,
    drop_ids,
    in_batch_softmax_loss,
    item_dense_features,
    masked_mean,
    pad_history,
    user_dense_features,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small models on a shared 2-core machine run fastest, and steadiest, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_in_batch_softmax_loss_matches_hand_computation_on_2x2() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits / T=0.5: row 0 = [2.0, 1.2] target 0; row 1 = [0.0, 1.6] target 1
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    loss = in_batch_softmax_loss(users, items, temperature=0.5)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_log_q_correction_subtracts_per_item_log_probability() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    log_q = torch.tensor([math.log(0.5), math.log(0.25)])
    # row 0 logits = [2.0 - ln .5, 1.2 - ln .25]
    a, b = 2.0 - math.log(0.5), 1.2 - math.log(0.25)
    row0 = -(a - math.log(math.exp(a) + math.exp(b)))
    c, d = 0.0 - math.log(0.5), 1.6 - math.log(0.25)
    row1 = -(d - math.log(math.exp(c) + math.exp(d)))
    loss = in_batch_softmax_loss(users, items, temperature=0.5, log_q=log_q)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_duplicate_item_in_batch_is_not_a_negative() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Both rows hold item 7: each row's only candidate is its own positive, so the loss is 0.
    loss = in_batch_softmax_loss(users, items, temperature=1.0, item_ids=torch.tensor([7, 7]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_dense_features_handle_missing_values() -> None:
    user = user_dense_features(np.array([[0.5, np.nan]]), np.array([np.nan]))
    assert user.tolist() == [[0.5, 0.0, 0.0]]
    item = item_dense_features(np.array([[1.0, 0.0]]), np.array([math.e - 1]), np.array([-1.0]))
    assert item[0].tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0])
    aged = item_dense_features(np.array([[0.0, 0.0]]), np.array([0.0]), np.array([AGE_SCALE_DAYS]))
    assert aged[0, -1] == pytest.approx(1.0)


def _batch(n: int, config: TwoTowerModelConfig, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, config.n_users, (n,), generator=gen),
        torch.rand(n, config.user_dense_dim, generator=gen),
        torch.arange(n) % config.n_items,
        torch.rand(n, config.item_dense_dim, generator=gen),
    )


def test_towers_return_unit_vectors_of_embedding_dim() -> None:
    config = TwoTowerModelConfig(n_users=5, n_items=7, n_genres=3, embedding_dim=8, hidden_dim=16)
    torch.manual_seed(0)
    user_emb, item_emb = TwoTowerModel(config)(*_batch(4, config))
    assert user_emb.shape == item_emb.shape == (4, 8)
    assert torch.allclose(user_emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(item_emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_model_overfits_one_batch_from_history_alone() -> None:
    """Every user is unknown (row 0) with the same dense input: only the history tells them apart."""
    config = TwoTowerModelConfig(
        n_users=2, n_items=65, n_genres=4, embedding_dim=16, hidden_dim=32, history_length=2
    )
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    user_ids = torch.zeros(32, dtype=torch.long)
    user_dense = torch.zeros(32, config.user_dense_dim)
    item_ids = torch.arange(1, 33)
    item_dense = torch.rand(32, config.item_dense_dim, generator=torch.Generator().manual_seed(1))
    history = torch.stack([torch.arange(33, 65), torch.zeros(32, dtype=torch.long)], dim=1)  # one item + pad
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = (user_ids, user_dense, item_ids, item_dense, history)
    losses = [train_step(model, optimizer, batch, temperature=0.1) for _ in range(150)]
    assert losses[0] > 2.0 and losses[-1] < 0.05
    with torch.no_grad():
        user_emb, item_emb = model(user_ids, user_dense, item_ids, item_dense, history)
    assert (user_emb @ item_emb.T).argmax(dim=1).tolist() == list(range(32))


def test_id_dropout_still_overfits_one_batch() -> None:
    """With ids dropped a fifth of the time, features must carry the rest: the batch is still learnt."""
    config = TwoTowerModelConfig(n_users=33, n_items=33, n_genres=4, embedding_dim=16, hidden_dim=32)
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    _, user_dense, _, item_dense = _batch(32, config)
    ids = torch.arange(1, 33)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = (ids, user_dense, ids, item_dense)
    for _ in range(200):
        train_step(model, optimizer, batch, temperature=0.1, id_dropout=0.2)
    with torch.no_grad():
        user_emb, item_emb = model(ids, user_dense, ids, item_dense)
        cold_users = model.user_embedding(torch.zeros(32, dtype=torch.long), user_dense)
    assert (user_emb @ item_emb.T).argmax(dim=1).tolist() == list(range(32))
    # The unknown row learnt next to features: a cold user still finds most of its own items.
    assert int(((cold_users @ item_emb.T).argmax(dim=1) == torch.arange(32)).sum()) >= 16


def test_model_overfits_one_batch() -> None:
    config = TwoTowerModelConfig(n_users=33, n_items=33, n_genres=4, embedding_dim=16, hidden_dim=32)
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    user_ids, user_dense, _, item_dense = _batch(32, config)
    user_ids = torch.arange(1, 33)
    item_ids = torch.arange(1, 33)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    first = None
    for _ in range(150):
        user_emb, item_emb = model(user_ids, user_dense, item_ids, item_dense)
        loss = in_batch_softmax_loss(user_emb, item_emb, temperature=0.1)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    assert first is not None and first > 2.0
    assert loss.item() < 0.05
    with torch.no_grad():
        user_emb, item_emb = model(user_ids, user_dense, item_ids, item_dense)
    assert (user_emb @ item_emb.T).argmax(dim=1).tolist() == list(range(32))


def test_masked_mean_ignores_padding() -> None:
    emb = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # row 0: mean of the first two vectors only; row 1: nothing real, so zeros (not NaN)
    assert masked_mean(emb, mask).tolist() == [[2.0, 3.0], [0.0, 0.0]]


def test_pad_history_keeps_the_newest_left_aligned() -> None:
    padded = pad_history([[4, 5, 6, 7], [2], []], 3)
    assert padded.tolist() == [[5, 6, 7], [2, 0, 0], [0, 0, 0]]
    assert padded.dtype == np.int64 and pad_history([[1]], 0).shape == (1, 0)


def test_history_is_pooled_from_the_shared_item_table() -> None:
    config = TwoTowerModelConfig(
        n_users=3, n_items=6, n_genres=2, embedding_dim=4, hidden_dim=4, history_length=3
    )
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    assert model.history_items is None and model.history_proj is not None
    history = torch.tensor([[1, 2, 0]])
    expected = model.item_tower.ids.weight[[1, 2]].mean(dim=0)  # identity projection at start
    torch.testing.assert_close(model.pooled_history(history)[0], expected)
    dense = torch.zeros(1, config.user_dense_dim)
    # Padding changes nothing; an empty history is the same as none.
    torch.testing.assert_close(
        model.user_embedding(torch.tensor([1]), dense, history),
        model.user_embedding(torch.tensor([1]), dense, torch.tensor([[1, 0, 2]])),
    )
    torch.testing.assert_close(
        model.user_embedding(torch.tensor([1]), dense, torch.zeros(1, 3, dtype=torch.long)),
        model.user_embedding(torch.tensor([1]), dense, None),
    )
    separate = TwoTowerModel(TwoTowerModelConfig(**{**config.__dict__, "history_shared": False}))
    assert separate.history_items is not None and separate.history_items.weight.shape == (6, 4)


def test_id_dropout_replaces_ids_by_the_unknown_row() -> None:
    ids = torch.arange(1, 1001)
    assert torch.equal(drop_ids(ids, 0.0), ids)
    torch.manual_seed(0)
    dropped = drop_ids(ids, 0.3)
    kept = dropped == ids
    assert ((dropped == 0) | kept).all()
    assert 0.25 < float((dropped == 0).float().mean()) < 0.35


def test_sparse_tables_move_only_the_rows_a_batch_looked_up() -> None:
    """Lazy Adam on sparse ID tables: rows outside the batch stay exactly as they were, while dense Adam
    (the old optimiser, and the one several workers use) moves every row once its moments are non-zero."""
    config = TwoTowerModelConfig(
        n_users=50, n_items=60, n_genres=4, embedding_dim=8, hidden_dim=16, history_length=2
    )
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    use_sparse_tables(model)
    optimizer = TowerOptimizer(model, learning_rate=0.01, weight_decay=1e-6)
    assert [type(o).__name__ for o in optimizer.optimizers] == ["SparseAdam", "AdamW"]
    users_before = model.user_tower.ids.weight.detach().clone()
    items_before = model.item_tower.ids.weight.detach().clone()
    first = model.user_tower.mlp[0]
    assert isinstance(first, torch.nn.Linear)
    mlp_before = first.weight.detach().clone()
    _, user_dense, _, item_dense = _batch(8, config)
    ids = torch.arange(1, 9)
    history = torch.stack([torch.arange(11, 19), torch.zeros(8, dtype=torch.long)], dim=1)
    for _ in range(3):
        train_step(model, optimizer, (ids, user_dense, ids, item_dense, history), temperature=0.1)
    users, items = model.user_tower.ids.weight.detach(), model.item_tower.ids.weight.detach()
    assert torch.equal(users[9:], users_before[9:]) and not torch.equal(users[1:9], users_before[1:9])
    looked_up = torch.zeros(60, dtype=torch.bool)
    looked_up[1:9] = looked_up[11:19] = True  # the batch's items and its history items (shared table)
    assert torch.equal(items[~looked_up], items_before[~looked_up])
    assert not torch.equal(items[11:19], items_before[11:19])
    assert not torch.equal(first.weight.detach(), mlp_before)


def test_sparse_tables_still_overfit_one_batch() -> None:
    config = TwoTowerModelConfig(n_users=33, n_items=33, n_genres=4, embedding_dim=16, hidden_dim=32)
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    use_sparse_tables(model)
    optimizer = TowerOptimizer(model, learning_rate=0.02, weight_decay=0.0)
    _, user_dense, _, item_dense = _batch(32, config)
    ids = torch.arange(1, 33)
    losses = [
        train_step(model, optimizer, (ids, user_dense, ids, item_dense), temperature=0.1) for _ in range(150)
    ]
    assert losses[0] > 2.0 and losses[-1] < 0.05


def _epoch(recall: float) -> dict[str, float]:
    return {"epoch": 0.0, "train_loss": 1.0 - recall, "val_recall_at_10": recall}


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience() -> None:
    layer = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=2)
    stops = []
    for epoch, recall in enumerate([0.1, 0.3, 0.2, 0.25, 0.1], start=1):
        with torch.no_grad():
            layer.weight.fill_(float(epoch))  # the weights say which epoch they are from
        stops.append(stopper.update(_epoch(recall), layer))
        if stops[-1]:
            break
    assert stops == [False, False, False, True]  # two epochs in a row without beating 0.3
    assert stopper.best_epoch == 2 and stopper.best_state(layer)["weight"].item() == 2.0
    final = stopper.final_metrics()
    assert final["val_recall_at_10"] == 0.3 and final["best_epoch"] == 2.0
    assert final["epoch"] == final["epochs_run"] == 4.0
    run, history = split_history(final)
    assert [h["val_recall_at_10"] for h in history] == [0.1, 0.3, 0.2, 0.25]
    assert not any(key.startswith("epoch_") for key in run)


def test_without_patience_or_validation_nothing_stops_early() -> None:
    layer = torch.nn.Linear(1, 1, bias=False)
    never = EarlyStopping(patience=None)  # the default: every epoch runs, the last is the model
    assert not any(never.update(_epoch(r), layer) for r in [0.3, 0.1, 0.1, 0.1])
    assert never.best_epoch == 4 and never.final_metrics()["val_recall_at_10"] == 0.1
    blind = EarlyStopping(patience=1, judged=False)  # no validation examples: nothing to judge by
    with torch.no_grad():
        layer.weight.fill_(7.0)
    assert not any(blind.update(_epoch(0.0), layer) for _ in range(3))
    assert blind.best_epoch == 3 and blind.best_state(layer)["weight"].item() == 7.0


def test_mixed_precision_runs_the_towers_in_bfloat16_and_still_overfits() -> None:
    config = TwoTowerModelConfig(n_users=33, n_items=33, n_genres=4, embedding_dim=16, hidden_dim=32)
    _, user_dense, _, item_dense = _batch(32, config)
    ids = torch.arange(1, 33)
    batch = (ids, user_dense, ids, item_dense)
    first = {}
    for mixed in (False, True):
        torch.manual_seed(0)
        model = TwoTowerModel(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        losses = [
            train_step(model, optimizer, batch, temperature=0.1, mixed_precision=mixed) for _ in range(150)
        ]
        first[mixed] = losses[0]
        assert losses[0] > 2.0 and losses[-1] < 0.1
    # Same weights, same batch: only bfloat16 rounding in the towers tells the two first losses apart.
    assert first[True] != first[False] and first[True] == pytest.approx(first[False], rel=0.02)
