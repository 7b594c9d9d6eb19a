"""Latency of `POST /recommend` against a running server, beside the proxy's own floor (`GET /healthz`).

Run `make serve` (or `make run`) in one shell, then `make bench`. Figures are medians and percentiles of
serial requests measured in the same run as the baseline, so a noisy machine moves both together.
Writes `benchmarks/results/serve_latency.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from recsys.config import load_config
from recsys.state import StateDir

RESULTS = Path(__file__).parent / "results"


def _timed(client: httpx.Client, method: str, path: str, body: dict[str, object] | None) -> float:
    started = time.perf_counter()
    response = client.request(method, path, json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000


def _summary(samples_ms: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return {"n": len(samples_ms), "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "p99_ms": round(p99, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()

    state = StateDir(load_config(args.config).state_dir)
    version = state.latest_dataset_version()
    users = pd.read_parquet(state.splits(version) / "train.parquet", columns=["user_id"])["user_id"].unique()
    rng = random.Random(0)
    with httpx.Client(base_url=args.url, timeout=30) as client:
        for _ in range(20):  # warm-up: first calls load lazily initialised paths
            _timed(client, "POST", "/recommend", {"user_id": str(rng.choice(users)), "k": args.k})
        floor, known, unknown = [], [], []
        for n in range(args.requests):
            floor.append(_timed(client, "GET", "/healthz", None))
            known.append(
                _timed(client, "POST", "/recommend", {"user_id": str(rng.choice(users)), "k": args.k})
            )
            unknown.append(_timed(client, "POST", "/recommend", {"user_id": f"new-{n}", "k": args.k}))
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "dataset_version": version,
        "k": args.k,
        "healthz (proxy + handle floor)": _summary(floor),
        "recommend, known user": _summary(known),
        "recommend, unknown user (fallback)": _summary(unknown),
    }
    base = result["healthz (proxy + handle floor)"]["p50_ms"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Serving latency (serial requests over HTTP)",
        "",
        f"{result['measured_at']}, {result['machine']}, dataset {version}, k={args.k}",
        "",
        "| request | n | p50 ms | p95 ms | p99 ms | p50 / healthz p50 |",
        "|---|---|---|---|---|---|",
    ]
    for name in (
        "healthz (proxy + handle floor)",
        "recommend, known user",
        "recommend, unknown user (fallback)",
    ):
        row = result[name]
        assert isinstance(row, dict)
        lines.append(
            f"| {name} | {row['n']} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} | "
            f"{row['p50_ms'] / base:.1f}x |"
        )
    (RESULTS / "serve_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
