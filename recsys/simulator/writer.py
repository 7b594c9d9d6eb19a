"""Arrow tables in the ingest schemas from simulated arrays, and the date-partitioned Parquet layout.

Ids are built by Arrow compute kernels and a vectorised hex encoder, never one Python string per event:
``u<n>`` and ``i<n>`` for users and items, ``<user_id>-<n>`` for sessions, 16 hex digits for events and
requests (a bijective 64-bit mix of a counter, so they are unique by construction).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.ingest.schema import EVENTS_SCHEMA, TS, USERS_SCHEMA
from recsys.simulator.behaviour import EventBlock
from recsys.simulator.population import REGIONS, US_PER_DAY, Population
from recsys.vocab import DEVICE_TYPES, EVENT_TYPES, SURFACES

EVENTS_DIR = "interaction_events"
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)
_REQUEST_SALT = np.uint64(0x5EED5EED5EED5EED)


def mix64(x: np.ndarray) -> np.ndarray:
    """A bijection of uint64 that scatters consecutive counters (the splitmix64 finaliser)."""
    z = x.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hex16(values: np.ndarray) -> pa.Array:
    """Each uint64 as 16 lowercase hex digits, as an Arrow string array."""
    digits = _HEX[((values.astype(np.uint64)[:, None] >> _SHIFTS) & np.uint64(15)).astype(np.intp)]
    fixed = pa.Array.from_buffers(pa.binary(16), len(values), [None, pa.py_buffer(digits.tobytes())])
    return fixed.cast(pa.binary()).cast(pa.string())


def prefixed(prefix: str, values: np.ndarray) -> pa.Array:
    """``prefix`` followed by each integer in decimal."""
    return pc.binary_join_element_wise(prefix, pa.array(values).cast(pa.string()), "")


def _coded(vocabulary: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    indices = pa.array(codes.astype(np.int32), mask=codes < 0)
    return pa.array(vocabulary, pa.string()).take(indices)


def events_table(block: EventBlock, item_ids: pa.Array, event_keys: np.ndarray) -> pa.Table:
    """The block as an ``interaction_events`` table; ``event_keys`` are distinct uint64 per event."""
    user_ids = prefixed("u", block.user)
    columns = {
        "event_id": hex16(mix64(event_keys)),
        "user_id": user_ids,
        "item_id": item_ids.take(pa.array(block.item)),
        "event_type": _coded(EVENT_TYPES, block.kind),
        "dwell_time_ms": pa.array(block.dwell_ms, pa.int64(), mask=block.dwell_ms < 0),
        "surface": _coded(SURFACES, block.surface),
        "session_id": pc.binary_join_element_wise(user_ids, pa.array(block.session).cast(pa.string()), "-"),
        "device_type": _coded(DEVICE_TYPES, block.device),
        "position": pa.array(block.position, pa.int32(), mask=block.position < 0),
        "request_id": _request_ids(block.request),
        "event_ts": pa.array(block.event_us, TS),
        "server_ts": pa.array(block.server_us, TS),
    }
    return pa.table(columns, schema=EVENTS_SCHEMA)


def _request_ids(request: np.ndarray) -> pa.Array:
    ids = hex16(mix64(request.astype(np.uint64) ^ _REQUEST_SALT))
    return pc.if_else(pa.array(request < 0), pa.scalar(None, pa.string()), ids)


def users_table(users: Population) -> pa.Table:
    """The ``users`` table (``USERS_SCHEMA``) of one chunk; bots are ordinary-looking accounts."""
    columns = {
        "user_id": prefixed("u", users.first + np.arange(len(users))),
        "signup_ts": pa.array(users.signup_us, TS),
        "region": pa.array(REGIONS, pa.string()).take(pa.array(users.region.astype(np.int32))),
    }
    return pa.table(columns, schema=USERS_SCHEMA)


def write_partitions(table: pa.Table, root: Path, part: str) -> dict[str, int]:
    """Write ``table`` under ``root/interaction_events/event_date=YYYY-MM-DD/<part>.parquet`` by event date.

    Returns:
        rows written per date.
    """
    event_us = table["event_ts"].cast(pa.int64()).to_numpy()
    order = np.argsort(event_us, kind="stable")
    table = table.take(pa.array(order))
    day = event_us[order] // US_PER_DAY
    cuts = np.r_[0, np.flatnonzero(np.diff(day)) + 1, len(day)]
    written: dict[str, int] = {}
    for lo, hi in itertools.pairwise(cuts):
        if hi == lo:
            continue
        date = datetime.fromtimestamp(int(day[lo]) * 86_400, UTC).date().isoformat()
        folder = root / EVENTS_DIR / f"event_date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(int(lo), int(hi - lo)), folder / f"{part}.parquet")
        written[date] = int(hi - lo)
    return written


def read_events(root: Path) -> pa.Table:
    """All events of a simulated run, in ``EVENTS_SCHEMA`` (the partition column is dropped)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(root / EVENTS_DIR, format="parquet", partitioning="hive")
    return dataset.to_table(columns=EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
