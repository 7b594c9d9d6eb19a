"""Running a torch training loop on Ray Train: one adapter for the two-tower model and the multi-task ranker.

The loop reports its final metrics with a checkpoint holding ``model.pt`` from rank 0 (Ray Train 2.60, V2,
keeps ``Result.metrics`` only for reports that carry a checkpoint); the adapter hands back those weights
and the numeric metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

CHECKPOINT_FILE = "model.pt"


def ensure_ray() -> bool:
    """Start a small local Ray unless one is already up (a cluster via RAY_ADDRESS, or a caller's);
    True when this call started it (and its caller should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return True


def wants_gpu(setting: Literal["auto", "yes", "no"]) -> bool:
    """`auto`: a GPU when torch sees one."""
    return torch.cuda.is_available() if setting == "auto" else setting == "yes"


def fit_on_ray(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    num_workers: int,
    use_gpu: bool,
    storage_dir: Path,
    name: str,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run ``loop`` on a TorchTrainer of ``num_workers`` workers; (rank 0's state dict, final metrics).

    Raises:
        RuntimeError: the run ended without a checkpoint (the loop failed; Ray's error is in the message).
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started_ray = ensure_ray()
    try:
        trainer = TorchTrainer(
            loop,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=RunConfig(
                # Unique per run: runs of the same model in one storage folder never share a folder.
                name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.perf_counter_ns() % 10**6}",
                storage_path=str(Path(storage_dir).resolve()),
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None or result.metrics is None:
            raise RuntimeError(f"{name} training returned no checkpoint: {result.error}")
        with result.checkpoint.as_directory() as ckpt:
            state = torch.load(Path(ckpt) / CHECKPOINT_FILE, weights_only=True)
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    finally:
        if started_ray:
            ray.shutdown()
    return state, metrics
