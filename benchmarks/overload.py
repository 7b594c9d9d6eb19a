"""Past capacity: the same open-loop rates against `recsys serve` with and without load shedding.

    RECSYS_STATE_DIR=<state> python benchmarks/overload.py --config configs/default.yaml \
        --rates 25 50 100 200 --limits 0 8

For each `serve.max_in_flight` of `--limits` (0: no limit), one `recsys serve` is started and sent each
rate of `--rates` for `--duration` seconds from this process over HTTP (open loop, as in
`benchmarks/load.py`: latency counts from the scheduled send time, a request unanswered after 10 s is an
error). After each level the server's `/metrics` are read (one ingress replica, so they are all of its
counts) for the answers each fallback reason took: `overloaded` (shed at once), `ranking_timeout`
(queued for ranking past its deadline) and the others (blank when `/metrics` did not answer in time).
Writes `benchmarks/results/overload.json` and `.md` (or `<--name>.json` and `.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from load import BodyMaker, free_port, fresh_requests, level_of, open_loop, running
from saving import run_meta, save

from recsys.config import load_config
from recsys.state import StateDir

# Fallback reasons counted apart; the others are summed.
SPLIT_REASONS = ("overloaded", "ranking_timeout")
FALLBACK = re.compile(r'^recsys_fallback_total\{reason="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)


def fallback_counts(base: str) -> dict[str, float] | None:
    """Answers per fallback reason so far, from the server's `/metrics`; None when it does not answer
    within a minute (a replica still working off an overloaded level's queue)."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=60) as response:
            text = response.read().decode()
    except OSError:  # timeouts and refused connections alike
        return None
    return {reason: float(value) for reason, value in FALLBACK.findall(text)}


def measure_limit(
    config_args: list[str], limit: int, rates: list[int], duration_s: float, make: BodyMaker, logs: Path
) -> list[dict[str, Any]]:
    """One server with `serve.max_in_flight=limit`, each rate in turn; a row per rate."""
    port = free_port()
    command = [sys.executable, "-m", "recsys", "serve", *config_args]
    command += ["--set", f"serve.max_in_flight={limit}", "--set", f"serve.port={port}"]
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/recommend"
    rows = []
    with running(command, base, logs / f"serve-overload-{limit}.log"):
        asyncio.run(open_loop(url, make, 5, 3.0))  # warm-up: lazy imports, first feature reads
        for rate in rates:
            before = fallback_counts(base)
            outcomes, seconds = asyncio.run(open_loop(url, make, rate, duration_s))
            after = fallback_counts(base)
            reasons: dict[str, int | None] = (
                {r: int(after.get(r, 0) - before.get(r, 0)) for r in after}
                if before is not None and after is not None
                else dict.fromkeys(SPLIT_REASONS)
            )
            level = level_of(f"max_in_flight={limit}", "rate", rate, outcomes, seconds)
            full = [o.ms for o in outcomes if o.ok and not o.fallback]
            row = {
                **asdict(level),
                "throughput": level.throughput,
                "ranked": len(full),
                "ranked_p99_ms": round(float(np.percentile(full, 99)), 2) if full else None,
                "overloaded": reasons.get("overloaded", 0),
                "ranking_timeout": reasons.get("ranking_timeout", 0),
                "other_fallbacks": (
                    sum(n or 0 for r, n in reasons.items() if r not in SPLIT_REASONS)
                    if all(n is not None for n in reasons.values())
                    else None
                ),
            }
            print(row, flush=True)
            rows.append(row)
    return rows


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Past capacity: load shedding (`serve.max_in_flight`) against none",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores (server and load generator share them); "
        f"command: `{meta['command']}`",
        "",
        "Open loop, one ingress replica; an answer later than 10 s counts as an error. `ranked`: answers "
        "that are the ranked list; `overloaded`: shed at once to the popularity list; "
        "`ranking_timeout`: queued for ranking past its deadline, answered in retrieval order.",
        "",
        "| max_in_flight | offered req/s | sent | answered | errors | ranked | ranked req/s | overloaded "
        "| ranking_timeout | other fallbacks | p50 ms | p99 ms | p99 of ranked ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['target'].split('=')[1]} | {row['level']} | {row['sent']} | {row['ok']} | "
            f"{row['errors']} | {row['ranked']} | {row['ranked'] / row['seconds']:.1f} | "
            f"{_cell(row['overloaded'])} | {_cell(row['ranking_timeout'])} | "
            f"{_cell(row['other_fallbacks'])} | {row['p50_ms']} | {row['p99_ms']} | {row['ranked_p99_ms']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--rates", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--limits", type=int, nargs="+", default=[0, 8], help="serve.max_in_flight values")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--name", default="overload", help="results file name under benchmarks/results")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    state = StateDir(config.state_dir)
    make = fresh_requests(state)

    config_args = ["--config", str(args.config)] if args.config else []
    for override in args.overrides:
        config_args += ["--set", override]
    logs = state.root / "load"
    logs.mkdir(parents=True, exist_ok=True)
    rows = [
        row
        for limit in args.limits
        for row in measure_limit(config_args, limit, args.rates, args.duration, make, logs)
    ]
    command = " ".join(
        [
            "python benchmarks/overload.py",
            *config_args,
            "--rates",
            *map(str, args.rates),
            "--limits",
            *map(str, args.limits),
            f"--duration {args.duration:g}",
            *([f"--name {args.name}"] if args.name != "overload" else []),
        ]
    )
    meta = run_meta(command, dataset_version=state.latest_dataset_version())
    text = markdown(meta, rows)
    save(args.name, {**meta, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
