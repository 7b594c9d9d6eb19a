"""The acceptance scenarios of online experimentation, run on the simulator with the default settings.

A/B at the planned size (repeated: achieved power), A/A (false positive rate), interleaving (users needed
vs the A/B plan), off-policy estimates vs the online result, and canaries (good, bad, slow). Writes
`benchmarks/results/experiments.json` and `.md`; the reports go to a temporary state dir unless
`--state-dir` is given. Usage: `python benchmarks/experiments.py [--state-dir DIR]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _run_all(state_dir: Path) -> dict[str, Any]:
    from evaluation.experiments.stage import run_experiment
    from recsys.config import load_config

    cfg = load_config(overrides=[f"state_dir={state_dir}"])
    out: dict[str, Any] = {"settings": cfg.experiments.model_dump()}
    for kind, options in (
        ("ab", {}),
        ("aa", {}),
        ("interleave", {}),
        ("ips", {}),
        ("canary-good", {"canary_model": "good"}),
        ("canary-bad", {"canary_model": "bad"}),
        ("canary-slow", {"canary_model": "slow"}),
    ):
        started = time.perf_counter()
        run_experiment(cfg, kind.split("-")[0], **options)  # type: ignore[arg-type]
        folder = state_dir / "experiments" / "runs" / kind
        out[kind] = json.loads((folder / "result.json").read_text())
        out[kind]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{kind}: {out[kind]['seconds']} s", flush=True)
    return out


def _markdown(r: dict[str, Any]) -> str:
    ab, aa, il, ips = r["ab"], r["aa"], r["interleave"], r["ips"]
    det, fp = ab["detection_rate"], aa["false_positive_rate"]
    lines = [
        "# Online experiments on the simulator",
        "",
        f"{r['when']}, {r['machine']}; settings: `ExperimentsConfig` defaults "
        f"(population {r['settings']['population']}, slate {r['settings']['slate_size']}).",
        "",
        "| scenario | figure |",
        "|---|---|",
        f"| A/B plan | pilot slate CTR {ab['baseline_slate_ctr']:.4f}, MDE {ab['min_relative_effect']:+.0%}, "
        f"power {ab['planned_power']} -> {ab['planned_users_per_arm']} users per arm |",
        f"| A/B achieved power | {det['hits']}/{det['runs']} = {det['hits'] / det['runs']:.2f} "
        f"[{det['low']:.2f}, {det['high']:.2f}] (theory at the pooled lift {ab['observed_lift']:+.2%}: "
        f"{ab['power_at_observed_lift']:.2f}) |",
        f"| A/A false positive rate | {fp['hits']}/{fp['runs']} = {fp['hits'] / fp['runs']:.3f} "
        f"[{fp['low']:.3f}, {fp['high']:.3f}] at alpha {aa['alpha']} ({aa['users_per_arm']} users per arm) |",
        f"| interleaving users for power 0.8 | {il['interleaving_users_needed']} vs A/B "
        f"{il['ab_planned_users']} (both arms) |",
    ]
    online = ips["online"]
    lines.append(
        f"| online value of the target | {online['value']:.4f} "
        f"[{online['ci_low']:.4f}, {online['ci_high']:.4f}] |"
    )
    for name, e in ips["estimates"].items():
        lines.append(
            f"| {name} | {e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}], "
            f"online inside: {ips['agrees'][name]} |"
        )
    for kind in ("canary-good", "canary-bad", "canary-slow"):
        c = r[kind]
        last = c["history"][-1]
        lines.append(f"| {kind} | {c['status']} at {last[0]:.0f} h, stage {last[1]}: {last[2]} |")
    lines += [
        "",
        "Seconds per scenario: " + ", ".join(f"{k} {r[k]['seconds']}" for k in r if "seconds" in r[k]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = _run_all(args.state_dir or Path(tmp))
    result["when"] = datetime.now(UTC).strftime("%Y-%m-%d")
    result["machine"] = f"{platform.machine()}, {platform.python_version()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "experiments.json").write_text(json.dumps(result, indent=2))
    text = _markdown(result)
    (RESULTS / "experiments.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
