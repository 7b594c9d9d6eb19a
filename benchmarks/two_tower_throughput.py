"""Two-tower training throughput (examples/s) through Ray Train, on CPU, and on a GPU where torch sees one.

The examples are synthetic, shaped like the product's: user and item ids, the dense genre features, the
384-d content embedding of the item tower and a 20-item history, at two vocabulary scales (MovieLens, and
the simulated 1M-user / 100k-item platform). Each setting trains `--epochs` epochs through
`training.retrieval.train_retrieval` (Ray Train `TorchTrainer`, the same loop `recsys train` runs) and
reports the last epoch's `train_examples_per_s` (the earlier ones warm up). The ID tables train with dense
gradients (AdamW) or sparse ones (lazy Adam, `two_tower.sparse_embeddings`). One worker is
the baseline every other setting is compared with in the same run. A GPU is used when torch sees one
(`use_gpu: auto`), with each batch moved to it as in training.
Writes `benchmarks/results/two_tower_throughput.json` and `.md`.
Usage: `python benchmarks/two_tower_throughput.py [--examples 50000] [--epochs 2]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from saving import run_meta, save

SCALES = {"movielens": (610, 9_724), "1M users": (1_000_000, 100_000)}
Sparse = Literal["auto", "yes", "no"]
SETTINGS: tuple[
    tuple[int, int, Sparse], ...
] = (  # (workers, batch, two_tower.sparse_embeddings); first: baseline
    (1, 512, "no"),
    (1, 512, "yes"),
    (1, 2048, "yes"),
    (2, 512, "no"),  # several workers all-reduce dense gradients
)
CONTENT_DIM = 384
HISTORY = 20


def _examples(n: int, n_users: int, n_items: int, seed: int) -> Any:
    from recsys.vocab import GENRES
    from training.retrieval import TwoTowerExamples

    rng = np.random.default_rng(seed)
    n_genres = len(GENRES)
    items = rng.zipf(1.3, size=n) % n_items + 1  # a popularity skew, as real positives have
    return TwoTowerExamples(
        user_idx=rng.integers(1, n_users + 1, size=n),
        user_dense=rng.random((n, n_genres + 1), dtype=np.float32),
        item_idx=items.astype(np.int64),
        item_dense=rng.standard_normal((n, n_genres + 2 + CONTENT_DIM), dtype=np.float32),
        history=rng.integers(0, n_items + 1, size=(n, HISTORY)),
    )


def measure(n_examples: int, epochs: int) -> dict[str, Any]:
    import torch

    from recsys.config import TwoTowerConfig
    from recsys.vocab import GENRES
    from training.retrieval import train_retrieval
    from training.two_tower import TwoTowerModelConfig

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows: list[dict[str, Any]] = []
    for scale, (n_users, n_items) in SCALES.items():
        train = _examples(n_examples, n_users, n_items, 0)
        validation = _examples(2_048, n_users, n_items, 1)
        shape = TwoTowerModelConfig(
            n_users=n_users + 1,
            n_items=n_items + 1,
            n_genres=len(GENRES),
            content_dim=CONTENT_DIM,
            history_length=HISTORY,
        )
        for workers, batch, sparse in SETTINGS:
            cfg = TwoTowerConfig(
                epochs=epochs, batch_size=batch, num_workers=workers, sparse_embeddings=sparse
            )
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as storage:
                result = train_retrieval(train, validation, shape, cfg, Path(storage), logq_correction=True)
            wall = time.perf_counter() - started
            rows.append(
                {
                    "scale": scale,
                    "users": n_users,
                    "items": n_items,
                    "workers": workers,
                    "batch_size": batch,
                    "sparse_tables": sparse,
                    "examples": n_examples,
                    "epochs": epochs,
                    "examples_per_s": result.metrics["train_examples_per_s"],
                    "wall_s": wall,
                    "parameters": sum(v.numel() for v in result.state_dict.values()),
                }
            )
            print(rows[-1], flush=True)
    for row in rows:
        base = next(
            r
            for r in rows
            if r["scale"] == row["scale"]
            and (r["workers"], r["batch_size"], r["sparse_tables"]) == SETTINGS[0]
        )
        row["ratio_to_baseline"] = row["examples_per_s"] / base["examples_per_s"]
    return {"device": device, "torch_threads": torch.get_num_threads(), "rows": rows}


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# Two-tower training throughput",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores, device {data['device']}; "
        f"command: `{meta['command']}`",
        "",
        "Synthetic examples shaped like the product's (ids, genre features, 384-d content, 20-item",
        "history), trained through Ray Train as `recsys train` does; examples/s of the last epoch.",
        "",
        "The baseline is each scale's first row: one worker, batch 512, dense ID-table gradients.",
        "",
        "| scale | users | items | workers | batch | sparse | examples/s | vs baseline | parameters | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['scale']} | {r['users']:,} | {r['items']:,} | {r['workers']} | {r['batch_size']} | "
            f"{r['sparse_tables']} | {r['examples_per_s']:,.0f} | {r['ratio_to_baseline']:.2f}x | "
            f"{r['parameters']:,} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    command = f"python benchmarks/two_tower_throughput.py --examples {args.examples} --epochs {args.epochs}"
    data = {**measure(args.examples, args.epochs)}
    data["meta"] = run_meta(command)
    save("two_tower_throughput", data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
