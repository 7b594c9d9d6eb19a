"""Online read of one ranking request (1 user + 500 candidates of `ranker_v1`): Feast's SDK, the online
store's tables (`OnlineReader`), the packed values (`PackedReader`), and the bare transport of the packed
bytes, all in one run.

Builds a seeded synthetic store (users and items in the snapshot tables, materialised by Feast, then
packed by `recsys.features.packed_store.pack_services`), then times requests with random users and
random candidates. The readers are timed in two phases, each interleaved with its own `raw` baseline so
that a noisy machine moves them together (`sdk`: Feast and the table reads; `serving`: the packed
reads; apart, as the garbage Feast's calls leave would otherwise be collected inside the fast reads):

- `feast`: `recsys.features.store.online_features` (Feast's `get_online_features` + `to_df`);
- `online_reader`: `recsys.features.online_read.OnlineReader`, no item cache;
- `packed`: `recsys.features.packed_store.PackedReader`: build keys, one MGET / SELECT of pointer + user +
  candidates, decode, the same frame as Feast's (checked on the first requests);
- `packed + item table`: the same with every item record held in memory (`local_keys=("item_id",)`,
  loaded when a generation goes live): one MGET of pointer + user, the candidates taken from memory;
- `raw`: the same MGET / SELECT with the key list (or parameters) built beforehand, the bytes not decoded:
  redis-py's `client.mget(keys)` / sqlite3's `execute(sql, params).fetchall()`.

    .venv/bin/python benchmarks/feature_read_packed.py --store redis --store sqlite

Writes `benchmarks/results/feature_read_packed.json` and `.md` (merged by store).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from saving import earlier_runs, save

SNAPSHOT = datetime(2020, 1, 1, tzinfo=UTC)
SERVICE = "ranker_v1"
# Readers timed together, each phase against its own raw baseline.
PHASES = {"sdk": ("feast", "online_reader"), "serving": ("packed", "packed + item table")}
VIEWS = ("user_stats", "item_stats")


def write_tables(store: Any, n_users: int, n_items: int, seed: int = 0) -> None:
    """One seeded snapshot per user and item for the views of `VIEWS`, typed from the views' fields."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from feast import FileSource

    from recsys.vocab import GENRES

    rng = np.random.default_rng(seed)
    arrow = {"INT64": pa.int64(), "INT32": pa.int32(), "FLOAT": pa.float32(), "DOUBLE": pa.float64()}
    files: dict[str, dict[str, Any]] = {}
    for name in VIEWS:
        view = store.get_feature_view(name)
        source = view.batch_source
        assert isinstance(source, FileSource)
        key = view.entity_columns[0].name
        n = n_users if key == "user_id" else n_items
        table = files.setdefault(
            source.path,
            {
                key: pa.array([str(j) for j in range(n)]),
                source.timestamp_field: pa.array([SNAPSHOT] * n, pa.timestamp("us", "UTC")),
            },
        )
        if source.created_timestamp_column:
            table[source.created_timestamp_column] = table[source.timestamp_field]
        for field in view.features:
            kind = field.dtype.to_value_type().name
            if kind == "FLOAT_LIST":
                # Items carry multi-hot genre vectors, users continuous genre shares (as the real job).
                shares = rng.random((n, len(GENRES)), dtype=np.float32)
                values = (shares < 0.15).astype(np.float32) if key == "item_id" else shares
                table[field.name] = pa.FixedSizeListArray.from_arrays(values.ravel(), len(GENRES)).cast(
                    pa.list_(pa.float32())
                )
            elif kind in arrow:
                table[field.name] = pa.array(rng.integers(0, 5000, n)).cast(arrow[kind])
            else:
                raise SystemExit(f"the benchmark does not generate {kind} ({field.name})")
    for path, columns in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)


def _stats(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "n": len(samples),
    }


def run(
    kind: str, redis_url: str, n_users: int, n_items: int, candidates: int, repeats: int
) -> dict[str, Any]:
    from functools import partial

    import pandas as pd

    from recsys.config import FeaturesConfig
    from recsys.features.online_read import OnlineReader
    from recsys.features.packed_store import PackedReader, load_layout, pack_services, packed_backend
    from recsys.features.store import apply_definitions, build_store, online_features
    from recsys.state import StateDir

    with tempfile.TemporaryDirectory(prefix="feature-read-packed-") as folder:
        store = build_store(StateDir(Path(folder)), FeaturesConfig(online_store=kind, redis_url=redis_url))  # type: ignore[arg-type]
        if kind == "redis":
            packed_backend(store)._client.flushdb()  # type: ignore[union-attr]
        apply_definitions(store)
        write_tables(store, n_users, n_items)
        started = time.perf_counter()
        store.materialize(
            SNAPSHOT - timedelta(days=1), SNAPSHOT + timedelta(days=1), feature_views=list(VIEWS)
        )
        materialize_s = time.perf_counter() - started
        started = time.perf_counter()
        pack_services(store, [SERVICE])
        pack_s = time.perf_counter() - started
        backend = packed_backend(store)
        generation = load_layout(backend, SERVICE).generation
        packed = PackedReader(store)
        in_memory = PackedReader(store, local_keys=("item_id",))
        readers: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
            "feast": partial(online_features, store, SERVICE),
            "online_reader": partial(OnlineReader(store), SERVICE),
            "packed": partial(packed, SERVICE),
            "packed + item table": partial(in_memory, SERVICE),
        }
        raw = _raw_read(kind, backend, generation)
        rng = random.Random(1)

        def request() -> list[dict[str, Any]]:
            user = str(rng.randrange(n_users))
            return [{"user_id": user, "item_id": str(j)} for j in rng.sample(range(n_items), candidates)]

        for _ in range(5):  # warm-up, and the packed frame is Feast's
            rows = request()
            frames = {name: read(rows) for name, read in readers.items()}
            pd.testing.assert_frame_equal(frames["packed"], frames["feast"])
            pd.testing.assert_frame_equal(frames["packed + item table"], frames["feast"])
            raw(rows)
        # Two phases, each with its own raw baseline: Feast's calls allocate so much that timing the fast
        # readers between them would measure Feast's garbage collection and cache misses too.
        figures: dict[str, dict[str, dict[str, float]]] = {}
        for phase, names in PHASES.items():
            samples: dict[str, list[float]] = {name: [] for name in [*names, "raw"]}
            gc.collect()
            for _ in range(repeats):
                rows = request()
                prepared: Any = raw.prepare(rows)
                for name in names:
                    started = time.perf_counter()
                    readers[name](rows)
                    samples[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                raw.send(prepared)
                samples["raw"].append(time.perf_counter() - started)
            figures[phase] = {name: _stats(values) for name, values in samples.items()}
            base = figures[phase]["raw"]
            for row in figures[phase].values():
                row["p50 / raw"] = round(row["p50_ms"] / base["p50_ms"], 2)
                row["p99 / raw"] = round(row["p99_ms"] / base["p99_ms"], 2)
        for reader in (packed, in_memory):
            if reader.fallbacks:
                raise RuntimeError(f"a packed reader fell back {reader.fallbacks} times: {reader.last_error}")
    return {
        "store": kind,
        "users": n_users,
        "items": n_items,
        "candidates": candidates,
        "materialize_s": round(materialize_s, 1),
        "pack_s": round(pack_s, 1),
        "phases": figures,
    }


class _RawRedis:
    """`client.mget` of the keys the packed reader asks for (pointer, user, candidates), nothing decoded."""

    def __init__(self, backend: Any, generation: str) -> None:
        self._client = backend._client
        self._base = f"{backend._project}:packed:{SERVICE}:"
        self._generation = generation

    def prepare(self, rows: list[dict[str, Any]]) -> list[str]:
        head = f"{self._base}{self._generation}:"
        users = dict.fromkeys(row["user_id"] for row in rows)
        items = dict.fromkeys(row["item_id"] for row in rows)
        return (
            [self._base + "live"]
            + [f"{head}user_id:{u}" for u in users]
            + [f"{head}item_id:{i}" for i in items]
        )

    def send(self, keys: list[str]) -> list[Any]:
        replies: list[Any] = self._client.mget(keys)
        return replies

    def __call__(self, rows: list[dict[str, Any]]) -> Any:
        return self.send(self.prepare(rows))


class _RawSqlite:
    """The packed reader's one SELECT (pointer + records, same parameters), rows fetched, nothing decoded."""

    def __init__(self, backend: Any, generation: str) -> None:
        import sqlite3

        self._conn = sqlite3.connect(f"file:{backend.path}?mode=rw", uri=True)
        self._generation = generation

    def prepare(self, rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
        users = list(dict.fromkeys(row["user_id"] for row in rows))
        items = list(dict.fromkeys(row["item_id"] for row in rows))
        parts = ["SELECT NULL, generation, NULL FROM packed_live WHERE service = ?"]
        params = [SERVICE]
        for key, ids in (("user_id", users), ("item_id", items)):
            parts.append(
                "SELECT join_key, entity_id, value FROM packed_values WHERE service = ? AND generation = ? "
                f"AND join_key = ? AND entity_id IN ({','.join('?' * len(ids))})"
            )
            params += [SERVICE, self._generation, key, *ids]
        return " UNION ALL ".join(parts), params

    def send(self, prepared: tuple[str, list[str]]) -> list[Any]:
        return self._conn.execute(*prepared).fetchall()

    def __call__(self, rows: list[dict[str, Any]]) -> Any:
        return self.send(self.prepare(rows))


def _raw_read(kind: str, backend: Any, generation: str) -> _RawRedis | _RawSqlite:
    return _RawRedis(backend, generation) if kind == "redis" else _RawSqlite(backend, generation)


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Online read of one ranking request (`ranker_v1`, 1 user + N candidates): Feast, table reads, "
        "packed values, raw transport",
        "",
        f"{results['measured_at']}, {results['machine']}. Command: `{results['command']}`",
        "",
        "| store | items | candidates | phase | reader | p50 ms | p99 ms | mean ms | n | p50 / raw "
        "| p99 / raw |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run_ in results["runs"].values():
        for phase, readers in run_["phases"].items():
            for name, row in readers.items():
                lines.append(
                    f"| {run_['store']} | {run_['items']} | {run_['candidates']} | {phase} | {name} | "
                    f"{row['p50_ms']} | {row['p99_ms']} | {row['mean_ms']} | {row['n']} | "
                    f"{row['p50 / raw']}x | {row['p99 / raw']}x |"
                )
    lines += [
        "",
        "`raw` is the packed reader's own request (the same keys, or the same SELECT and parameters) "
        "built beforehand, sent, and its bytes left undecoded. Materialise / pack seconds: "
        + ", ".join(f"{r['store']} {r['materialize_s']} / {r['pack_s']}" for r in results["runs"].values())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "redis"], action="append")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"))
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--output", default="feature_read_packed", help="results file name, without suffix")
    args = parser.parse_args()
    results = earlier_runs(args.output)
    for kind in args.store or ["redis", "sqlite"]:
        figures = run(kind, args.redis_url, args.users, args.items, args.candidates, args.repeats)
        results["runs"][kind] = figures
        print(json.dumps(figures, indent=2), file=sys.stderr)
    results["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    stores = " ".join(f"--store {kind}" for kind in results["runs"])
    results["command"] = (
        f".venv/bin/python benchmarks/feature_read_packed.py {stores} --users {args.users} "
        f"--items {args.items} --candidates {args.candidates} --repeats {args.repeats}"
    )
    save(args.output, results, _markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
