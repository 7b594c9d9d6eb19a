"""Training the multi-task ranker: task labels, pure train/eval steps, the Ray Train adapter, calibration
and the INT8 decision.

Rows are the same validation-window candidates (with the same ranker feature service) as the LightGBM
ranker's. A seeded fifth of the users is held out: it picks the epoch (early stopping on the heads' mean
AUC), decides whether INT8 is kept, and fits the Platt calibrator, so none of these reads a fitted row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys.config import RankerConfig
from training.calibration import PlattCalibrator, fit_platt, logistic
from training.multitask import (
    DEFAULT_SURFACE,
    TASKS,
    MultiTaskModelConfig,
    MultiTaskRanker,
    SurfaceWeights,
    combine_heads,
    head_probabilities,
    keep_int8,
    multitask_loss,
    quantise_int8,
    score_log_odds,
)
from training.ranker import HOLDOUT_FRACTION, RankerDataError
from training.ranker_features import ranker_feature_names
from training.ray_train import LoopContext, fit_in_process, fit_on_ray, trains_in_trial, wants_gpu

SATISFACTION = TASKS.index("satisfaction")
NDCG_K = 10


@dataclass(frozen=True)
class MultiTaskResult:
    """Trained weights (fp32), model shape, whether the served model is INT8, calibrator and metrics."""

    state_dict: dict[str, torch.Tensor]
    model_config: MultiTaskModelConfig
    int8: bool
    calibrator: PlattCalibrator
    metrics: dict[str, float]


def surface_weights(cfg: RankerConfig) -> SurfaceWeights:
    """The configured per-surface head weights as the model's pure type."""
    return SurfaceWeights({s: (w.click, w.satisfaction) for s, w in cfg.multitask.surface_weights.items()})


def task_labels(candidates: pd.DataFrame, window_events: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """(n_candidates, n_tasks) 0/1: did the user click / was the user satisfied with the candidate in the
    judged window, by recsys.ingest.labels (any event of the pair labelled positive for that task).

    On MovieLens a rating is the only event: click is any rating that is not a skip (view or like),
    satisfaction a like (rating >= ingest.like_threshold); views have no dwell, so they stay ambiguous.
    """
    from recsys.ingest.labels import POSITIVE, label_events

    out = np.zeros((len(candidates), len(TASKS)), dtype=np.float32)
    if window_events.empty or candidates.empty:
        return out
    labels = label_events(window_events.reset_index(drop=True), items)
    pairs = pd.DataFrame(
        {
            "user_id": window_events["user_id"].astype(str).to_numpy(),
            "item_id": window_events["item_id"].astype(str).to_numpy(),
        }
    )
    keys = pd.MultiIndex.from_arrays(
        [candidates["user_id"].astype(str).to_numpy(), candidates["item_id"].astype(str).to_numpy()]
    )
    for j, task in enumerate(TASKS):
        positive = pairs[(labels[task] == POSITIVE).to_numpy()].drop_duplicates()
        found = pd.MultiIndex.from_frame(positive)
        out[:, j] = keys.isin(found).astype(np.float32)
    return out


def split_users(
    group_sizes: np.ndarray, seed: int, fraction: float = HOLDOUT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, holdout rows): a seeded ``fraction`` of the users (groups) is held out.

    With fewer than two users nothing is held out: the model is fitted and calibrated in-sample.
    """
    sizes = np.asarray(group_sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    groups = np.arange(len(sizes))
    if len(sizes) < 2:
        return np.arange(offsets[-1]), np.zeros(0, dtype=np.int64)
    shuffled = np.random.default_rng(seed).permutation(groups)
    n_holdout = max(1, round(len(sizes) * fraction))
    held = np.zeros(len(sizes), dtype=bool)
    held[shuffled[:n_holdout]] = True
    row_group = np.repeat(groups, sizes)
    return np.flatnonzero(~held[row_group]), np.flatnonzero(held[row_group])


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    features: torch.Tensor,
    labels: torch.Tensor,
    task_weights: torch.Tensor,
) -> float:
    """One optimiser step of the weighted multi-task loss on a batch; returns the batch loss."""
    model.train()
    loss = multitask_loss(model(features), labels, task_weights)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return float(loss.detach())


def eval_step(
    model: torch.nn.Module, features: np.ndarray, labels: np.ndarray, task_weights: np.ndarray
) -> dict[str, float]:
    """Held-out weighted loss and AUC per head (NaN for a head whose labels hold one class)."""
    from evaluation.calibration import roc_auc_by_task

    if len(features) == 0:
        return {"val_loss": float("nan"), "val_auc_macro": float("nan")}
    probabilities = head_probabilities(model, features)  # (n, n_tasks)
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    bce = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).mean(axis=0)  # (n_tasks,)
    auc = roc_auc_by_task(labels, probabilities, TASKS) if 0 < labels.sum() < labels.size else {}
    metrics = {"val_loss": float(bce @ task_weights)}
    metrics.update({f"val_auc_{t}": float(auc.get(t, float("nan"))) for t in TASKS})
    metrics["val_auc_macro"] = float(auc.get("macro", float("nan")))
    return metrics


def _improved(metrics: dict[str, float], best: float) -> tuple[bool, float]:
    """Early-stopping criterion: the heads' mean AUC, or minus the loss where no AUC is defined."""
    value = metrics["val_auc_macro"]
    if not np.isfinite(value):
        value = -metrics["val_loss"]
    return bool(value > best), value


def fit_epochs(
    model: torch.nn.Module,
    base: torch.nn.Module,
    data: dict[str, np.ndarray],
    rows: np.ndarray,
    cfg: RankerConfig,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train on ``rows`` of the fit set epoch by epoch, evaluate on the holdout after each, stop once
    ``patience`` epochs brought no improvement; (best weights, that epoch's metrics plus throughput).

    Args:
        model: what the optimiser steps (a DistributedDataParallel wrapper on several workers).
        base: the plain model inside it, evaluated and saved.
        data: ``x_fit``, ``y_fit``, ``x_val``, ``y_val`` arrays (raw ranker rows, (n, n_tasks) labels).
        rows: the fit rows this worker trains on (its shard).
        on_epoch: called with every epoch's metrics (Ray Train's ``report``).
    """
    mt = cfg.multitask
    x_fit, y_fit, x_val, y_val = data["x_fit"], data["y_fit"], data["x_val"], data["y_val"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=mt.learning_rate, weight_decay=mt.weight_decay)
    weights = np.array([mt.task_weights.click, mt.task_weights.satisfaction], dtype=np.float64)
    weights_t = torch.as_tensor(weights, dtype=torch.float32, device=device)
    best_value, stale = -np.inf, 0
    best_state: dict[str, torch.Tensor] = {}
    best_metrics: dict[str, float] = {}
    trained_rows, train_seconds, epochs_run = 0, 0.0, 0
    for epoch in range(mt.epochs):
        order = rows[np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(rows))]
        started = time.perf_counter()
        losses = [
            train_step(
                model,
                optimizer,
                torch.as_tensor(x_fit[batch], device=device),
                torch.as_tensor(y_fit[batch], device=device),
                weights_t,
            )
            for batch in (order[i : i + mt.batch_size] for i in range(0, len(order), mt.batch_size))
        ]
        train_seconds += time.perf_counter() - started
        trained_rows += len(order)
        epochs_run = epoch + 1
        metrics = {
            "epoch": float(epoch + 1),
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            **eval_step(base, x_val, y_val, weights),
        }
        if on_epoch is not None:
            on_epoch(metrics)
        better, value = _improved(metrics, best_value)
        if better or not best_state:
            best_value, best_metrics, stale = value, metrics, 0
            best_state = {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}
        else:
            stale += 1
        if len(x_val) > 0 and stale >= mt.patience:
            break
    return best_state, {
        **best_metrics,
        "best_epoch": best_metrics["epoch"],
        "epochs_run": float(epochs_run),
        "train_examples_per_s": trained_rows / max(train_seconds, 1e-9),
    }


def _train_loop(loop_config: dict[str, Any], context: LoopContext) -> None:
    """The training loop, on a Ray Train worker or in a Tune trial: shard rows by rank, ``fit_epochs``
    (reporting every epoch), then report the best weights."""
    rank, world = context.rank, context.world
    start_model = MultiTaskRanker(loop_config["model_config"])
    start_model.load_state_dict(loop_config["initial_state"])  # same start and normaliser on every rank
    model = context.prepare_model(start_model)
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the model when world > 1
    base: torch.nn.Module = inner if isinstance(inner, torch.nn.Module) else model
    data = loop_config["data"]
    shard = np.arange(rank, len(data["x_fit"]), world)
    best_state, final = fit_epochs(
        model,
        base,
        data,
        shard,
        loop_config["cfg"],
        context.device,
        on_epoch=lambda m: context.report(m, None),
    )
    final["train_examples_per_s"] *= world  # every worker trains its shard at the same time
    context.report(final, best_state)


def _fit(
    loop_config: dict[str, Any], cfg: RankerConfig, storage_dir: Path, in_trial: bool
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the loop on a TorchTrainer, or in this process for a one-CPU-worker run in a Tune trial;
    (best state dict, final metrics)."""
    mt = cfg.multitask
    use_gpu = wants_gpu(mt.use_gpu)
    if in_trial and trains_in_trial(mt.num_workers, use_gpu):
        return fit_in_process(_train_loop, loop_config)
    return fit_on_ray(_train_loop, loop_config, mt.num_workers, use_gpu, storage_dir, "multitask")


def train_multitask_ranker(
    features: np.ndarray,
    labels: np.ndarray,
    group_sizes: np.ndarray,
    cfg: RankerConfig,
    storage_dir: Path,
    tune_report: Callable[[dict[str, float]], None] | None = None,
) -> MultiTaskResult:
    """Fit the multi-task ranker on Ray Train, decide INT8, calibrate; see the module docstring.

    Args:
        features: (n_rows, len(ranker_feature_names(cfg.feature_service))) float32, NaN = unknown.
        labels: (n_rows, n_tasks) 0/1 in TASKS order (``task_labels``).
        group_sizes: rows per user (rows of a user are contiguous), summing to n_rows.
        cfg: the ranker section; ``cfg.multitask`` holds the model and training settings.
        storage_dir: where Ray Train keeps its run folder.
        tune_report: inside a Ray Tune trial, Tune's ``report``: it gets the final metrics (the holdout
            AUC is known only after calibration), and a one-CPU-worker run trains in the trial's process.
    """
    names = ranker_feature_names(cfg.feature_service)
    sizes = np.asarray(group_sizes, dtype=np.int64)
    y = np.asarray(labels, dtype=np.float32)
    if features.shape != (len(y), len(names)) or y.shape[1:] != (len(TASKS),) or sizes.sum() != len(y):
        raise RankerDataError(
            f"ranker data mismatch: features {features.shape}, labels {y.shape}, groups sum {sizes.sum()}"
        )
    if len(y) == 0:
        raise RankerDataError("ranker needs at least one user with candidates")
    x = np.asarray(features, dtype=np.float32)
    fit, holdout = split_users(sizes, cfg.seed)
    mt = cfg.multitask
    model_config = MultiTaskModelConfig(
        n_features=len(names),
        hidden_sizes=tuple(mt.hidden_sizes),
        cross_layers=mt.cross_layers,
        head_hidden=mt.head_hidden,
        dropout=mt.dropout,
    )
    torch.manual_seed(cfg.seed)
    model = MultiTaskRanker(model_config)
    model.fit_normaliser(x[fit])
    state, ray_metrics = _fit(
        {
            "cfg": cfg,
            "model_config": model_config,
            "initial_state": model.state_dict(),
            "data": {"x_fit": x[fit], "y_fit": y[fit], "x_val": x[holdout], "y_val": y[holdout]},
        },
        cfg,
        storage_dir,
        in_trial=tune_report is not None,
    )
    model.load_state_dict(state)
    model.eval()
    calibration_rows = holdout if len(holdout) else fit
    weights = surface_weights(cfg).of(DEFAULT_SURFACE)
    x_cal, y_cal = x[calibration_rows], y[calibration_rows, SATISFACTION]
    score_fp32 = combine_heads(head_probabilities(model, x_cal), weights)
    int8, served, int8_metrics = False, score_fp32, {}
    if mt.int8:
        score_int8 = combine_heads(head_probabilities(quantise_int8(model), x_cal), weights)
        auc_fp32, auc_int8 = _auc(y_cal, score_fp32), _auc(y_cal, score_int8)
        int8 = keep_int8(auc_fp32, auc_int8, mt.int8_max_auc_drop)
        served = score_int8 if int8 else score_fp32
        int8_metrics = {
            "ranker_auc_fp32": auc_fp32,
            "ranker_auc_int8": auc_int8,
            "ranker_int8_kept": float(int8),
        }
    calibrator, calibration_metrics = calibrate(served, y_cal)
    row_group = np.repeat(np.arange(len(sizes)), sizes)
    metrics = {
        "ranker_holdout_ndcg_at_10": _mean_ndcg(served, y_cal, sizes, calibration_rows),
        "ranker_holdout_auc": _auc(y_cal, served),
        **{f"ranker_holdout_auc_{t}": ray_metrics.get(f"val_auc_{t}", float("nan")) for t in TASKS},
        "ranker_holdout_loss": ray_metrics.get("val_loss", float("nan")),
        "ranker_best_epoch": ray_metrics.get("best_epoch", float("nan")),
        "ranker_epochs_run": ray_metrics.get("epochs_run", float("nan")),
        "ranker_train_examples_per_s": ray_metrics.get("train_examples_per_s", float("nan")),
        "ranker_fit_users": float(len(np.unique(row_group[fit]))),
        "ranker_holdout_users": float(len(np.unique(row_group[holdout]))),
        "ranker_rows": float(len(y)),
        "ranker_positive_rate": float(y[:, SATISFACTION].mean()),
        "ranker_click_rate": float(y[:, TASKS.index("click")].mean()),
        "ranker_calibration_in_sample": float(len(holdout) == 0),
        **int8_metrics,
        **calibration_metrics,
    }
    if tune_report is not None:
        tune_report(metrics)
    return MultiTaskResult(
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        model_config=model_config,
        int8=int8,
        calibrator=calibrator,
        metrics=metrics,
    )


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from evaluation.calibration import roc_auc

    if not 0 < labels.sum() < len(labels):
        return float("nan")
    return roc_auc(labels, scores)


def _mean_ndcg(scores: np.ndarray, labels: np.ndarray, sizes: np.ndarray, rows: np.ndarray) -> float:
    """Mean NDCG@10 of the scores' order over the users of ``rows`` that hold a satisfied candidate."""
    from evaluation.metrics import ndcg_at_k

    group = np.repeat(np.arange(len(sizes)), sizes)[rows]
    values = []
    for g in np.unique(group):
        mask = group == g
        relevant = {int(j) for j in np.flatnonzero(labels[mask] > 0)}
        if relevant:
            order = [int(j) for j in np.argsort(-scores[mask], kind="stable")]
            values.append(ndcg_at_k(order, relevant, NDCG_K))  # type: ignore[arg-type]
    return float(np.mean(values)) if values else float("nan")


def calibrate(scores: np.ndarray, labels: np.ndarray) -> tuple[PlattCalibrator, dict[str, float]]:
    """Platt calibrator of the served default-surface scores' log-odds, and ECE before and after it."""
    from evaluation.calibration import expected_calibration_error

    log_odds = score_log_odds(scores)
    calibrator = fit_platt(log_odds, labels, negative_rate=1.0)
    binary = (labels > 0).astype(np.int64)
    return calibrator, {
        "ranker_calibration_rows": float(len(labels)),
        "ranker_calibration_slope": calibrator.slope,
        # The raw score is already a mix of probabilities: its ECE as it stands.
        "ranker_ece_raw": expected_calibration_error(binary, logistic(log_odds)),
        "ranker_ece_calibrated": expected_calibration_error(binary, calibrator.probabilities(log_odds)),
    }
