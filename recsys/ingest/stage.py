"""The ingest stage: MovieLens CSVs -> data contracts -> an immutable dataset snapshot."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from rich.console import Console

from recsys.config import PipelineConfig
from recsys.ingest.cleaning import Reconciliation, clean_events, drop_duplicate_ids
from recsys.ingest.log_import import import_log
from recsys.ingest.movielens import SOURCE_FILES, read_movielens
from recsys.ingest.snapshot import save_dataset
from recsys.state import StateDir


class IngestError(ValueError):
    """The input yields no usable dataset (for example every event was quarantined)."""


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run produced; ``created`` is False when the version already existed."""

    dataset_version: str
    created: bool
    counts: dict[str, dict[str, int]]
    path: Path
    seconds: float

    @property
    def n_quarantined(self) -> int:
        return sum(c["quarantined"] for c in self.counts.values())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_ingest(
    config: PipelineConfig,
    dataset_version: str | None = None,
    source: Path | None = None,
    mapping: Path | None = None,
) -> IngestSummary:
    """Ingest MovieLens (``config.ingest.data_dir``), or any log given by ``source`` and its column
    ``mapping``, into ``state_dir``; re-running on the same input writes nothing.

    Events resent with the same id are dropped before the contracts (which would otherwise quarantine
    both copies); the contracts' clean events are then cleaned (bursts, bots, dwell cap, late count), and
    every input event is accounted for in the manifest's ``reconciliation``.

    Args:
        config: the pipeline configuration (``ingest`` and ``cleaning`` sections, ``state_dir``).
        dataset_version: unused; ingest derives the version from the content it reads.
        source: a CSV or Parquet event log to import instead of MovieLens.
        mapping: the column mapping YAML for ``source`` (required with it).
    """
    from data_contracts import validate_table

    started = time.perf_counter()
    console = Console(stderr=True)
    cfg = config.ingest
    state = StateDir(config.state_dir)
    if (source is None) != (mapping is None):
        raise IngestError("--source and --mapping go together: a log needs its column mapping")
    if source is not None and mapping is not None:
        with console.status(f"importing {source.name} with mapping {mapping.name}"):
            imported = import_log(source, mapping)
        raw, import_quarantine, rows_in = imported.tables, imported.quarantine, imported.rows_in
        origin: dict[str, object] = {
            "name": "log",
            "files": {source.name: {"sha256": _sha256(source)}, mapping.name: {"sha256": _sha256(mapping)}},
        }
    else:
        data_dir = Path(cfg.data_dir)
        with console.status(f"reading MovieLens from {data_dir}"):
            raw = read_movielens(cfg)
        import_quarantine, rows_in = None, len(raw.events)
        origin = {
            "name": "movielens",
            "directory": data_dir.name,
            "files": {name: {"sha256": _sha256(data_dir / name)} for name in SOURCE_FILES},
        }
    with console.status("validating items and users (Great Expectations)"):
        items = validate_table("items", raw.items)
        users = validate_table("users", raw.users)
    cleaning = config.cleaning
    unique_events, resent = drop_duplicate_ids(raw.events)
    with console.status(f"validating {len(unique_events):,} events (Great Expectations)"):
        events = validate_table(
            "interaction_events",
            unique_events,
            known_user_ids=set(users.clean["user_id"]),
            known_item_ids=set(items.clean["item_id"]),
        )
    with console.status("cleaning events (duplicates, bots, dwell, late arrivals)"):
        cleaned = clean_events(events.clean, cleaning)
    quarantines = [import_quarantine] if import_quarantine is not None and len(import_quarantine) else []
    reconciliation = Reconciliation(
        rows_in=rows_in,
        clean=len(cleaned.events),
        quarantined=len(events.quarantine) + sum(len(q) for q in quarantines),
        duplicates=resent + cleaned.duplicates,
        bots=cleaned.bots,
        late=cleaned.late,
        dwell_capped=cleaned.dwell_capped,
        bot_users=cleaned.bot_users,
    ).check()
    events = replace(events, clean=cleaned.events)
    results = {"interaction_events": events, "items": items, "users": users}
    for name, result in results.items():
        if result.clean.empty:
            reasons = "; ".join(result.failures) or "the source has no rows"
            raise IngestError(f"no clean rows in {name}: {reasons}")
    counts = {
        name: {"rows_in": r.rows_in, "clean": len(r.clean), "quarantined": len(r.quarantine)}
        for name, r in results.items()
    }
    # Events dropped as duplicates or bots, or quarantined on import, did come in.
    counts["interaction_events"]["rows_in"] = reconciliation.rows_in
    counts["interaction_events"]["quarantined"] = reconciliation.quarantined
    with console.status("writing the dataset snapshot"):
        version, created = save_dataset(
            state,
            events.clean,
            items.clean,
            users.clean,
            source=origin,
            quarantine=pd.concat(
                [*quarantines, *(r.quarantine for r in results.values())], ignore_index=True
            ),
            extra_manifest={
                "quarantine_reasons": {name: r.failures for name, r in results.items()},
                "counts": counts,
                "reconciliation": {"interaction_events": reconciliation.as_dict()},
                "cleaning_config": cleaning.model_dump(mode="json"),
                "ingest_config": cfg.model_dump(mode="json", exclude={"data_dir"}),
            },
        )
    seconds = time.perf_counter() - started
    verb = "wrote" if created else "already had"
    console.print(
        f"ingest: {verb} dataset {version}: {counts['interaction_events']['clean']:,} events, "
        f"{counts['items']['clean']:,} items, {counts['users']['clean']:,} users, "
        f"{sum(c['quarantined'] for c in counts.values()):,} quarantined ({seconds:.1f} s)"
    )
    return IngestSummary(version, created, counts, state.dataset(version), seconds)
