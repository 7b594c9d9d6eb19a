"""Immutable, content-addressed dataset snapshots under ``datasets/<dataset_version>/``.

The version is a hash of the clean tables in a canonical order together with their schemas, so the
same input and mapping always give the same version, and a snapshot once written is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.ingest.schema import SCHEMAS, to_arrow, to_pandas
from recsys.state import MissingStateError, StateDir

# Sort keys that make the content hash independent of row order.
CANONICAL_ORDER: dict[str, list[str]] = {
    "interaction_events": ["event_id"],
    "items": ["item_id"],
    "users": ["user_id"],
}
VERSION_LENGTH = 16


@dataclass(frozen=True)
class Dataset:
    """One dataset version: the three clean tables (pandas form) and its manifest."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    manifest: dict[str, Any]


def canonical_table(name: str, df: pd.DataFrame) -> pa.Table:
    """The table ``name`` with its schema, sorted by its key, in one chunk."""
    table = to_arrow(df, SCHEMAS[name])
    keys = [(key, "ascending") for key in CANONICAL_ORDER[name]]
    return table.sort_by(keys).combine_chunks()


def _table_digest(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    return hashlib.sha256(sink.getvalue().to_pybytes()).digest()


def dataset_version(tables: dict[str, pa.Table]) -> str:
    """Hash of the canonical tables (schema included): equal content, equal version."""
    digest = hashlib.sha256()
    for name in sorted(CANONICAL_ORDER):
        digest.update(name.encode() + b"\0")
        digest.update(_table_digest(tables[name]))
    return digest.hexdigest()[:VERSION_LENGTH]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_snapshot(
    state: StateDir,
    tables: dict[str, pa.Table],
    quarantine: pd.DataFrame,
    manifest: dict[str, Any],
) -> tuple[str, bool]:
    """Write a snapshot unless its version exists, and point ``datasets/LATEST`` at it.

    The files are written into a hidden temporary directory that is renamed into place, so a reader never
    sees a half-written version and two concurrent writers of the same version cannot both win.

    Returns:
        the version and whether this call wrote it.
    """
    version = dataset_version(tables)
    target = state.dataset(version)
    state.datasets.mkdir(parents=True, exist_ok=True)
    created = False
    if not (target / "manifest.json").exists():
        tmp = state.datasets / f".tmp-{version}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for name, table in tables.items():
                pq.write_table(table, tmp / f"{name}.parquet")
            pq.write_table(to_arrow(quarantine, SCHEMAS["quarantine"]), tmp / "quarantine.parquet")
            full = {"dataset_version": version, **manifest}
            (tmp / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
            os.rename(tmp, target)
            created = True
        except OSError:
            if not (target / "manifest.json").exists():
                raise
            # Another writer put the same version in place first: its content is ours by construction.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _write_text_atomic(state.datasets / "LATEST", version + "\n")
    return version, created


def read_manifest(state: StateDir, version: str) -> dict[str, Any]:
    path = state.dataset(version) / "manifest.json"
    if not path.exists():
        raise MissingStateError(f"dataset version {version!r} not found under {state.datasets}")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def load_table(state: StateDir, version: str, name: str) -> pd.DataFrame:
    """One table of a version in pandas form (``quarantine`` included)."""
    path = state.dataset(version) / f"{name}.parquet"
    if not path.exists():
        raise MissingStateError(f"{path} not found: run `recsys ingest` first")
    return to_pandas(pq.read_table(path, schema=SCHEMAS[name]))


def load_dataset(state: StateDir, version: str | None = None) -> Dataset:
    """The clean tables and manifest of ``version`` (default: ``datasets/LATEST``)."""
    chosen = state.resolve_version(version)
    return Dataset(
        events=load_table(state, chosen, "interaction_events"),
        items=load_table(state, chosen, "items"),
        users=load_table(state, chosen, "users"),
        manifest=read_manifest(state, chosen),
    )


def save_dataset(
    state: StateDir,
    events: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    source: dict[str, Any],
    quarantine: pd.DataFrame | None = None,
    extra_manifest: dict[str, Any] | None = None,
) -> tuple[str, bool]:
    """Snapshot already-validated tables from any source (a simulator, an imported log, a test).

    Returns:
        the version and whether this call wrote it.
    """
    from datetime import UTC, datetime

    from recsys.ingest.schema import QUARANTINE_SCHEMA, empty_frame

    frames = {"interaction_events": events, "items": items, "users": users}
    tables = {name: canonical_table(name, df) for name, df in frames.items()}
    rejected = empty_frame(QUARANTINE_SCHEMA) if quarantine is None else quarantine
    counts = {}
    for name, table in tables.items():
        n_bad = int((rejected["table"] == name).sum())
        counts[name] = {"rows_in": table.num_rows + n_bad, "clean": table.num_rows, "quarantined": n_bad}
    manifest = {"created_at": datetime.now(UTC).isoformat(), "source": source, "counts": counts}
    manifest |= extra_manifest or {}
    return write_snapshot(state, tables, rejected, manifest)
