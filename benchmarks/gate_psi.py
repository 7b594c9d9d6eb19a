"""The gate's score PSI, raw lambdarank scores against calibrated probabilities, on a trained state.

With the champion's retriever fixed, rankers are retrained on the champion's own ranker rows (the
validation window's candidates) with other seeds, and once on shuffled labels; each scores the champion's
test-window candidates, and its PSI against the champion's ranker is measured on raw scores and on
calibrated probabilities (the figure the gate checks, threshold 0.2). Needs a state with a trained
champion. Writes `benchmarks/results/gate_psi.json` and `.md`.
Usage: `python benchmarks/gate_psi.py --state-dir DIR [--config configs/x.yaml] [--seeds 1 2 3 4]`.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
COLUMNS = ["user_id", "item_id", "retrieval_score", "event_timestamp"]


def measure(state_dir: Path, config: Path | None, seeds: list[int]) -> dict[str, Any]:
    from evaluation.harness import load_window, score_system
    from monitoring.shift import score_psi
    from recsys.config import load_config
    from recsys.features.store import historical_features
    from training import examples as ex
    from training.candidates import ranker_inputs
    from training.item_knn_signal import ItemKNNSignal
    from training.ranker import train_ranker

    cfg = load_config(config, [f"state_dir={state_dir}"])

    def knn_as_of(window: Any) -> ItemKNNSignal | None:
        """The challengers' item-kNN signal as of the window start (as training and evaluation fit it)."""
        if not cfg.ranker.item_knn:
            return None
        return ItemKNNSignal.fit(window.history, cfg.ranker.item_knn_neighbours)

    n = cfg.ranker.n_candidates
    validation = load_window(cfg, None, "validation")
    rows = score_system(cfg, validation, "champion", n).ranked
    matrix, sizes, _ = ranker_inputs(
        validation.store,
        historical_features,
        rows[COLUMNS],
        cfg.ranker.feature_service,
        knn_as_of(validation),
    )
    labels = ex.candidate_labels(rows, validation.relevant)
    test = load_window(cfg, None, "test")
    champion = score_system(cfg, test, "champion", n).ranked
    requests, _, _ = ranker_inputs(
        test.store, historical_features, champion[COLUMNS], cfg.ranker.feature_service, knn_as_of(test)
    )
    reference_raw = champion["rank_score"].to_numpy()
    reference = champion["rank_probability"].to_numpy()
    variants = [(f"ranker.seed={s}", labels, s) for s in seeds]
    variants.append(("shuffled labels", np.random.default_rng(0).permutation(labels), cfg.ranker.seed))
    out = []
    for name, y, seed in variants:
        trained = train_ranker(
            matrix, y, sizes, cfg.ranker.model_copy(update={"seed": seed}), item_knn=cfg.ranker.item_knn
        )
        raw = trained.booster.predict(requests)
        out.append(
            {
                "challenger": name,
                "best_iteration": int(trained.metrics["ranker_best_iteration"]),
                "holdout_ndcg_at_10": round(trained.metrics["ranker_holdout_ndcg_at_10"], 4),
                "psi_raw": round(score_psi(reference_raw, raw), 4),
                "psi_calibrated": round(score_psi(reference, trained.calibrator.probabilities(raw)), 4),
            }
        )
        print(out[-1])
    return {
        "state_rows": {"validation": len(labels), "test": len(reference)},
        "max_score_psi": cfg.evaluate.gate.max_score_psi,
        "challengers": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    figures = measure(args.state_dir, args.config, args.seeds)
    figures["machine"] = platform.platform()
    figures["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    figures["command"] = "python benchmarks/gate_psi.py --state-dir STATE" + (
        f" --config {args.config}" if args.config else ""
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gate_psi.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        "# Gate score PSI: raw ranker scores vs calibrated probabilities",
        "",
        f"`{figures['command']}`; champion's retriever and ranker rows "
        f"({figures['state_rows']['validation']} validation rows, "
        f"{figures['state_rows']['test']} test rows); gate threshold {figures['max_score_psi']}.",
        "",
        "| challenger | best iteration | holdout NDCG@10 | PSI raw | PSI calibrated |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['challenger']} | {c['best_iteration']} | {c['holdout_ndcg_at_10']} | {c['psi_raw']} | "
        f"{c['psi_calibrated']} |"
        for c in figures["challengers"]
    ]
    (RESULTS / "gate_psi.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
