"""Online read of one ranking request's candidates: Feast's `get_online_features` against the fast path.

Builds a synthetic, seeded feature store (users and items in the snapshot layout, materialised into the
online store), then times the read the ranking stage makes for one request (`ranker_v1`: one user, N
candidates) three ways, interleaved so that a noisy machine moves all three together:

- `feast`: `recsys.features.store.online_features` (Feast's `get_online_features` + `to_df`);
- `fast`: `recsys.features.online_read.OnlineReader` with no cache;
- `fast + item cache`: the same with the item cache on (each request draws fresh random candidates from
  the catalogue, so the hit rate is what the catalogue size allows, not 100 %).

    .venv/bin/python benchmarks/feature_read.py --store sqlite
    .venv/bin/python benchmarks/feature_read.py --store redis --redis-url redis://127.0.0.1:6379/12

Writes `benchmarks/results/feature_read.json` and `.md` (the stores measured, merged by store).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from saving import earlier_runs, save

SNAPSHOT = datetime(2020, 1, 1, tzinfo=UTC)


def write_snapshots(offline: Path, n_users: int, n_items: int, seed: int = 0) -> None:
    """One seeded snapshot per user and item, in the offline tables' layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.features import schema
    from recsys.vocab import GENRES

    rng = np.random.default_rng(seed)
    genres = len(GENRES)
    users: dict[str, Any] = {
        "user_id": [str(j) for j in range(n_users)],
        "feature_ts": [SNAPSHOT] * n_users,
        "user_genre_affinity": list(rng.dirichlet(np.ones(genres), n_users).astype(np.float32)),
        "user_n_events": rng.integers(0, 2000, n_users),
        "user_n_positive": rng.integers(0, 200, n_users),
        "user_n_events_30d": rng.integers(0, 100, n_users),
        "user_days_since_first_event": rng.uniform(0, 3000, n_users),
        "user_days_since_last_event": rng.uniform(0, 300, n_users),
    }
    items: dict[str, Any] = {
        "item_id": [str(j) for j in range(n_items)],
        "feature_ts": [SNAPSHOT] * n_items,
        "item_genre_vector": list((rng.random((n_items, genres)) < 0.15).astype(np.float32)),
        "item_n_events": rng.integers(0, 5000, n_items),
        "item_n_positive": rng.integers(0, 500, n_items),
        "item_n_events_365d": rng.integers(0, 1000, n_items),
        "item_positive_rate": rng.random(n_items),
        "item_age_days": rng.uniform(0, 9000, n_items),
    }
    offline.mkdir(parents=True, exist_ok=True)
    for columns, layout, name in (
        (users, schema.user_features_schema(), schema.USER_FEATURES_FILE),
        (items, schema.item_features_schema(), schema.ITEM_FEATURES_FILE),
    ):
        columns["created_ts"] = columns["feature_ts"]
        table = pa.table(
            {
                key: list(value) if key.endswith(("affinity", "vector")) else value
                for key, value in columns.items()
            }
        )
        # Features this benchmark does not set (views added later) are null.
        for field in layout:
            if field.name not in table.column_names:
                table = table.append_column(field.name, pa.nulls(len(table), field.type))
        pq.write_table(table.select(layout.names).cast(layout), offline / name)
    pq.write_table(schema.coview_schema().empty_table(), offline / schema.COVIEW_FILE)


def _median_ms(samples: list[float]) -> float:
    return round(float(np.median(samples)) * 1000, 3)


def measure(
    readers: dict[str, Callable[[str, list[dict[str, Any]]], Any]],
    n_users: int,
    n_items: int,
    candidates: int,
    repeats: int,
    seed: int = 1,
) -> dict[str, dict[str, float]]:
    """Median and p90 read time per reader over `repeats` requests, interleaved."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(5):  # warm-up: the first reads open connections and load the registry
        for read in readers.values():
            read("ranker_v1", [{"user_id": "0", "item_id": str(j)} for j in range(candidates)])
    for _ in range(repeats):
        user = str(rng.randrange(n_users))
        rows = [{"user_id": user, "item_id": str(j)} for j in rng.sample(range(n_items), candidates)]
        for name, read in readers.items():
            started = time.perf_counter()
            frame = read("ranker_v1", rows)
            samples[name].append(time.perf_counter() - started)
            if len(frame) != candidates:
                raise RuntimeError(f"{name} returned {len(frame)} rows for {candidates}")
    return {
        name: {
            "median_ms": _median_ms(values),
            "p90_ms": round(float(np.percentile(values, 90)) * 1000, 3),
            "n": len(values),
        }
        for name, values in samples.items()
    }


def run(
    store_kind: str, redis_url: str, n_users: int, n_items: int, candidates: int, repeats: int
) -> dict[str, Any]:
    from functools import partial

    from recsys.config import FeaturesConfig
    from recsys.features.online_read import OnlineReader
    from recsys.features.store import apply_definitions, build_store, materialize, online_features
    from recsys.state import StateDir

    with tempfile.TemporaryDirectory(prefix="feature-read-") as folder:
        state = StateDir(Path(folder))
        write_snapshots(state.offline, n_users, n_items)
        store = build_store(state, FeaturesConfig(online_store=store_kind, redis_url=redis_url))  # type: ignore[arg-type]
        apply_definitions(store)
        started = time.perf_counter()
        materialize(store, SNAPSHOT + timedelta(days=1))
        materialize_s = time.perf_counter() - started
        cached = OnlineReader(store, cache_ttl_s=3600.0)
        readers: dict[str, Callable[[str, list[dict[str, Any]]], Any]] = {
            "feast": partial(online_features, store),
            "fast": OnlineReader(store),
            "fast + item cache": cached,
        }
        figures = measure(readers, n_users, n_items, candidates, repeats)
    hits = cached.cache.hits if cached.cache is not None else 0
    looked = hits + (cached.cache.misses if cached.cache is not None else 0)
    base = figures["feast"]["median_ms"]
    for row in figures.values():
        row["speed-up vs feast"] = round(base / row["median_ms"], 1)
    return {
        "store": store_kind,
        "users": n_users,
        "items": n_items,
        "candidates": candidates,
        "materialize_s": round(materialize_s, 1),
        "item_cache_hit_rate": round(hits / looked, 3) if looked else 0.0,
        "readers": figures,
    }


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Online feature read of one ranking request (`ranker_v1`, one user + N candidates)",
        "",
        f"{results['measured_at']}, {results['machine']}. Command: `{results['command']}`",
        "",
        "| store | items | candidates | reader | median ms | p90 ms | n | speed-up vs feast |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run_ in results["runs"].values():
        for name, row in run_["readers"].items():
            lines.append(
                f"| {run_['store']} | {run_['items']} | {run_['candidates']} | {name} | {row['median_ms']} | "
                f"{row['p90_ms']} | {row['n']} | {row['speed-up vs feast']}x |"
            )
    lines += [
        "",
        "The item cache's hit rate is that of random candidates drawn from the catalogue over the run "
        + ", ".join(f"({r['store']}: {r['item_cache_hit_rate']:.0%})" for r in results["runs"].values())
        + "; a real candidate stream repeats popular items more often.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "redis"], action="append")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12"))
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    results = earlier_runs("feature_read")
    for kind in args.store or ["sqlite"]:
        figures = run(kind, args.redis_url, args.users, args.items, args.candidates, args.repeats)
        results["runs"][kind] = figures
        print(json.dumps(figures, indent=2))
    results["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    stores = " ".join(f"--store {kind}" for kind in results["runs"])
    results["command"] = (
        f".venv/bin/python benchmarks/feature_read.py {stores} --items {args.items} "
        f"--candidates {args.candidates} --repeats {args.repeats}"
    )
    save("feature_read", results, _markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
