"""The dataset catalogue: every snapshot under ``datasets/`` with its row counts and time range.

Everything comes from the manifests and the Parquet footers (row-group statistics), so listing does not
read a single event row, however large the snapshots are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from recsys.ingest.event_store import event_time_range
from recsys.state import StateDir


@dataclass(frozen=True)
class CatalogueEntry:
    """One dataset version as the catalogue lists it."""

    dataset_version: str
    created_at: str
    source: str
    events: int
    items: int
    users: int
    quarantined: int
    first_event: datetime | None
    last_event: datetime | None
    latest: bool

    def as_dict(self) -> dict[str, object]:
        row = asdict(self)
        for key in ("first_event", "last_event"):
            row[key] = row[key].isoformat() if row[key] is not None else None
        return row


def dataset_catalogue(state: StateDir) -> list[CatalogueEntry]:
    """Every complete snapshot, oldest first (hidden temporary folders and half-written ones are skipped)."""
    if not state.datasets.is_dir():
        return []
    pointer = state.datasets / "LATEST"
    latest = pointer.read_text().strip() if pointer.exists() else None
    entries: list[CatalogueEntry] = []
    for folder in sorted(state.datasets.iterdir()):
        manifest_path = folder / "manifest.json"
        if folder.name.startswith(".") or not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        counts = manifest.get("counts", {})
        span = event_time_range(folder)
        entries.append(
            CatalogueEntry(
                dataset_version=folder.name,
                created_at=str(manifest.get("created_at", "")),
                source=str(manifest.get("source", {}).get("name", "")),
                events=int(counts.get("interaction_events", {}).get("clean", 0)),
                items=int(counts.get("items", {}).get("clean", 0)),
                users=int(counts.get("users", {}).get("clean", 0)),
                quarantined=sum(int(c.get("quarantined", 0)) for c in counts.values()),
                first_event=span[0] if span else None,
                last_event=span[1] if span else None,
                latest=folder.name == latest,
            )
        )
    return sorted(entries, key=lambda e: (e.created_at, e.dataset_version))
