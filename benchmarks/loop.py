"""The loop's acceptance scenario with its figures: drift scores, NDCG before/after, decisions, seconds.

Runs `recsys loop` on the log of one simulated world (configs/loop_simulated.yaml, drift from
2024-01-22) as of 2024-01-15 (first champion), 2024-01-22 (a week later, no drift yet) and 2024-01-29 (a
week of drifted traffic), as `tests/test_loop_simulated.py` does, and writes
`benchmarks/results/loop.json` and `.md`. The NDCG figures are the stale champion's and the challenger's
on the drifted window (test users whose every test event comes after the drift and after the
champion's data): NDCG@10 of the full two-stage system (the gate's) and of retrieval alone (shadow).

Usage: `python benchmarks/loop.py [--set section.key=value ...]`.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saving import run_meta, save

from monitoring.loop_scenario import Turn, run_turns
from recsys.config import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "loop_simulated.yaml"
DATES = [datetime(2024, 1, day, tzinfo=UTC) for day in (15, 22, 29)]
DRIFT_METRICS = ("feature_psi.device_type", "feature_psi.item_popularity_bucket", "score_psi.retrieval")


def figures(turn: Turn) -> dict[str, Any]:
    """What one turn measured and decided, flat."""
    record = turn.record
    metrics = record.get("metrics", {})
    gate: dict[str, Any] = next((s for s in record.get("steps", []) if s["step"] == "gate"), {})
    top = sorted(((k, v) for k, v in metrics.items() if k.startswith("feature_psi.")), key=lambda kv: -kv[1])[
        :3
    ]
    return {
        "as_of": turn.as_of.date().isoformat(),
        "exit_code": turn.exit_code,
        "seconds": round(turn.seconds, 1),
        "dataset_version": record.get("dataset_version"),
        "drift_detected": record.get("drift_detected"),
        "trigger": record.get("trigger"),
        "decision": record.get("decision"),
        "drift_scores": {k: metrics[k] for k in DRIFT_METRICS if k in metrics},
        "top_feature_psi": dict(top),
        "gate": {k: v for k, v in gate.items() if k != "step"},
        "shadow": {k: v for k, v in metrics.items() if k.startswith("shadow_")},
    }


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def _psi(gate: dict[str, Any]) -> str:
    # The gate does not judge a shift away from a champion whose probabilities are one value.
    return (
        "not judged (flat champion)"
        if gate.get("score_psi.judged") is False
        else _fmt(gate.get("score_psi.value"))
    )


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# The loop on the simulator: drift on 2024-01-22",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores; command: `{meta['command']}`",
        "",
        "| log as of | drift detected | PSI device_type | PSI popularity bucket | score PSI (champion) "
        "| decision | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["drift_scores"]
        lines.append(
            f"| {r['as_of']} | {r['drift_detected']} | {_fmt(d.get('feature_psi.device_type'))} "
            f"| {_fmt(d.get('feature_psi.item_popularity_bucket'))} | {_fmt(d.get('score_psi.retrieval'))} "
            f"| {r['decision']} | {r['seconds']} |"
        )
    judged = [r for r in rows if r["gate"]]
    if judged:
        lines += [
            "",
            "On the drifted window (users judged, from): NDCG@10 of the stale champion and the challenger.",
            "",
            "| log as of | users | from | system champion | system challenger | retrieval champion "
            "| retrieval challenger | score PSI | p99 ms | gate |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in judged:
            g, s = r["gate"], r["shadow"]
            lines.append(
                f"| {r['as_of']} | {g.get('users')} | {g.get('since', '')[:16]} "
                f"| {_fmt(g.get('ndcg.champion'))} | {_fmt(g.get('ndcg.challenger'))} "
                f"| {_fmt(s.get('shadow_ndcg_champion'))} | {_fmt(s.get('shadow_ndcg_challenger'))} "
                f"| {_psi(g)} | {_fmt(g.get('latency.p99_ms'))} "
                f"| {'passed' if g.get('passed') else 'failed: ' + '; '.join(g.get('reasons', []))} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        turns = run_turns(CONFIG, Path(tmp) / "state", DATES, args.overrides)
    rows = [figures(t) for t in turns]
    command = " ".join(["python benchmarks/loop.py", *(f"--set {o}" for o in args.overrides)])
    meta = run_meta(command, config="configs/loop_simulated.yaml")
    text = markdown(meta, rows)
    save("loop", {**meta, "turns": rows}, text)
    print(text)
    failed = [t for t in turns if t.exit_code != 0]
    for turn in failed:
        print(f"loop as of {turn.as_of.date()} exited {turn.exit_code}:\n{turn.output[-3000:]}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
