"""Scoring time of 500 candidates: the multi-task ranker in fp32 and INT8 against the LightGBM ranker.

Needs a state with a LightGBM ranker (``--baseline``, default champion) and a multi-task ranker
(``--model``, default challenger), e.g. after `recsys pipeline` then
`recsys train --alias challenger --set ranker.kind=multitask`. The 500 rows are drawn around the
multi-task model's own input statistics (mean and scale of its training rows), so every model scores
realistic values; each model scores the same matrix. Torch and LightGBM run on one thread, as a serving
replica does. Also lists the training figures both runs logged (held-out AUCs, the INT8 decision,
training examples/s). Writes `benchmarks/results/multitask_ranker.json` and `.md`.
Usage: `python benchmarks/multitask_ranker.py --state-dir DIR [--model challenger] [--baseline champion]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from saving import run_meta, save

N_CANDIDATES = 500
REPEATS = 300
LOGGED = (
    "ranker_holdout_ndcg_at_10",
    "ranker_holdout_auc",
    "ranker_auc_fp32",
    "ranker_auc_int8",
    "ranker_int8_kept",
    "ranker_train_examples_per_s",
    "ranker_best_epoch",
    "ranker_best_iteration",
    "ranker_rows",
)


def _median_ms(score: Callable[[], Any], repeats: int) -> float:
    for _ in range(10):  # warm-up: first calls allocate and pick kernels
        score()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        score()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(state_dir: Path, model_ref: str, baseline_ref: str, repeats: int) -> dict[str, Any]:
    import torch

    from recsys.state import StateDir
    from training.multitask import MultiTaskRanker, head_probabilities, quantise_int8
    from training.multitask_runtime import WEIGHTS_FILE, MultiTaskRankingModel
    from training.registry import RANKER_MODEL, configure, load_model, model_version
    from training.runtime import RankingModel

    torch.set_num_threads(1)
    state = StateDir(state_dir)
    multitask = RankingModel.load(*load_model(state, RANKER_MODEL, model_ref))
    baseline = RankingModel.load(*load_model(state, RANKER_MODEL, baseline_ref))
    if not isinstance(multitask, MultiTaskRankingModel) or isinstance(baseline, MultiTaskRankingModel):
        raise SystemExit("--model must name a multi-task ranker and --baseline a LightGBM one")
    fp32 = MultiTaskRanker(multitask.model_config)
    fp32.load_state_dict(torch.load(multitask.artifact_dir / WEIGHTS_FILE, weights_only=True))
    fp32.eval()
    int8 = quantise_int8(fp32)
    rng = np.random.default_rng(0)
    mean, scale = fp32.mean.numpy(), fp32.scale.numpy()
    matrix = (mean + scale * rng.normal(size=(N_CANDIDATES, len(mean)))).astype(np.float32)
    timings = {
        "lightgbm": _median_ms(lambda: baseline.predict_matrix(matrix), repeats),
        "multitask_fp32": _median_ms(lambda: head_probabilities(fp32, matrix), repeats),
        "multitask_int8": _median_ms(lambda: head_probabilities(int8, matrix), repeats),
    }
    client = configure(state)
    logged = {}
    for name, ref in (("multitask", model_ref), ("lightgbm", baseline_ref)):
        run = client.get_run(model_version(state, RANKER_MODEL, ref).tags["run_id"]).data.metrics
        logged[name] = {k: run[k] for k in LOGGED if k in run}
    return {
        "n_candidates": N_CANDIDATES,
        "repeats": repeats,
        "versions": {"multitask": multitask.version, "lightgbm": baseline.version},
        "served_int8": multitask.int8,
        "median_ms": {k: round(v, 3) for k, v in timings.items()},
        "int8_speedup_vs_fp32": round(timings["multitask_fp32"] / timings["multitask_int8"], 2),
        "fp32_vs_lightgbm": round(timings["multitask_fp32"] / timings["lightgbm"], 2),
        "logged": logged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--model", default="challenger")
    parser.add_argument("--baseline", default="champion")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    flags = f"--model {args.model} --baseline {args.baseline}"
    command = f"python benchmarks/multitask_ranker.py --state-dir STATE {flags}"
    figures = {**run_meta(command), **measure(args.state_dir, args.model, args.baseline, args.repeats)}
    ms = figures["median_ms"]
    lines = [
        f"# Ranker scoring time, {N_CANDIDATES} candidates, one thread",
        "",
        f"`{command}`; median of {figures['repeats']} calls after warm-up; {figures['cores']} cores.",
        "",
        "| model | median ms | vs multi-task fp32 |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v} | {ms['multitask_fp32'] / v:.2f}x |" for k, v in ms.items()]
    lines += ["", "| logged at training | multi-task | LightGBM |", "|---|---|---|"]
    for key in LOGGED:
        a, b = figures["logged"]["multitask"].get(key), figures["logged"]["lightgbm"].get(key)
        if a is not None or b is not None:
            lines.append(f"| {key} | {'' if a is None else f'{a:.4g}'} | {'' if b is None else f'{b:.4g}'} |")
    save("multitask_ranker", figures, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
