"""The ingest stage: MovieLens CSVs -> data contracts -> an immutable dataset snapshot."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from rich.console import Console

from recsys.config import PipelineConfig
from recsys.ingest.cleaning import CleaningConfig, Reconciliation, clean_events, drop_duplicate_ids
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
    config: PipelineConfig, dataset_version: str | None = None, cleaning: CleaningConfig | None = None
) -> IngestSummary:
    """Ingest ``config.ingest.data_dir`` into ``state_dir``; re-running on the same input writes nothing.

    Events resent with the same id are dropped before the contracts (which would otherwise quarantine
    both copies); the contracts' clean events are then cleaned (bursts, bots, dwell cap, late count), and
    every input event is accounted for in the manifest's ``reconciliation``.

    Args:
        config: the pipeline configuration (``ingest`` section and ``state_dir``).
        dataset_version: unused; ingest derives the version from the content it reads.
        cleaning: cleaning thresholds (default: :class:`CleaningConfig` defaults).
    """
    from data_contracts import validate_table

    started = time.perf_counter()
    console = Console(stderr=True)
    cfg = config.ingest
    state = StateDir(config.state_dir)
    data_dir = Path(cfg.data_dir)
    with console.status(f"reading MovieLens from {data_dir}"):
        raw = read_movielens(cfg)
        files = {name: {"sha256": _sha256(data_dir / name)} for name in SOURCE_FILES}
    with console.status("validating items and users (Great Expectations)"):
        items = validate_table("items", raw.items)
        users = validate_table("users", raw.users)
    cleaning = cleaning or CleaningConfig()
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
    reconciliation = Reconciliation(
        rows_in=len(raw.events),
        clean=len(cleaned.events),
        quarantined=len(events.quarantine),
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
    # Events dropped as duplicates or bots are neither clean nor quarantined, but they did come in.
    counts["interaction_events"]["rows_in"] = reconciliation.rows_in
    with console.status("writing the dataset snapshot"):
        version, created = save_dataset(
            state,
            events.clean,
            items.clean,
            users.clean,
            source={"name": "movielens", "directory": data_dir.name, "files": files},
            quarantine=pd.concat([r.quarantine for r in results.values()], ignore_index=True),
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
