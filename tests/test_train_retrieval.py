"""Two-tower training through a real Ray Train TorchTrainer on seeded synthetic positives, and the same
loop in process as a Ray Tune trial runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.config import TwoTowerConfig
from training.retrieval import TwoTowerExamples, eval_step, split_history, train_retrieval
from training.two_tower import TwoTowerModel, TwoTowerModelConfig

N_GENRES = 3


def _examples(n: int, seed: int) -> TwoTowerExamples:
    """Users 1..20 like only items of their own cluster (user % 4 == item % 4), a learnable structure.

    Dense features are fixed per id, as they would be between two snapshots.
    """
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 21, n)
    items = np.array([rng.choice(np.arange(1 + u % 4, 41, 4)) for u in users])
    table = np.random.default_rng(99)
    user_table = table.random((21, N_GENRES + 1), dtype=np.float32)
    item_table = table.random((41, N_GENRES + 2), dtype=np.float32)
    return TwoTowerExamples(
        user_idx=users, user_dense=user_table[users], item_idx=items, item_dense=item_table[items]
    )


def test_eval_step_of_a_random_model_is_near_chance() -> None:
    config = TwoTowerModelConfig(n_users=21, n_items=41, n_genres=N_GENRES, embedding_dim=8, hidden_dim=8)
    torch.manual_seed(0)
    metrics = eval_step(TwoTowerModel(config), _examples(200, 1), temperature=0.1)
    assert 0.0 <= metrics["val_recall_at_10"] < 0.5  # 40 distinct items: chance is about 10/40, ideal 1
    assert metrics["val_loss"] > 0


def test_examples_carry_their_history_into_eval() -> None:
    base = _examples(50, 2)
    history = np.stack([base.item_idx, np.zeros(50, dtype=np.int64)], axis=1)  # (50, 2), one item + pad
    examples = TwoTowerExamples(base.user_idx, base.user_dense, base.item_idx, base.item_dense, history)
    part = examples.take(np.array([3, 1]))
    assert part.history is not None and part.history.tolist() == history[[3, 1]].tolist()
    assert [tuple(t.shape) for t in part.tensors()][-1] == (2, 2)
    assert tuple(base.tensors()[-1].shape) == (50, 0)  # no history: a zero-width matrix
    with pytest.raises(ValueError, match="history"):
        TwoTowerExamples(base.user_idx, base.user_dense, base.item_idx, base.item_dense, history[:3])
    config = TwoTowerModelConfig(
        n_users=21, n_items=41, n_genres=N_GENRES, embedding_dim=8, hidden_dim=8, history_length=2
    )
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    metrics = eval_step(model, examples, temperature=0.1)
    blank = TwoTowerExamples(base.user_idx, base.user_dense, base.item_idx, base.item_dense, 0 * history)
    # The history reaches the user tower: blanking it changes the loss.
    assert metrics["val_loss"] != pytest.approx(eval_step(model, blank, temperature=0.1)["val_loss"])


@pytest.mark.integration
@pytest.mark.slow
def test_ray_train_learns_and_reports_metrics_with_checkpoint(tmp_path: Path) -> None:
    config = TwoTowerModelConfig(n_users=21, n_items=41, n_genres=N_GENRES, embedding_dim=16, hidden_dim=16)
    cfg = TwoTowerConfig(
        epochs=8, batch_size=64, learning_rate=0.02, temperature=0.1, use_gpu="no", early_stopping_patience=2
    )
    result = train_retrieval(_examples(2000, 0), _examples(300, 1), config, cfg, tmp_path / "ray")
    # Early stopping: the best epoch's weights and metrics, every epoch run in the history.
    ran = int(result.metrics["epochs_run"])
    assert 1 <= ran <= 8 and len(result.history) == ran
    assert result.metrics["epoch"] == ran
    recalls = [epoch["val_recall_at_10"] for epoch in result.history]
    assert (
        result.metrics["val_recall_at_10"] == max(recalls) == recalls[int(result.metrics["best_epoch"]) - 1]
    )
    assert ran == 8 or ran - result.metrics["best_epoch"] == cfg.early_stopping_patience
    assert result.metrics["val_recall_at_10"] > 0.8
    model = TwoTowerModel(config)
    model.load_state_dict(result.state_dict)
    assert eval_step(model, _examples(300, 1), 0.1)["val_recall_at_10"] == pytest.approx(
        result.metrics["val_recall_at_10"]
    )
    # In a Ray Tune trial a one-worker CPU run trains in the trial's process with the same loop: the same
    # model, and every epoch reported.
    seen: list[dict[str, float]] = []
    here = train_retrieval(
        _examples(2000, 0), _examples(300, 1), config, cfg, tmp_path / "unused", tune_report=seen.append
    )
    assert [m["epoch"] for m in seen[:-1]] == [float(e) for e in range(1, ran)]
    assert split_history(seen[-1])[0] == here.metrics and len(here.history) == ran
    assert not (tmp_path / "unused").exists()
    for key in ("train_loss", "val_loss", "val_recall_at_10"):
        assert here.metrics[key] == pytest.approx(result.metrics[key], rel=1e-4, abs=1e-4), key
    for name, tensor in result.state_dict.items():
        assert torch.allclose(here.state_dict[name], tensor, atol=1e-4), name
