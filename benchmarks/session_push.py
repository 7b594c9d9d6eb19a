"""Session freshness: from an event accepted by `POST /events` to the same session read by another replica.

Builds a seeded item catalogue (genre vectors materialised into the online store) and two ingress
replicas' session handles (`serving.app.load_shared_sessions`, each with a Feast store of its own). Per
event, replica A does what `POST /events` does once the body is parsed (validated events -> durable
event log append -> `OnlineSessions.record`, the read-extend-push), and replica B polls its session
read until the new item is the user's last; the time from the start of A's work to B's first read that
shows the event is `accepted -> visible`. Users rotate so sessions grow to their 10 items.

    .venv/bin/python benchmarks/session_push.py --store sqlite
    .venv/bin/python benchmarks/session_push.py --store redis --redis-url redis://127.0.0.1:6379/12

Writes `benchmarks/results/session_push.json` and `.md` (the stores measured, merged by store).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from saving import earlier_runs, save

SNAPSHOT = datetime(2026, 1, 1, tzinfo=UTC)


def write_catalogue(offline: Path, n_items: int, seed: int = 0) -> None:
    """An item snapshot with seeded genre vectors (the other item features null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.features import schema
    from recsys.vocab import GENRES

    rng = np.random.default_rng(seed)
    layout = schema.item_features_schema()
    columns: dict[str, list[Any]] = {name: [None] * n_items for name in layout.names}
    columns["item_id"] = [f"i{j}" for j in range(n_items)]
    columns["item_genre_vector"] = (rng.random((n_items, len(GENRES))) < 0.15).astype(float).tolist()
    columns["feature_ts"] = columns["created_ts"] = [SNAPSHOT] * n_items
    offline.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=layout), offline / schema.ITEM_FEATURES_FILE)


def _stats(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000.0
    return {
        "median_ms": round(float(np.median(ms)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "n": len(samples),
    }


def run(store_kind: str, redis_url: str, n_events: int, n_users: int, n_items: int) -> dict[str, Any]:
    from recsys.config import FeaturesConfig, PipelineConfig
    from recsys.features.store import apply_definitions, build_store, materialize
    from recsys.state import StateDir
    from serving.app import load_shared_sessions
    from serving.events import EventLog, events_frame, parse_events

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="session-push-") as folder:
        state = StateDir(Path(folder))
        write_catalogue(state.offline, n_items)
        features = FeaturesConfig(online_store=store_kind, redis_url=redis_url)  # type: ignore[arg-type]
        config = PipelineConfig(state_dir=state.root, features=features)
        store = build_store(state, features)
        apply_definitions(store)
        materialize(store, SNAPSHOT, views=["item_stats"])
        writer, reader = load_shared_sessions(config), load_shared_sessions(config)  # replicas A and B
        log = EventLog(state.events)
        visible, push, read = [], [], []
        for n in range(n_events):
            user, item = f"u{n % n_users}", f"i{int(rng.integers(n_items))}"
            body = {
                "events": [
                    {
                        "event_id": f"e{n}",
                        "user_id": user,
                        "item_id": item,
                        "event_type": "click",
                        "session_id": f"s-{user}",
                        "surface": "homepage",
                        "device_type": "mobile",
                        "event_ts": datetime.now(UTC).isoformat(),
                    }
                ]
            }
            accepted = parse_events(json.dumps(body).encode(), max_events=10).accepted
            started = time.perf_counter()
            log.append(events_frame(accepted, datetime.now(UTC)))
            pushed = time.perf_counter()
            writer.record(accepted)
            push.append(time.perf_counter() - pushed)
            while True:
                polled = time.perf_counter()
                items = reader.items(user)
                read.append(time.perf_counter() - polled)
                if items and items[-1] == item:
                    break
                if time.perf_counter() - started > 5.0:
                    raise RuntimeError(f"event {n} not visible after 5 s")
            visible.append(time.perf_counter() - started)
    return {
        "store": store_kind,
        "events": n_events,
        "users": n_users,
        "items": n_items,
        "accepted -> visible": _stats(visible),
        "push (read-extend-push)": _stats(push),
        "session read": _stats(read),
    }


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Session freshness: event accepted -> visible to another replica's online read",
        "",
        f"{results['measured_at']}, {results['machine']}. Command: `{results['command']}`",
        "",
        "| store | measure | median ms | p99 ms | max ms | n |",
        "|---|---|---|---|---|---|",
    ]
    for run_ in results["runs"].values():
        for name in ("accepted -> visible", "push (read-extend-push)", "session read"):
            row = run_[name]
            lines.append(
                f"| {run_['store']} | {name} | {row['median_ms']} | {row['p99_ms']} | {row['max_ms']} | "
                f"{row['n']} |"
            )
    lines += [
        "",
        "`accepted -> visible` starts after validation: the event log append (fsync'd Parquet) and the push",
        "are what `POST /events` awaits before it answers, so the event is visible to every replica by the",
        "time the client has its 200. The goal is < 1 s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "redis"], action="append")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12"))
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--items", type=int, default=5_000)
    args = parser.parse_args()
    results = earlier_runs("session_push")
    for kind in args.store or ["sqlite"]:
        figures = run(kind, args.redis_url, args.events, args.users, args.items)
        results["runs"][kind] = figures
        print(json.dumps(figures, indent=2))
    stores = " ".join(f"--store {kind}" for kind in results["runs"])
    results["command"] = f".venv/bin/python benchmarks/session_push.py {stores} --events {args.events}"
    results["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    save("session_push", results, _markdown(results))


if __name__ == "__main__":
    main()
