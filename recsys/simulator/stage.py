"""``run_simulate``: generate a whole platform's log, chunk by chunk, into date-partitioned Parquet.

Layout of ``out_dir``::

    interaction_events/event_date=YYYY-MM-DD/part-<chunk>.parquet   EVENTS_SCHEMA
    items.parquet                                                    ITEMS_SCHEMA
    users.parquet                                                    USERS_SCHEMA (one row group a chunk)
    manifest.json                                                    config, counts, timings

The run is written to a hidden directory beside ``out_dir`` and renamed into place; a second run with
the same configuration finds the manifest and writes nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys.ingest.schema import USERS_SCHEMA
from recsys.simulator.behaviour import KIND, EventBlock, behave, relevance
from recsys.simulator.catalogue import item_ids, items_table, make_catalogue
from recsys.simulator.population import make_population, taste_shift, to_us
from recsys.simulator.settings import SimulatorConfig
from recsys.simulator.traffic import bot_events, make_slates
from recsys.simulator.writer import events_table, users_table, write_partitions
from recsys.vocab import DEVICE_TYPES, EVENT_TYPES

_HOUR_US = 3600 * 1_000_000


@dataclass(frozen=True)
class SimulateSummary:
    """What a simulation wrote; ``created`` is False when an identical run was already there."""

    path: Path
    created: bool
    n_users: int
    n_items: int
    n_events: int
    n_bots: int
    counts: dict[str, int]
    n_late: int
    n_double_clicks: int
    n_bot_events: int
    n_partitions: int
    seconds: float


def _key(config: SimulatorConfig) -> dict[str, Any]:
    return json.loads(config.model_dump_json())  # type: ignore[no-any-return]


def _summary(path: Path, manifest: dict[str, Any], created: bool) -> SimulateSummary:
    fields = {k: manifest[k] for k in SimulateSummary.__dataclass_fields__ if k not in ("path", "created")}
    return SimulateSummary(path=path, created=created, **fields)


def _chunk_events(config: SimulatorConfig, chunk: int, catalogue: Any) -> tuple[Any, EventBlock]:
    users = make_population(config, chunk)
    rng = np.random.default_rng([config.seed, 5, chunk])
    slates = make_slates(config, users, catalogue, chunk, rng)
    taste = users.taste[slates.user - users.first]
    rel = relevance(config, taste, catalogue, slates.item, slates.at_us, taste_shift(config))
    human = behave(config, slates, rel, catalogue, rng)
    block = EventBlock.concat([human, bot_events(config, users, catalogue, rng)])
    return users, block.take(np.flatnonzero(block.event_us < to_us(config.end)))


def run_simulate(config: SimulatorConfig, out_dir: Path) -> SimulateSummary:
    """Simulate ``config`` into ``out_dir`` in bounded memory (one chunk of users at a time).

    Args:
        config: the simulator configuration (its seed makes the output reproducible).
        out_dir: where the tables go; it is created, or left as is when it holds this very run.
    """
    from rich.progress import Progress

    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") == _key(config):
            return _summary(out_dir, manifest, created=False)
        raise FileExistsError(f"{out_dir} holds a simulation of another configuration; pick a new out_dir")
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        catalogue = make_catalogue(config)
        pq.write_table(items_table(config, catalogue), tmp / "items.parquet")
        ids = item_ids(len(catalogue))
        counts: Counter[str] = Counter()
        dates: set[str] = set()
        n_late = n_double = n_bot_events = n_bots = 0
        n_chunks = math.ceil(config.n_users / config.chunk_users)
        salt = np.uint64((config.seed * 0x9E3779B97F4A7C15) % (1 << 64))
        with (
            pq.ParquetWriter(tmp / "users.parquet", USERS_SCHEMA) as users_out,
            Progress(transient=True) as progress,
        ):
            task = progress.add_task(f"simulating {config.n_users:,} users", total=n_chunks)
            for chunk in range(n_chunks):
                users, block = _chunk_events(config, chunk, catalogue)
                users_out.write_table(users_table(users))
                keys = salt + (np.uint64(chunk) << np.uint64(36)) + np.arange(len(block), dtype=np.uint64)
                dates |= write_partitions(events_table(block, ids, keys), tmp, f"part-{chunk:05d}").keys()
                kinds = np.bincount(block.kind, minlength=len(EVENT_TYPES))
                counts.update({name: int(kinds[code]) for code, name in enumerate(EVENT_TYPES)})
                n_late += int(((block.server_us - block.event_us) >= _HOUR_US).sum())
                n_bots += int(users.is_bot.sum())
                is_bot = users.is_bot[block.user - users.first]
                n_bot_events += int(is_bot.sum())
                clicks = np.flatnonzero((block.kind == KIND["click"]) & ~is_bot)
                n_double += len(clicks) - len(np.unique(block.request[clicks] * 128 + block.position[clicks]))
                progress.advance(task)
        manifest = {
            "config": _key(config),
            "n_users": config.n_users,
            "n_items": len(catalogue),
            "n_events": int(sum(counts.values())),
            "n_bots": n_bots,
            "counts": dict(counts),
            "n_late": n_late,
            "n_double_clicks": n_double,
            "n_bot_events": n_bot_events,
            "n_partitions": len(dates),
            "seconds": round(time.perf_counter() - started, 3),
            "devices": list(DEVICE_TYPES),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(out_dir, manifest, created=True)
