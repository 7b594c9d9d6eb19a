"""Time and peak memory of `run_simulate` at a small scale and at 1M users / 100k items / ~10M events.

Each scale runs in a fresh child process so that its peak resident memory (ru_maxrss) is its own.
Writes `benchmarks/results/simulator.json` and `.md`. Usage: `python benchmarks/simulator.py [--small-only]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saving import run_meta, save

SCALES = {"small": (100_000, 10_000), "full": (1_000_000, 100_000)}


def _child(n_users: int, n_items: int) -> None:
    from recsys.simulator.settings import SimulatorConfig
    from recsys.simulator.stage import run_simulate

    config = SimulatorConfig(n_users=n_users, n_items=n_items)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = run_simulate(config, Path(tmp) / "sim")
        seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n_users": n_users,
                "n_items": summary.n_items,
                "n_events": summary.n_events,
                "seconds": round(seconds, 2),
                "events_per_s": round(summary.n_events / seconds),
                "peak_rss_mib": round(peak_mib),
                "chunk_users": config.chunk_users,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small-only", action="store_true")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    rows = {}
    for name, (n_users, n_items) in SCALES.items():
        if args.small_only and name != "small":
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n_users), str(n_items)],
            check=True,
            capture_output=True,
            text=True,
            env=os.environ,
        )
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    command = "python benchmarks/simulator.py" + (" --small-only" if args.small_only else "")
    meta = run_meta(command)
    lines = [
        "# Simulator throughput",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores; command: `{command}`",
        "",
        "| scale | users | items | events | seconds | events/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['n_users']:,} | {r['n_items']:,} | {r['n_events']:,} | {r['seconds']} "
            f"| {r['events_per_s']:,} | {r['peak_rss_mib']:,} |"
        )
    save("simulator", {**meta, "runs": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
