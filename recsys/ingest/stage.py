"""The ingest stage: a source (MovieLens, a mapped log, the simulator) -> data contracts -> cleaning -> an
immutable dataset snapshot.

A log held in memory whole (MovieLens, an imported file) is validated and cleaned at once; the simulator's
date-partitioned log is validated and cleaned a chunk of days at a time (``recsys/ingest/chunked.py``),
with the same result, so a 10-million-event log fits in bounded memory.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console

from recsys.config import PipelineConfig
from recsys.features.content import ContentSummary, EmbeddingCache, ensure_item_content
from recsys.ingest.chunked import ChunkedCleaner, ChunkedEvents, PartitionedLog
from recsys.ingest.cleaning import (
    CleaningConfig,
    Reconciliation,
    clean_events,
    drop_duplicate_ids,
    quarantine_future,
)
from recsys.ingest.log_import import import_log
from recsys.ingest.movielens import SOURCE_FILES, read_movielens
from recsys.ingest.schema import QUARANTINE_SCHEMA, empty_frame
from recsys.ingest.snapshot import SnapshotWriter, base_manifest, canonical_table
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
    # Content embeddings of the version's items (None when `features.content_embeddings` is off).
    content: ContentSummary | None = None

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
    if source is None and cfg.source == "log":
        if cfg.log is None or cfg.mapping is None:
            raise IngestError("ingest.source: log needs ingest.log and ingest.mapping")
        source, mapping = cfg.log, cfg.mapping
    log: PartitionedLog | None = None
    raw_events: pd.DataFrame | None = None
    import_quarantine: pd.DataFrame | None = None
    if source is None and cfg.source == "simulator":
        from recsys.ingest.simulated import ensure_simulated, read_simulated_catalogue

        out_dir = cfg.simulated_dir or state.simulated
        with console.status(f"reading the simulated log in {out_dir}"):
            simulation = ensure_simulated(config.simulator, out_dir)
            raw_items, raw_users = read_simulated_catalogue(out_dir)
        log = PartitionedLog(out_dir)
        origin: dict[str, object] = {
            "name": "simulator",
            "directory": out_dir.name,
            "simulator_config": simulation["config"],
        }
    elif source is not None and mapping is not None:
        with console.status(f"importing {source.name} with mapping {mapping.name}"):
            imported = import_log(source, mapping)
        tables = imported.tables
        raw_events, raw_items, raw_users = tables.events, tables.items, tables.users
        import_quarantine = imported.quarantine
        origin = {
            "name": "log",
            "files": {source.name: {"sha256": _sha256(source)}, mapping.name: {"sha256": _sha256(mapping)}},
        }
    else:
        data_dir = Path(cfg.data_dir)
        with console.status(f"reading MovieLens from {data_dir}"):
            tables = read_movielens(cfg)
        raw_events, raw_items, raw_users = tables.events, tables.items, tables.users
        origin = {
            "name": "movielens",
            "directory": data_dir.name,
            "files": {name: {"sha256": _sha256(data_dir / name)} for name in SOURCE_FILES},
        }
    with console.status("validating items and users (Great Expectations)"):
        items = validate_table("items", raw_items)
        users = validate_table("users", raw_users)
    cleaning = config.cleaning
    known_users = pd.Index(users.clean["user_id"])
    known_items = pd.Index(items.clean["item_id"])
    now = pd.Timestamp.now(tz="UTC")
    with SnapshotWriter(state) as writer:
        if log is not None:
            with (
                tempfile.TemporaryDirectory(dir=state.datasets, prefix=".work-") as work,
                console.status(f"validating and cleaning {len(log.days)} days of events, a chunk at a time"),
            ):
                outcome = ChunkedCleaner(log, cleaning, known_users, known_items, now, Path(work)).run(writer)
        else:
            assert raw_events is not None
            with console.status(f"validating and cleaning {len(raw_events):,} events"):
                outcome = _clean_in_memory(raw_events, cleaning, known_users, known_items, now)
                writer.add_events(canonical_table("interaction_events", outcome.events))
        quarantines = [q for q in (import_quarantine,) if q is not None and len(q)] + outcome.quarantine
        rows_in = outcome.rows_in + sum(len(q) for q in (import_quarantine,) if q is not None)
        reconciliation = Reconciliation(
            rows_in=rows_in,
            clean=outcome.clean,
            quarantined=sum(len(q) for q in quarantines),
            duplicates=outcome.duplicates,
            bots=outcome.bots,
            late=outcome.late,
            dwell_capped=outcome.dwell_capped,
            bot_users=outcome.bot_users,
        ).check()
        failures = {
            "interaction_events": dict(outcome.failures),
            "items": items.failures,
            "users": users.failures,
        }
        if outcome.clean == 0:
            reasons = "; ".join(failures["interaction_events"]) or "the source has no rows"
            raise IngestError(f"no clean rows in interaction_events: {reasons}")
        for name, result in (("items", items), ("users", users)):
            if result.clean.empty:
                reasons = "; ".join(result.failures) or "the source has no rows"
                raise IngestError(f"no clean rows in {name}: {reasons}")
        counts = {
            "interaction_events": {
                "rows_in": reconciliation.rows_in,
                "clean": reconciliation.clean,
                "quarantined": reconciliation.quarantined,
            },
            **{
                name: {"rows_in": r.rows_in, "clean": len(r.clean), "quarantined": len(r.quarantine)}
                for name, r in (("items", items), ("users", users))
            },
        }
        quarantine = pd.concat(
            [*quarantines, items.quarantine, users.quarantine, empty_frame(QUARANTINE_SCHEMA)],
            ignore_index=True,
        ).astype(object)
        manifest = base_manifest(origin, counts) | {
            "quarantine_reasons": failures,
            "reconciliation": {"interaction_events": reconciliation.as_dict()},
            "cleaning_config": cleaning.model_dump(mode="json"),
            "ingest_config": cfg.model_dump(mode="json", exclude={"data_dir"}),
        }
        with console.status("writing the dataset snapshot"):
            version, created = writer.finish(
                canonical_table("items", items.clean),
                canonical_table("users", users.clean),
                quarantine,
                manifest,
            )
    content = None
    if config.features.content_embeddings:
        # Only items whose text the cache lacks are encoded: a new item gets its embedding here.
        with console.status("embedding item content (all-MiniLM-L6-v2)"):
            content = ensure_item_content(state.dataset(version), EmbeddingCache(state.content_cache))
        console.print(
            f"ingest: content embeddings for {content.n_items:,} items, {content.n_encoded:,} encoded "
            f"({content.seconds:.1f} s)"
        )
    seconds = time.perf_counter() - started
    verb = "wrote" if created else "already had"
    console.print(
        f"ingest: {verb} dataset {version}: {counts['interaction_events']['clean']:,} events, "
        f"{counts['items']['clean']:,} items, {counts['users']['clean']:,} users, "
        f"{sum(c['quarantined'] for c in counts.values()):,} quarantined ({seconds:.1f} s)"
    )
    return IngestSummary(version, created, counts, state.dataset(version), seconds, content)


@dataclass
class InMemoryEvents(ChunkedEvents):
    """The outcome of cleaning a log held in memory whole, with its clean events."""

    events: pd.DataFrame = field(default_factory=pd.DataFrame)


def _clean_in_memory(
    raw: pd.DataFrame,
    cleaning: CleaningConfig,
    known_users: pd.Index,
    known_items: pd.Index,
    now: pd.Timestamp,
) -> InMemoryEvents:
    """Future timestamps, resent copies, the events contract and cleaning over the whole log at once."""
    from data_contracts import validate_table

    present, future = quarantine_future(raw, now, pd.Timedelta(minutes=cleaning.future_tolerance_minutes))
    unique_events, resent = drop_duplicate_ids(present)
    events = validate_table(
        "interaction_events", unique_events, known_user_ids=known_users, known_item_ids=known_items
    )
    cleaned = clean_events(events.clean, cleaning)
    return InMemoryEvents(
        rows_in=len(raw),
        clean=len(cleaned.events),
        resent=resent + cleaned.duplicate_ids,
        collapsed=cleaned.collapsed,
        bots=cleaned.bots,
        bot_users=cleaned.bot_users,
        dwell_capped=cleaned.dwell_capped,
        late=cleaned.late,
        chunks=1,
        quarantine=[q for q in (future, events.quarantine) if len(q)],
        failures=Counter(events.failures),
        events=cleaned.events,
    )
