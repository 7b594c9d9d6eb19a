"""`recsys tune`: Optuna's TPE sampler on Ray Tune over a target's search space (training/tune.py).

Each trial trains through the trainer `recsys train` uses (two-tower: `train_retrieval`; multi-task
ranker: `train_multitask_ranker`) on inputs prepared once (training/tune_inputs.py), and reports that
trainer's validation metric. A trial of one CPU worker runs the training loop in its own process (it is
a Ray actor already; a Ray Train run inside it would add ~20 s of start-up), a larger one a TorchTrainer.
The configured settings are tried first when they lie in the space, so every search also measures them
on the same data.

MLflow: one parent run per search in the `recsys-tuning` experiment, every trial a child run with its
settings as params and its metrics; the parent holds the best value and best.yaml. Sample-first tuning
(`sample_users`) searches on a seeded subset of users; `train_best` then trains once on the full data
with the best settings, registered as the challenger (`recsys train` protocol and gate).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from recsys.config import PipelineConfig, SearchDimension
from recsys.state import StateDir
from training.tune import (
    OBJECTIVES,
    Target,
    Trial,
    apply_settings,
    best_document,
    best_trial,
    concurrent_trials,
    configured_point,
    search_space,
    trial_config,
    write_best,
)

TUNING_EXPERIMENT = "recsys-tuning"
BEST_FILE = "best.yaml"
console = Console(stderr=True)


@dataclass(frozen=True)
class TuneSummary:
    target: str
    dataset_version: str
    metric: str
    trials: int
    failed: int
    best_value: float
    configured_value: float | None
    best_settings: dict[str, Any]
    best_file: Path
    parent_run_id: str
    sample_users: int | None
    seconds: float
    trained: Any = None  # the TrainSummary of `train_best`


def run_trial(
    settings: dict[str, Any], *, config: PipelineConfig, target: Target, inputs: Any, storage: str
) -> None:
    """One Ray Tune trial: train with ``settings``, reporting the trainer's metrics to Tune (the last
    report is the final one). A one-CPU-worker run trains in the trial's own process, a larger one on its
    own TorchTrainer."""
    from ray import tune

    cfg = trial_config(config, target, settings)
    if target == "two_tower":
        from training.retrieval import train_retrieval
        from training.stage import two_tower_shape

        shape = two_tower_shape(cfg, inputs.n_users, inputs.n_items, inputs.content_dim)
        train_retrieval(
            inputs.train,
            inputs.validation,
            shape,
            cfg.two_tower,
            Path(storage),
            logq_correction=cfg.two_tower.logq_correction,
            tune_report=tune.report,
        )
        return
    from training.multitask_train import train_multitask_ranker

    train_multitask_ranker(
        inputs.features, inputs.labels, inputs.sizes, cfg.ranker, Path(storage), tune_report=tune.report
    )


def _tune_space(space: dict[str, SearchDimension]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.kind == "choice":
            out[name] = tune.choice(list(dim.values))
            continue
        assert dim.low is not None and dim.high is not None  # SearchDimension checks ranges
        if dim.kind == "uniform":
            out[name] = tune.uniform(dim.low, dim.high)
        else:
            out[name] = tune.loguniform(dim.low, dim.high)
    return out


def _parent_run(state: StateDir, tags: dict[str, str]) -> tuple[Any, str]:
    """(MLflow client, id of a new parent run in the tuning experiment)."""
    import mlflow

    from training.registry import configure

    client = configure(state)
    experiment = client.get_experiment_by_name(TUNING_EXPERIMENT)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(
            TUNING_EXPERIMENT, artifact_location=(state.mlflow_artifacts / "tuning").resolve().as_uri()
        )
    )
    # Ray's MLflow callback logs into MLFLOW_EXPERIMENT_ID when it is set (configure() set it to `recsys`):
    # pointing it at the tuning experiment keeps the trials beside their parent.
    mlflow.set_experiment(experiment_id=experiment_id)
    run = client.create_run(experiment_id, run_name=f"tune-{tags['target']}", tags=tags)
    return client, run.info.run_id


def run_tune(
    config: PipelineConfig,
    target: Target = "two_tower",
    dataset_version: str | None = None,
    trials: int | None = None,
    sample_users: int | None = None,
    train_best: bool = False,
) -> TuneSummary:
    """Search, log every trial to MLflow, write best.yaml; see the module docstring.

    Args:
        trials: trials to run (default `tune.trials`).
        sample_users: tune on this many users (default `tune.sample_users`; None: all).
        train_best: afterwards train once on the full data with the best settings (as challenger).
    """
    started = time.perf_counter()
    n_trials = config.tune.trials if trials is None else trials
    if n_trials < 1:
        raise ValueError(f"--trials must be at least 1, got {n_trials}")
    n_users = config.tune.sample_users if sample_users is None else sample_users
    if n_users is not None and n_users < 2:
        raise ValueError(f"--sample-users must be at least 2, got {n_users}")
    space = search_space(config, target)
    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    metric = OBJECTIVES[target]

    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    from training.ray_train import ensure_ray, trains_in_trial, wants_gpu
    from training.tune_inputs import ranker_rows, retrieval_inputs

    with console.status(f"tune {target}: preparing inputs ({n_users or 'all'} users)"):
        prepare = retrieval_inputs if target == "two_tower" else ranker_rows
        inputs = prepare(config, state, version, n_users)
    section = config.two_tower if target == "two_tower" else config.ranker.multitask
    started_ray = ensure_ray()
    try:
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        concurrency = config.tune.max_concurrent_trials or concurrent_trials(
            resources.get("CPU", 1), resources.get("GPU", 0), section.num_workers,
            wants_gpu(section.use_gpu), n_trials,
        )  # fmt: skip
        tags = {"target": target, "dataset_version": version, "sample_users": str(n_users or "all")}
        client, parent = _parent_run(state, tags)
        client.log_param(parent, "trials", n_trials)
        client.log_param(parent, "metric", metric)
        client.log_param(parent, "seed", config.tune.seed)
        point = configured_point(config, space)
        trainable = tune.with_parameters(
            run_trial, config=config, target=target, inputs=inputs, storage=str(state.ray / "trials")
        )
        console.print(f"tune {target}: {n_trials} trials, {concurrency} at a time, maximising {metric}")
        # A one-CPU-worker trial trains in its own process and holds that CPU; a larger one only waits
        # on its Ray Train run, whose workers hold the CPUs (or GPUs).
        in_process = trains_in_trial(section.num_workers, wants_gpu(section.use_gpu))
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1 if in_process else 0.01}),
            param_space=_tune_space(space),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                num_samples=n_trials,
                search_alg=OptunaSearch(points_to_evaluate=[point] if point else None, seed=config.tune.seed),
                max_concurrent_trials=concurrency,
            ),
            run_config=tune.RunConfig(
                name=f"tune-{target}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str((state.ray / "tune").resolve()),
                verbose=0,
                callbacks=[
                    MLflowLoggerCallback(
                        tracking_uri=state.mlflow_tracking_uri,
                        experiment_name=TUNING_EXPERIMENT,
                        tags={**tags, "mlflow.parentRunId": parent},
                    )
                ],
            ),
        )
        grid = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
        shutil.rmtree(state.ray, ignore_errors=True)

    results = [grid[i] for i in range(len(grid))]
    done = [
        Trial({k: (r.config or {}).get(k) for k in space}, float((r.metrics or {}).get(metric, math.nan)))
        for r in results
    ]
    failed = sum(r.error is not None for r in results)
    try:
        best = best_trial(done)
    except ValueError as err:
        errors = [str(r.error).strip().splitlines()[-1] for r in results if r.error is not None]
        client.set_terminated(parent, "FAILED")
        raise ValueError(f"{err}; first error: {errors[0] if errors else 'none'}") from None
    configured = next((t for t in done if point is not None and t.settings == point), None)
    document = best_document(target, version, best, configured, n_trials, n_users, parent)
    path = write_best(state.tuning(version, target) / BEST_FILE, document)
    client.log_metric(parent, f"best_{metric}", best.value)
    if configured is not None and math.isfinite(configured.value):
        client.log_metric(parent, f"configured_{metric}", configured.value)
    client.log_artifact(parent, str(path))
    client.set_terminated(parent, "FINISHED")
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.settings.items()
    )
    console.print(f"best {metric}={best.value:.4f} with {shown}; written to {path}")

    trained = None
    if train_best:
        from training.stage import run_train

        console.print("training once on the full data with the best settings (as challenger)")
        trained = run_train(apply_settings(config, best.settings), version, alias="challenger")
    return TuneSummary(
        target=target,
        dataset_version=version,
        metric=metric,
        trials=len(done),
        failed=failed,
        best_value=best.value,
        configured_value=None if configured is None else configured.value,
        best_settings=best.settings,
        best_file=path,
        parent_run_id=parent,
        sample_users=n_users,
        seconds=time.perf_counter() - started,
        trained=trained,
    )
