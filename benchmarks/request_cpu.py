"""CPU of one recommendation request in process: this checkout, and an earlier revision in the same run.

    python benchmarks/request_cpu.py --config configs/default.yaml --baseline 6ee86e0 [--items 1000000]

No Ray and no network: the service's FastAPI app (`serving.api.create_api` over the `single` graph's
`Recommender`: retrieval, ranking in the process, sessions and the no-repeat window, as an ingress
replica builds them) answers `POST /recommend` through an in-memory ASGI transport, one request at a
time, for users drawn as the load tests draw them, with the prediction cache off. Per run: the process's
CPU time over the requests (every thread, the ranking thread's too) divided by their number, and the
median wall time of a request. The thread pools are sized as in a replica (one thread each).

With `--baseline REV` the same measurement runs on REV's code too (a git worktree of it, the same
environment and state), alternated with this checkout's run by run (`--runs`), so that the machine's
noise moves both alike; each side's median and their ratio are reported. REV must have the modules the
measurement imports (any revision with the `single` graph). With `--items N` the state's catalogue is
first grown to N simulated items served from a Redis of its own, as `benchmarks/load_catalogue.py` does
(the grown model stays the state's retrieval champion afterwards).

Writes `benchmarks/results/request_cpu.json` and `.md` (or `--name`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT = "RESULT "
# What a replica's runtime environment sets (serving.app): the model libraries' pools, one thread each.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WARM_UP = 50


def measure(overrides: list[str], config_path: Path | None, requests: int, seed: int) -> dict[str, float]:
    """Build the ingress's app in this process and time `requests` serial recommendations."""
    import asyncio
    from functools import partial

    import httpx
    from load import fresh_requests

    from recsys.config import load_config
    from recsys.state import StateDir
    from serving.api import create_api
    from serving.app import (
        ingress_state,
        load_ranking_stage,
        load_retrieval_stage,
        load_shared_sessions,
        load_shared_shown,
    )
    from serving.rankers import InProcessRanking, Rankers
    from serving.recommender import LocalRetrieval, Recommender

    config = load_config(config_path, [*overrides, "serve.cache_ttl_s=0"])
    settings = config.serve
    state = ingress_state(settings, config.state_dir)
    state.shared_sessions = load_shared_sessions(config)
    state.shared_shown = load_shared_shown(config)
    # Revisions before the setting existed always ranked in a thread.
    in_thread = [settings.ranking_in_thread] if hasattr(settings, "ranking_in_thread") else []
    recommender = Recommender(
        LocalRetrieval(load_retrieval_stage(config)),
        InProcessRanking(Rankers(partial(load_ranking_stage, config)), *in_thread),
        n_candidates=settings.n_candidates,
        max_k=settings.max_k,
        ranking_timeout_s=settings.ranking_timeout_s,
        rerank=settings.rerank,
        state=state,
        max_in_flight=settings.max_in_flight,
    )
    app = create_api(recommender, settings.max_k)
    make = fresh_requests(StateDir(config.state_dir), seed)

    async def run() -> dict[str, float]:
        await recommender.warm_up()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://recsys") as client:
            for i in range(WARM_UP):
                (await client.post("/recommend", json=make(i))).raise_for_status()
            walls: list[float] = []
            fallbacks = 0
            cpu = time.process_time()
            for i in range(requests):
                started = time.perf_counter()
                response = await client.post("/recommend", json=make(WARM_UP + i))
                walls.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                fallbacks += bool(response.json().get("fallback"))
            cpu = time.process_time() - cpu
        return {
            "cpu_ms_per_request": cpu * 1000 / requests,
            "p50_ms": statistics.median(walls),
            "fallbacks": fallbacks,
        }

    return asyncio.run(run())


def child_run(root: Path, args: argparse.Namespace, overrides: list[str]) -> dict[str, float]:
    """One measurement in a fresh process importing the code under `root`."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--requests", str(args.requests)]
    command += ["--seed", str(args.seed)] + (["--config", str(args.config)] if args.config else [])
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, **THREADS, "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measurement under {root} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(lines[-1].removeprefix(RESULT))
    return result


def grow(args: argparse.Namespace, overrides: list[str], redis_port: int) -> list[str]:
    """The state grown to `args.items` simulated items, served from the Redis on `redis_port`."""
    from load_catalogue import grow_features, grow_retrieval, simulated_ids

    from recsys.config import load_config
    from recsys.state import StateDir
    from training.registry import RANKER_MODEL, load_champion
    from training.runtime import TWO_TOWER_FEATURE_SERVICE, RankingModel

    overrides = [
        *overrides,
        "features.online_store=redis",
        f"features.redis_url=redis://127.0.0.1:{redis_port}/0",
    ]
    config = load_config(args.config, overrides)
    common = (["--config", str(args.config)] if args.config else []) + [
        part for override in overrides for part in ("--set", override)
    ]
    subprocess.run([sys.executable, "-m", "recsys", "features", *common], check=True)
    grown = grow_retrieval(config, args.items, args.seed, {})
    ranker_dir, ranker_version = load_champion(StateDir(config.state_dir), RANKER_MODEL)
    services = [str(RankingModel.load(ranker_dir, ranker_version).feature_service), TWO_TOWER_FEATURE_SERVICE]
    grow_features(config, simulated_ids(args.items), grown["templates"], list(dict.fromkeys(services)))
    return overrides


def markdown(meta: dict[str, Any], sides: dict[str, list[dict[str, float]]]) -> str:
    items = f"{meta['items']:,} simulated items" if meta["items"] else "the state's catalogue"
    lines = [
        "# CPU per recommendation request, in process",
        "",
        f"`{meta['command']}` ({meta['when']}, {meta['cores']} cores): {meta['requests']} serial requests "
        f"per run, {meta['candidates']} candidates, {items}, the sides' runs alternated.",
        "",
        "| code | CPU ms per request, each run | median | wall p50 ms, median | fallbacks |",
        "|---|---|---|---|---|",
    ]
    medians: dict[str, float] = {}
    for side, runs in sides.items():
        cpu = [r["cpu_ms_per_request"] for r in runs]
        medians[side] = statistics.median(cpu)
        wall = statistics.median(r["p50_ms"] for r in runs)
        fallbacks = sum(int(r["fallbacks"]) for r in runs)
        each = ", ".join(f"{c:.2f}" for c in cpu)
        lines.append(f"| {side} | {each} | {medians[side]:.2f} | {wall:.2f} | {fallbacks} |")
    if len(medians) == 2:
        (base, old), (_, new) = medians.items()
        lines += ["", f"This checkout against {base}: {new / old:.2f}x the CPU per request (medians)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--baseline", default=None, help="git revision measured beside this checkout")
    parser.add_argument("--items", type=int, default=0, help="grow the catalogue to this many items first")
    parser.add_argument("--candidates", type=int, default=500, help="serve.n_candidates")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="request_cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT + json.dumps(measure(args.overrides, args.config, args.requests, args.seed)), flush=True)
        return
    if args.requests < 1 or args.runs < 1 or args.items < 0:
        parser.error("--requests and --runs must be at least 1, --items at least 0")
    from recsys.config import load_config

    if args.config is not None:
        args.config = args.config.resolve()
    # One state for both sides: a default state_dir would be relative to each side's own checkout.
    state_dir = load_config(args.config, args.overrides).state_dir.resolve()
    overrides = [*args.overrides, f"state_dir={state_dir}", f"serve.n_candidates={args.candidates}"]
    with tempfile.TemporaryDirectory() as tmp:
        redis = None
        if args.items:
            from faults import start_redis
            from load import free_port

            port = free_port()
            redis = start_redis(port, Path(tmp))
            overrides = grow(args, overrides, port)
        roots = {"this checkout": ROOT}
        if args.baseline:
            worktree = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], check=True)
            roots = {f"baseline {args.baseline}": worktree, **roots}
        try:
            sides: dict[str, list[dict[str, float]]] = {side: [] for side in roots}
            for run in range(args.runs):
                for side, root in roots.items():
                    sides[side].append(child_run(root, args, overrides))
                    print(f"run {run + 1}, {side}: {sides[side][-1]}", flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], check=False)
            if redis is not None:
                redis.terminate()
                redis.wait(timeout=30)
    from saving import run_meta, save

    command = " ".join(["python benchmarks/request_cpu.py", *sys.argv[1:]])
    meta = run_meta(command, requests=args.requests, candidates=args.candidates, items=args.items)
    text = markdown(meta, sides)
    save(args.name, {**meta, "runs": sides}, text)
    print(text)


if __name__ == "__main__":
    main()
