"""Item index at catalogue scale: exact (flat) against IVF search, build time, latency and recall.

Embeddings are synthetic (clustered unit vectors, like trained item embeddings with taste groups); the
queries are drawn the same way. Recall@K is against exact search over the same vectors.

    python benchmarks/index.py --items 1000000 --dim 64 --nprobe 8 16 32 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from saving import run_meta, save

from recsys.config import IndexConfig
from training.index import ItemIndex


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    points = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    unit: np.ndarray = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return unit


def latencies_ms(index: ItemIndex, queries: np.ndarray, k: int) -> np.ndarray:
    """One query at a time, as serving asks: milliseconds each."""
    index.search(queries[:1], k)  # warm-up
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None, :], k)
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=500, help="items asked per query (serving's N)")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: the config's default rule)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, args.dim)).astype(np.float32)
    embeddings = clustered(args.items, args.dim, rng, centres)
    queries = clustered(args.queries, args.dim, rng, centres)
    ids = np.arange(args.items)
    k = args.candidates

    start = time.perf_counter()
    flat = ItemIndex.build(embeddings, ids, IndexConfig(exact_below=args.items + 1))
    flat_build_s = time.perf_counter() - start
    exact, _ = flat.search(queries, k)
    flat_ms = latencies_ms(flat, queries, k)
    rows: list[dict[str, float | str]] = [
        {
            "index": "flat (exact)",
            "build_s": round(flat_build_s, 2),
            "p50_ms": round(float(np.median(flat_ms)), 3),
            "p99_ms": round(float(np.percentile(flat_ms, 99)), 3),
            "recall_at_100": 1.0,
            f"recall_at_{k}": 1.0,
        }
    ]
    del flat
    start = time.perf_counter()
    ivf = ItemIndex.build(embeddings, ids, IndexConfig(exact_below=1, nlist=args.nlist, nprobe=1))
    ivf_build_s = time.perf_counter() - start
    nlist = ivf.describe()["nlist"]
    for nprobe in args.nprobe:
        ivf._index.nprobe = nprobe  # the one knob read at search time; the same trained lists for all
        found, _ = ivf.search(queries, k)
        ms = latencies_ms(ivf, queries, k)
        rows.append(
            {
                "index": f"ivf nlist={nlist} nprobe={nprobe}",
                "build_s": round(ivf_build_s, 2),
                "p50_ms": round(float(np.median(ms)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
                "recall_at_100": round(recall(found, exact, 100), 4),
                f"recall_at_{k}": round(recall(found, exact, k), 4),
            }
        )
    command = (
        f"python benchmarks/index.py --items {args.items} --dim {args.dim} --queries {args.queries} "
        f"--candidates {k} --nlist {args.nlist} --nprobe {' '.join(map(str, args.nprobe))}"
    )
    meta = run_meta(command)
    base = float(rows[0]["p50_ms"])
    lines = [
        f"# Item index: {args.items:,} items x {args.dim} dimensions, top {k} per query",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores (shared); command: `{command}`",
        "",
        "Single-query latency (as serving asks), over the same queries; recall against exact search.",
        "",
        f"| index | build s | p50 ms | p99 ms | speed-up (p50) | recall@100 | recall@{k} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['index']} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{base / float(r['p50_ms']):.1f}x | {r['recall_at_100']} | {r[f'recall_at_{k}']} |"
        )
    text = "\n".join(lines)
    save("index", {**meta, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
