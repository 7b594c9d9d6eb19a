"""Immutable, content-addressed dataset snapshots under ``datasets/<dataset_version>/``.

The version is a hash of the clean tables in a canonical order together with their schemas, so the
same input and mapping always give the same version, and a snapshot once written is never rewritten.
Events are stored partitioned by event date (``recsys/ingest/event_store.py``) and hashed partition by
partition in date order, each in its storage order (which is total: it ends with ``event_id``), so a
snapshot can be streamed to disk a few days at a time (:class:`SnapshotWriter`) and still gets the version
that the whole table would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.ingest.event_store import EVENTS_DIR, read_events, split_by_date, write_partition
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


def dataset_version(events_digest: bytes, items: pa.Table, users: pa.Table) -> str:
    """Hash of the events' partition digests (:meth:`SnapshotWriter.add_events`) and the canonical items
    and users tables (schemas included): equal content, equal version."""
    digest = hashlib.sha256()
    for name, part in (("interaction_events", events_digest), ("items", _table_digest(items))):
        digest.update(name.encode() + b"\0" + part)
    digest.update(b"users\0" + _table_digest(users))
    return digest.hexdigest()[:VERSION_LENGTH]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class SnapshotWriter:
    """Stream a snapshot into a hidden folder: event partitions as they come, then the small tables and the
    manifest; :meth:`finish` renames it into place unless that version exists, and points
    ``datasets/LATEST`` at it. A reader never sees a half-written version, and two concurrent writers of
    the same version cannot both win. Use it as a context manager: the hidden folder goes on any exit.
    """

    def __init__(self, state: StateDir) -> None:
        self.state = state
        state.datasets.mkdir(parents=True, exist_ok=True)
        self.tmp = state.datasets / f".tmp-{uuid.uuid4().hex}"
        self.tmp.mkdir()
        self.partitions: dict[str, int] = {}
        self._digest = hashlib.sha256()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def add_events(self, table: pa.Table) -> None:
        """Write clean events (``EVENTS_SCHEMA``); each call must hold whole days later than any before."""
        for name, part in split_by_date(table):
            if self.partitions and name <= max(self.partitions):
                raise ValueError(
                    f"events of {name} come after those of {max(self.partitions)}: days out of order"
                )
            write_partition(self.tmp, name, part)
            self.partitions[name] = part.num_rows
            self._digest.update(name.encode() + b"\0" + _table_digest(part))

    def finish(
        self, items: pa.Table, users: pa.Table, quarantine: pd.DataFrame, manifest: dict[str, Any]
    ) -> tuple[str, bool]:
        """Write the canonical ``items`` and ``users`` tables, the quarantine and the manifest.

        Returns:
            the version and whether this call wrote it.
        """
        version = dataset_version(self._digest.digest(), items, users)
        target = self.state.dataset(version)
        created = False
        if not (target / "manifest.json").exists():
            (self.tmp / EVENTS_DIR).mkdir(exist_ok=True)
            pq.write_table(items, self.tmp / "items.parquet")
            pq.write_table(users, self.tmp / "users.parquet")
            pq.write_table(to_arrow(quarantine, SCHEMAS["quarantine"]), self.tmp / "quarantine.parquet")
            full = {"dataset_version": version, **manifest}
            (self.tmp / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
            try:
                os.rename(self.tmp, target)
                created = True
            except OSError:
                if not (target / "manifest.json").exists():
                    raise
                # Another writer put the same version in place first: its content is ours by construction.
        _write_text_atomic(self.state.datasets / "LATEST", version + "\n")
        return version, created


def read_manifest(state: StateDir, version: str) -> dict[str, Any]:
    path = state.dataset(version) / "manifest.json"
    if not path.exists():
        raise MissingStateError(f"dataset version {version!r} not found under {state.datasets}")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def load_table(state: StateDir, version: str, name: str) -> pd.DataFrame:
    """One table of a version in pandas form (``quarantine`` included)."""
    if name == EVENTS_DIR:
        try:
            return read_events(state.dataset(version))
        except FileNotFoundError as err:
            raise MissingStateError(str(err)) from err
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


def base_manifest(source: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"created_at": datetime.now(UTC).isoformat(), "source": source, "counts": counts}


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
    from recsys.ingest.schema import QUARANTINE_SCHEMA, empty_frame

    frames = {"interaction_events": events, "items": items, "users": users}
    tables = {name: canonical_table(name, df) for name, df in frames.items()}
    rejected = empty_frame(QUARANTINE_SCHEMA) if quarantine is None else quarantine
    counts = {}
    for name, table in tables.items():
        n_bad = int((rejected["table"] == name).sum())
        counts[name] = {"rows_in": table.num_rows + n_bad, "clean": table.num_rows, "quarantined": n_bad}
    manifest = base_manifest(source, counts) | (extra_manifest or {})
    with SnapshotWriter(state) as writer:
        writer.add_events(tables["interaction_events"])
        return writer.finish(tables["items"], tables["users"], rejected, manifest)
