"""Running a torch training loop: on a Ray Train TorchTrainer, or in this process inside a Ray Tune trial.

One loop serves both: it reads its rank, device and model wrapper from a :class:`LoopContext` and hands
every report to it. On Ray Train the final report carries a checkpoint holding ``model.pt`` from rank 0
(Ray Train 2.60, V2, keeps ``Result.metrics`` only for reports that carry a checkpoint); the adapter hands
back those weights and the numeric metrics. In process, the weights are handed over directly.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

CHECKPOINT_FILE = "model.pt"


@dataclass(frozen=True)
class LoopContext:
    """Where a training loop runs: its shard (``rank`` of ``world``), its device, how its model is
    prepared (DistributedDataParallel on several workers), and where its reports go.

    ``report(metrics, final_state)``: every report of the run; the last one carries the final weights
    (``final_state``, the same on every rank) and only that one.
    """

    rank: int
    world: int
    device: torch.device
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module]
    report: Callable[[dict[str, float], Mapping[str, torch.Tensor] | None], None]


TrainLoop = Callable[[dict[str, Any], LoopContext], None]


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


def trains_in_trial(num_workers: int, use_gpu: bool) -> bool:
    """Whether a run inside a Ray Tune trial trains in the trial's own process: one CPU worker, for which
    a TorchTrainer would add only its start-up (~20 s on 2 cores), the trial being a Ray actor already."""
    return num_workers == 1 and not use_gpu


def _on_ray_worker(loop: TrainLoop, loop_config: dict[str, Any]) -> None:
    """TorchTrainer's worker function: ``loop`` with Ray Train's rank, device, model wrapper and report."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank = context.get_world_rank()

    def report(metrics: dict[str, float], final_state: Mapping[str, torch.Tensor] | None) -> None:
        if final_state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({k: v.cpu() for k, v in final_state.items()}, Path(tmp) / CHECKPOINT_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)

    device = ray.train.torch.get_device()
    loop(
        loop_config,
        LoopContext(rank, context.get_world_size(), device, ray.train.torch.prepare_model, report),
    )


def fit_on_ray(
    loop: TrainLoop,
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
            functools.partial(_on_ray_worker, loop),
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


def fit_in_process(
    loop: TrainLoop,
    loop_config: dict[str, Any],
    on_report: Callable[[dict[str, float]], None] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run ``loop`` here as the only worker, on the CPU; (its final state dict, final metrics).
    ``on_report`` sees every report, the final one included.

    Raises:
        RuntimeError: the loop ended without a final report.
    """
    final: list[tuple[dict[str, Any], dict[str, float]]] = []

    def report(metrics: dict[str, float], final_state: Mapping[str, torch.Tensor] | None) -> None:
        if final_state is not None:
            final.append(({k: v.detach().cpu().clone() for k, v in final_state.items()}, dict(metrics)))
        if on_report is not None:
            on_report(metrics)

    loop(loop_config, LoopContext(0, 1, torch.device("cpu"), lambda model: model, report))
    if not final:
        raise RuntimeError("the training loop ended without its final report")
    state, metrics = final[-1]
    return state, {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
