"""Training the two-tower model: pure train/eval steps, and the training loop that runs on a Ray Train
TorchTrainer (or inside a Ray Tune trial, training/ray_train.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.config import TwoTowerConfig
from training.ray_train import LoopContext, fit_in_process, fit_on_ray, trains_in_trial, wants_gpu
from training.two_tower import TwoTowerModel, TwoTowerModelConfig, drop_ids, in_batch_softmax_loss

EVAL_BATCH = 1024
EVAL_K = 10


@dataclass(frozen=True)
class TwoTowerExamples:
    """Positive (user, item) pairs with the features each tower reads, as aligned arrays."""

    user_idx: np.ndarray  # (n,) int64, 0 = unknown user
    user_dense: np.ndarray  # (n, user_dense_dim) float32
    item_idx: np.ndarray  # (n,) int64, 0 = unknown item
    item_dense: np.ndarray  # (n, item_dense_dim) float32
    # (n, history_length) int64 item rows the user liked before the example, 0 = padding; None: no history
    history: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.user_idx)
        if not (len(self.user_dense) == len(self.item_idx) == len(self.item_dense) == n):
            raise ValueError("two-tower example arrays must all have the same number of rows")
        if self.history is not None and (self.history.ndim != 2 or len(self.history) != n):
            raise ValueError("two-tower example history must be an (n, history_length) matrix")

    def __len__(self) -> int:
        return len(self.user_idx)

    def take(self, rows: np.ndarray) -> TwoTowerExamples:
        return TwoTowerExamples(
            self.user_idx[rows],
            self.user_dense[rows],
            self.item_idx[rows],
            self.item_dense[rows],
            None if self.history is None else self.history[rows],
        )

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(user_idx, user_dense, item_idx, item_dense, history); history is (n, 0) without one."""
        history = self.history if self.history is not None else np.zeros((len(self), 0), dtype=np.int64)
        return (
            torch.as_tensor(self.user_idx, dtype=torch.long, device=device),
            torch.as_tensor(self.user_dense, dtype=torch.float32, device=device),
            torch.as_tensor(self.item_idx, dtype=torch.long, device=device),
            torch.as_tensor(self.item_dense, dtype=torch.float32, device=device),
            torch.as_tensor(history, dtype=torch.long, device=device),
        )


@dataclass(frozen=True)
class RetrievalTrainResult:
    """What training hands back: the weights, the model shape, and the metrics per epoch."""

    state_dict: dict[str, torch.Tensor]
    model_config: TwoTowerModelConfig
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def item_log_q(item_idx: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item's share of the training positives: the in-batch sampling probability."""
    counts = np.bincount(item_idx, minlength=n_items).astype(np.float64) + 1.0
    return np.asarray(np.log(counts / counts.sum()), dtype=np.float32)


# ID-table rows (users + items) from which `sparse_embeddings: auto` trains sparse tables.
SPARSE_TABLE_ROWS = 100_000


class TowerOptimizer:
    """Lazy Adam on the ID tables, AdamW on everything else, stepped together.

    With dense gradients every step reads and writes every row of every ID table (and Adam's moments
    keep moving rows the batch never touched): at 1M users and 100k items that is 70M parameters a step,
    and training ran at under 1,000 examples/s on 2 cores (benchmarks/results/two_tower_throughput.md).
    Sparse gradients with ``SparseAdam`` update only the rows a batch looked up.
    """

    def __init__(self, model: torch.nn.Module, learning_rate: float, weight_decay: float) -> None:
        tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
        table_ids = {id(t) for t in tables}
        rest = [p for p in model.parameters() if id(p) not in table_ids]
        self.optimizers: list[torch.optim.Optimizer] = []
        if tables:
            self.optimizers.append(torch.optim.SparseAdam(tables, lr=learning_rate))
        if rest:
            self.optimizers.append(torch.optim.AdamW(rest, lr=learning_rate, weight_decay=weight_decay))

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def wants_sparse_tables(setting: str, model_config: TwoTowerModelConfig) -> bool:
    """Whether ``two_tower.sparse_embeddings`` asks for sparse ID tables for a model of this size.

    >>> movielens, platform = TwoTowerModelConfig(611, 9725, 19), TwoTowerModelConfig(10**6, 10**5, 19)
    >>> wants_sparse_tables("auto", movielens), wants_sparse_tables("auto", platform)
    (False, True)
    """
    if setting == "auto":
        return model_config.n_users + model_config.n_items >= SPARSE_TABLE_ROWS
    return setting == "yes"


def use_sparse_tables(model: torch.nn.Module) -> None:
    """Make every ID table of ``model`` produce sparse gradients (before it is wrapped for training)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | TowerOptimizer,
    batch: tuple[torch.Tensor, ...],
    temperature: float,
    log_q: torch.Tensor | None = None,
    id_dropout: float = 0.0,
    mixed_precision: bool = False,
) -> float:
    """One optimiser step of in-batch softmax on a batch of positives; returns the batch loss.

    ``batch`` is :meth:`TwoTowerExamples.tensors` (a history is optional). With ``id_dropout`` > 0 user
    and item ids are replaced by the unknown row at that rate; the loss still masks duplicates and
    corrects popularity by the true item ids. With ``mixed_precision`` the towers run under bfloat16
    autocast on the batch's device (bfloat16 keeps float32's range, so no loss scaling); the softmax
    over the batch is computed in float32.
    """
    model.train()
    user_idx, user_dense, item_idx, item_dense = batch[:4]
    history = batch[4] if len(batch) > 4 else None
    with torch.autocast(device_type=user_idx.device.type, dtype=torch.bfloat16, enabled=mixed_precision):
        user_emb, item_emb = model(
            drop_ids(user_idx, id_dropout), user_dense, drop_ids(item_idx, id_dropout), item_dense, history
        )  # (batch, dim) each
    loss = in_batch_softmax_loss(
        user_emb.float(),
        item_emb.float(),
        temperature,
        item_ids=item_idx,
        log_q=None if log_q is None else log_q[item_idx],
    )
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def eval_step(
    model: torch.nn.Module, examples: TwoTowerExamples, temperature: float, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Held-out in-batch loss, and recall@10 of each positive among its batch's distinct items.

    Blocks of held-out positives stand in for the catalogue: cheap enough to run every epoch, and
    comparable across epochs, which is what it is for.
    """
    model.eval()
    losses: list[float] = []
    hits = 0
    for start in range(0, len(examples), EVAL_BATCH):
        user_idx, user_dense, item_idx, item_dense, history = examples.take(
            np.arange(start, min(start + EVAL_BATCH, len(examples)))
        ).tensors(device)
        if len(user_idx) < 2:
            continue
        user_emb, item_emb = model(user_idx, user_dense, item_idx, item_dense, history)  # (b, dim) each
        losses.append(
            float(in_batch_softmax_loss(user_emb, item_emb, temperature, item_ids=item_idx)) * len(user_idx)
        )
        # Each distinct item counts once: its first row in the batch stands for it.
        _, first = np.unique(item_idx.cpu().numpy(), return_index=True)
        columns = torch.as_tensor(first, device=item_emb.device)
        scores = user_emb @ item_emb[columns].T  # (b, n_distinct)
        other = item_idx[columns][None, :] != item_idx[:, None]  # (b, n_distinct): not the positive
        own = (user_emb * item_emb).sum(dim=1, keepdim=True)  # (b, 1)
        rank = ((scores > own) & other).sum(dim=1)  # (b,) distinct other items scored above the positive
        hits += int((rank < EVAL_K).sum())
    n = max(len(examples), 1)
    return {"val_loss": float(np.sum(losses) / n), f"val_recall_at_{EVAL_K}": hits / n}


def _train_loop(loop_config: dict[str, Any], context: LoopContext) -> None:
    """The training loop, on a Ray Train worker or in a Tune trial: shard the positives by rank, train,
    evaluate and report each epoch; the last report carries the weights."""
    cfg: TwoTowerConfig = loop_config["cfg"]
    train: TwoTowerExamples = loop_config["train"]
    validation: TwoTowerExamples = loop_config["validation"]
    rank, world, device = context.rank, context.world, context.device
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    initial = TwoTowerModel(loop_config["model_config"])
    if loop_config.get("initial_state") is not None:  # a fine-tune starts from the champion's weights
        initial.load_state_dict(loop_config["initial_state"])
    # DistributedDataParallel all-reduces dense gradients on every backend; sparse ones only on some.
    if world == 1 and wants_sparse_tables(cfg.sparse_embeddings, loop_config["model_config"]):
        use_sparse_tables(initial)
    model = context.prepare_model(initial)
    optimizer = TowerOptimizer(model, cfg.learning_rate, cfg.weight_decay)
    log_q = torch.as_tensor(loop_config["log_q"], device=device) if loop_config["log_q"] is not None else None
    shard = train.take(np.arange(rank, len(train), world))
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the model when world > 1
    base: torch.nn.Module = inner if isinstance(inner, torch.nn.Module) else model
    stopper = EarlyStopping(cfg.early_stopping_patience, judged=len(validation) > 0)
    mixed_precision = cfg.mixed_precision == "yes" or (
        cfg.mixed_precision == "auto" and device.type == "cuda"
    )
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(shard))
        losses = []
        for start in range(0, len(order) - 1, cfg.batch_size):
            batch = shard.take(order[start : start + cfg.batch_size]).tensors(device)
            losses.append(
                train_step(model, optimizer, batch, cfg.temperature, log_q, cfg.id_dropout, mixed_precision)
            )
        # Every worker trains its own shard at the same time: the epoch's examples over rank 0's time.
        train_seconds = time.perf_counter() - started
        metrics = {
            "epoch": float(epoch + 1),
            "train_loss": float(np.mean(losses)),
            "train_examples_per_s": len(shard) * world / max(train_seconds, 1e-9),
            **eval_step(base, validation, cfg.temperature, device),
        }
        metrics["epoch_seconds"] = time.perf_counter() - started
        # Every rank scores the same validation set with the same (synchronised) weights: they all stop
        # at the same epoch.
        stop = stopper.update(metrics, base) or epoch + 1 == cfg.epochs
        context.report(
            stopper.final_metrics() if stop else metrics, stopper.best_state(base) if stop else None
        )
        if stop:
            break


class EarlyStopping:
    """With a `patience`, keeps the weights of the epoch with the best validation recall@10 and says when
    `patience` epochs in a row brought no improvement. Without one (None), or without validation examples
    to judge by, nothing stops early and the last epoch's weights are the model.
    """

    def __init__(self, patience: int | None, judged: bool = True) -> None:
        self.patience, self.judged = patience, judged and patience is not None
        self.history: list[dict[str, float]] = []
        self._best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self._stale = 0

    def update(self, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """Record one epoch's metrics (and weights, when best so far); True when training should stop."""
        self.history.append(dict(metrics))
        score = metrics[f"val_recall_at_{EVAL_K}"]
        if not self.judged:
            return False
        if self._best is None or score > self._best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self._best = (score, len(self.history), state)
            self._stale = 0
            return False
        self._stale += 1
        return self.patience is not None and self._stale >= self.patience

    @property
    def best_epoch(self) -> int:
        return self._best[1] if self._best is not None else len(self.history)

    def best_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return self._best[2] if self._best is not None else dict(model.state_dict())

    def final_metrics(self) -> dict[str, float]:
        """The kept epoch's metrics, which epoch that was (`best_epoch`) and how many ran (`epoch`,
        `epochs_run`), and every epoch's values as ``epoch_<n>_<metric>`` (Ray Train keeps only the
        final report's metrics)."""
        out = {**self.history[self.best_epoch - 1], "best_epoch": float(self.best_epoch)}
        out["epoch"] = out["epochs_run"] = float(len(self.history))
        for n, epoch in enumerate(self.history, start=1):
            out |= {f"{EPOCH_PREFIX}{n}_{k}": v for k, v in epoch.items() if k != "epoch"}
        return out


EPOCH_PREFIX = "epoch_"


def split_history(metrics: Mapping[str, float]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(the run's metrics, per-epoch metrics in epoch order) from a final report of ``EarlyStopping``.

    >>> split_history({"best_epoch": 1.0, "epoch_1_val_loss": 2.0, "epoch_2_val_loss": 1.5})
    ({'best_epoch': 1.0}, [{'val_loss': 2.0}, {'val_loss': 1.5}])
    """
    run: dict[str, float] = {}
    epochs: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        number, _, name = key.removeprefix(EPOCH_PREFIX).partition("_")
        if key.startswith(EPOCH_PREFIX) and number.isdigit() and name:
            epochs.setdefault(int(number), {})[name] = value
        else:
            run[key] = value
    return run, [epochs[n] for n in sorted(epochs)]


def train_retrieval(
    train: TwoTowerExamples,
    validation: TwoTowerExamples,
    model_config: TwoTowerModelConfig,
    cfg: TwoTowerConfig,
    storage_dir: Path,
    logq_correction: bool = False,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    tune_report: Callable[[dict[str, float]], None] | None = None,
) -> RetrievalTrainResult:
    """Train the two-tower model with a Ray Train TorchTrainer of `cfg.num_workers` workers (or, in a Ray
    Tune trial, in the trial's own process; see ``tune_report``).

    Args:
        train: training positives.
        validation: held-out positives, scored after every epoch.
        model_config: tower sizes.
        cfg: training settings; `use_gpu="auto"` uses a GPU when torch sees one.
        storage_dir: where Ray Train keeps its run folder (inside the state directory).
        logq_correction: subtract log item frequency from in-batch logits.
        initial_state: weights to start from instead of a fresh initialisation (a fine-tune,
            `training.finetune`); None trains from scratch.
        tune_report: inside a Ray Tune trial, Tune's ``report``. A run of one CPU worker then trains in
            the trial's process and reports every epoch's metrics to it; a larger run starts its
            TorchTrainer and reports the final metrics once it is done.
    """
    if len(train) < 2:
        raise ValueError(f"two-tower training needs at least 2 positive examples, got {len(train)}")
    use_gpu = wants_gpu(cfg.use_gpu)
    loop_config = {
        "cfg": cfg,
        "model_config": model_config,
        "train": train,
        "validation": validation,
        "log_q": item_log_q(train.item_idx, model_config.n_items) if logq_correction else None,
        "initial_state": None if initial_state is None else dict(initial_state),
    }
    if tune_report is not None and trains_in_trial(cfg.num_workers, use_gpu):
        state_dict, metrics = fit_in_process(_train_loop, loop_config, tune_report)
    else:
        state_dict, metrics = fit_on_ray(
            _train_loop, loop_config, cfg.num_workers, use_gpu, storage_dir, "two-tower"
        )
        if tune_report is not None:
            tune_report(metrics)
    metrics, history = split_history(metrics)
    return RetrievalTrainResult(
        state_dict=state_dict, model_config=model_config, metrics=metrics, history=history
    )
