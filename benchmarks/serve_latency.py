"""Latency of the serving API over HTTP, per scenario, beside the proxy's own floor (`GET /healthz`).

Either against a running server (`make serve`, then `--url`), or, with `--shapes single,fused,split`, starting
`recsys serve`'s application in this process once per graph shape (the state directory must hold trained
champions: `recsys pipeline` first). Requests are serial; each scenario is interleaved with the floor, so
a noisy machine moves both together. The previous results file, when there is one, is read first and
its figures are shown beside the new ones. `--reads fast,feast` starts the app once per online read path
too (`serve.fast_feature_reads`) and adds a table comparing them.
Writes `benchmarks/results/serve_latency.json` and `.md`.

Scenarios: a known user (cache defeated with a fresh exclusion per request), an unknown user (popularity
fallback), a known user with three session items (an extra online read), the same request repeated
(prediction cache), `POST /events` of one view (fsync'd), and "more like this".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from recsys.config import PipelineConfig, load_config
from recsys.state import StateDir

RESULTS = Path(__file__).parent / "results"
FLOOR = "healthz (proxy floor)"


def _timed(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None) -> float:
    started = time.perf_counter()
    response = client.request(method, path, json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    """Count and p50 / p95 / p99 of latencies in milliseconds."""
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return {"n": len(samples_ms), "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "p99_ms": round(p99, 2)}


def _scenarios(users: list[str], items: list[str], rng: random.Random) -> dict[str, Callable[[int], Any]]:
    def view(n: int) -> dict[str, Any]:
        event = {
            "event_id": f"bench-{time.time_ns()}-{n}",
            "user_id": rng.choice(users),
            "item_id": rng.choice(items),
            "event_type": "view",
            "dwell_time_ms": 60_000,
            "session_id": "bench",
            "event_ts": datetime.now(UTC).isoformat(),
        }
        return {"events": [event]}

    return {
        "recommend, known user": lambda n: (
            "POST",
            "/recommend",
            {"user_id": rng.choice(users), "k": 10, "exclude_item_ids": [f"nonce-{n}"]},
        ),
        "recommend, unknown user (fallback)": lambda n: (
            "POST",
            "/recommend",
            {"user_id": f"new-{n}-{time.time_ns()}", "k": 10},
        ),
        "recommend, known user + 3 session items": lambda n: (
            "POST",
            "/recommend",
            {"user_id": rng.choice(users), "k": 10, "session_item_ids": rng.sample(items, 3)},
        ),
        "recommend, repeated (prediction cache)": lambda n: (
            "POST",
            "/recommend",
            {"user_id": users[0], "k": 10, "surface": "homepage"},
        ),
        "events, one view": lambda n: ("POST", "/events", view(n)),
        "items similar": lambda n: ("GET", f"/items/{rng.choice(items)}/similar?k=10", None),
    }


def measure(url: str, users: list[str], items: list[str], requests: int) -> dict[str, dict[str, float]]:
    rng = random.Random(0)
    scenarios = _scenarios(users, items, rng)
    samples: dict[str, list[float]] = {FLOOR: [], **{name: [] for name in scenarios}}
    with httpx.Client(base_url=url, timeout=30) as client:
        for n in range(20):  # warm-up: first calls load lazily initialised paths
            for make in scenarios.values():
                method, path, body = make(-n - 1)
                _timed(client, method, path, body)
        for n in range(requests):
            samples[FLOOR].append(_timed(client, "GET", "/healthz", None))
            for name, make in scenarios.items():
                method, path, body = make(n)
                samples[name].append(_timed(client, method, path, body))
    return {name: latency_summary(values) for name, values in samples.items()}


def _serve_and_measure(
    config: PipelineConfig, shape: str, reads: str, users: list[str], items: list[str], requests: int
) -> dict[str, dict[str, float]]:
    from serving.app import run_serve, stop_serve

    serve_config = config.serve.model_copy(update={"graph": shape, "fast_feature_reads": reads == "fast"})
    summary = run_serve(config.model_copy(update={"serve": serve_config}), blocking=False)
    try:
        return measure(summary.url, users, items, requests)
    finally:
        stop_serve()


def _markdown(result: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    lines = [
        "# Serving latency (serial requests over HTTP)",
        "",
        f"{result['measured_at']}, {result['machine']}, dataset {result['dataset_version']}, k=10",
        "",
        "| graph | request | n | p50 ms | p95 ms | p99 ms | p50 / healthz p50 | previous p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    old = (previous or {}).get("shapes", {})
    for shape, rows in result["shapes"].items():
        if shape not in old:  # earlier runs named the graph shape alone (they read through Feast)
            old = {**old, shape: old.get(shape.split(",")[0], {})}
        base = rows[FLOOR]["p50_ms"]
        for name, row in rows.items():
            before = old.get(shape, {}).get(name) or (previous or {}).get(
                name.replace("(proxy floor)", "(proxy + handle floor)")
            )
            prior = f"{before['p50_ms']} / {before['p99_ms']}" if isinstance(before, dict) else "-"
            lines.append(
                f"| {shape} | {name} | {row['n']} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} | "
                f"{row['p50_ms'] / base:.1f}x | {prior} |"
            )
    return lines + _read_paths(result["shapes"])


def _read_paths(shapes: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Fast read path against Feast's, per graph shape and scenario, when both ran."""
    pairs = [
        (key.split(",")[0], rows, shapes[key.replace("fast reads", "feast reads")])
        for key, rows in shapes.items()
        if key.endswith("fast reads") and key.replace("fast reads", "feast reads") in shapes
    ]
    if not pairs:
        return []
    lines = [
        "",
        "## Online feature reads: fast path against Feast's `get_online_features` (same run)",
        "",
        "| graph | request | feast p50 / p99 ms | fast p50 / p99 ms | p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|",
    ]
    for shape, fast, feast in pairs:
        for name, row in fast.items():
            base = feast[name]
            lines.append(
                f"| {shape} | {name} | {base['p50_ms']} / {base['p99_ms']} | "
                f"{row['p50_ms']} / {row['p99_ms']} | {row['p50_ms'] / base['p50_ms']:.2f} | "
                f"{row['p99_ms'] / base['p99_ms']:.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running server (without --shapes)")
    parser.add_argument("--shapes", default="", help="start the app per graph shape, e.g. single,fused,split")
    parser.add_argument(
        "--reads", default="fast", help="online read paths to compare with --shapes, e.g. fast,feast"
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    state = StateDir(config.state_dir)
    version = state.latest_dataset_version()
    train = pd.read_parquet(state.splits(version) / "train.parquet", columns=["user_id", "item_id"])
    users = [str(u) for u in train["user_id"].unique()]
    items = [str(i) for i in train["item_id"].unique()]
    if args.shapes:
        shapes = {
            f"{shape}, {reads} reads": _serve_and_measure(config, shape, reads, users, items, args.requests)
            for shape in args.shapes.split(",")
            for reads in args.reads.split(",")
        }
    else:
        shapes = {"running server": measure(args.url, users, items, args.requests)}
    results_file = RESULTS / "serve_latency.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else None
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "dataset_version": version,
        "command": "python benchmarks/serve_latency.py "
        + " ".join(
            [f"--shapes {args.shapes} --reads {args.reads} --requests {args.requests}"]
            if args.shapes
            else [f"--url {args.url}"]
        ),
        "shapes": shapes,
    }
    RESULTS.mkdir(exist_ok=True)
    results_file.write_text(json.dumps(result, indent=2) + "\n")
    lines = _markdown(result, previous)
    (RESULTS / "serve_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
