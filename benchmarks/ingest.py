"""Time and peak memory of ingest + clean of a simulated log (contracts, cleaning, partitioned snapshot).

The default scale is 1M users / 100K items (~10M events); ``--users`` scales it (items scale with it, 10
users an item). Ingest reads the simulator's date partitions a chunk of days at a time
(``recsys/ingest/chunked.py``). Each scale runs in a fresh child process, so its peak resident memory
(ru_maxrss, which includes the simulation run before it in that process) is its own; the simulation is
timed apart from the ingest. Writes ``benchmarks/results/ingest.json`` and ``.md`` with the command.
Usage: ``python benchmarks/ingest.py --users 100000 1000000``.
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


def _child(n_users: int) -> None:
    from recsys.config import PipelineConfig
    from recsys.ingest.stage import run_ingest
    from recsys.simulator.settings import SimulatorConfig
    from recsys.simulator.stage import run_simulate

    simulator = SimulatorConfig(n_users=n_users, n_items=max(n_users // 10, 100))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        simulated = run_simulate(simulator, Path(tmp) / "simulated")
        simulate_s = time.perf_counter() - started
        simulate_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        config = PipelineConfig.model_validate(
            {"state_dir": Path(tmp) / "state", "ingest": {"source": "simulator"}, "simulator": simulator}
        )
        started = time.perf_counter()
        summary = run_ingest(config)
        ingest_s = time.perf_counter() - started
        manifest = json.loads((summary.path / "manifest.json").read_text())
    report = manifest["reconciliation"]["interaction_events"]
    print(
        json.dumps(
            {
                "n_users": n_users,
                "n_items": simulated.n_items,
                "rows_in": report["rows_in"],
                "clean": report["clean"],
                "duplicates": report["duplicates"],
                "bots": report["bots"],
                "quarantined": report["quarantined"],
                "simulate_s": round(simulate_s, 1),
                "simulate_peak_rss_mib": round(simulate_peak),
                "ingest_s": round(ingest_s, 1),
                "events_per_s": round(report["rows_in"] / ingest_s),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", nargs="+", type=int, default=[1_000_000], help="scales to run")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    rows = []
    for n_users in args.users:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n_users)],
            capture_output=True,
            text=True,
            env=os.environ,
        )
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]
            rows.append({"n_users": n_users, "failed": tail[0]})
            print(f"{n_users:,} users: failed ({tail[0]})")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    command = "python benchmarks/ingest.py --users " + " ".join(map(str, args.users))
    meta = run_meta(command)
    lines = [
        "# Ingest + clean of a simulated log",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores (shared); command: `{command}`",
        "",
        "| users | items | events in | clean | duplicates | bots | simulate s | ingest s | events/s "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['n_users']:,} | failed: {r['failed']} ||||||||")
            continue
        lines.append(
            f"| {r['n_users']:,} | {r['n_items']:,} | {r['rows_in']:,} | {r['clean']:,} "
            f"| {r['duplicates']:,} | {r['bots']:,} | {r['simulate_s']} | {r['ingest_s']} "
            f"| {r['events_per_s']:,} "
            f"| {r['peak_rss_mib']:,} |"
        )
    save("ingest", {**meta, "runs": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
