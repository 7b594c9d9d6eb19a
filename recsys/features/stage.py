"""The `features` stage: dataset version -> offline snapshot tables -> Feast registry -> online store."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from recsys.features import schema
from recsys.state import MissingStateError, StateDir

if TYPE_CHECKING:
    from recsys.config import PipelineConfig

# Bump when the job's output changes for the same input, so that tables built by older code are redone.
JOB_VERSION = 2


@dataclass(frozen=True)
class FeaturesSummary:
    """What the stage produced; ``recomputed`` is False when the offline tables were already current."""

    dataset_version: str
    user_rows: int
    item_rows: int
    final_snapshot: datetime
    online_store: str
    recomputed: bool


def _build_key(version: str, config: PipelineConfig) -> dict[str, Any]:
    return {
        "dataset_version": version,
        "snapshot_every_days": config.features.snapshot_every_days,
        "job_version": JOB_VERSION,
    }


def read_build_info(state: StateDir) -> dict[str, Any] | None:
    """The record of what the current offline tables were built from, or None when there are none."""
    path = state.offline / schema.BUILD_INFO_FILE
    tables = [
        state.offline / name
        for name in (schema.USER_FEATURES_FILE, schema.ITEM_FEATURES_FILE, schema.COVIEW_FILE)
    ]
    if not path.exists() or not all(table.exists() for table in tables):
        return None
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info


def _compute(state: StateDir, version: str, config: PipelineConfig) -> dict[str, Any]:
    """Run the Spark job on one dataset version; write the offline tables, then their build record."""
    from recsys.features.batch import compute_features, spark_session, write_offline
    from recsys.ingest.event_store import PARTITION_KEY, events_location

    folder = state.dataset(version)
    events_path, items_path = events_location(folder), folder / "items.parquet"
    for path in (events_path, items_path):
        if not path.exists():
            raise MissingStateError(f"{path} is missing: re-run `recsys ingest`")
    spark = spark_session(config.features)
    # A date-partitioned snapshot adds its partition column; the job reads the event columns only.
    events = spark.read.parquet(str(events_path)).drop(PARTITION_KEY)
    items = spark.read.parquet(str(items_path))
    users_path = folder / "users.parquet"
    users = spark.read.parquet(str(users_path)) if users_path.exists() else None
    frames = compute_features(spark, events, items, config.features.snapshot_every_days, users=users)
    try:
        written = write_offline(frames, state.offline)
    finally:
        frames.release()
    info = {
        **_build_key(version, config),
        "user_rows": written.user_rows,
        "item_rows": written.item_rows,
        "coview_rows": written.coview_rows,
        "final_snapshot": written.final_snapshot.isoformat(),
    }
    # Written last: its presence means both tables are complete.
    partial = state.offline / f".{schema.BUILD_INFO_FILE}.partial"
    partial.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(partial, state.offline / schema.BUILD_INFO_FILE)
    return info


def run_features(config: PipelineConfig, dataset_version: str | None = None) -> FeaturesSummary:
    """Compute batch features for a dataset version, register them with Feast and fill the online store.

    Idempotent: the Spark job is skipped when the offline tables already come from this dataset version
    and settings; applying and materialising again write the same values.
    """
    from rich.console import Console

    from recsys.features.content import EmbeddingCache, publish_offline
    from recsys.features.materialization import materialize_online
    from recsys.features.store import apply_definitions, build_store

    console = Console(stderr=True)
    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    info = read_build_info(state)
    recomputed = info is None or any(info.get(k) != v for k, v in _build_key(version, config).items())
    if recomputed:
        with console.status(f"Computing feature snapshots for dataset {version} (Spark)"):
            info = _compute(state, version, config)
        console.log(f"offline tables: {info['user_rows']} user rows, {info['item_rows']} item rows")
    else:
        console.log(f"offline tables already built from dataset {version}: skipping the Spark job")
    assert info is not None
    final = datetime.fromisoformat(info["final_snapshot"])
    content = publish_offline(
        state.dataset(version),
        state.offline,
        EmbeddingCache(state.content_cache),
        config.features.content_embeddings,
    )
    console.log(f"item content embeddings: {content.n_items} items ({content.encoded} encoded now)")
    with console.status("Registering feature definitions (feast apply)"):
        store = build_store(state, config.features)
        apply_definitions(store)
    with console.status(f"Materialising to the {config.features.online_store} online store up to {final}"):
        # An item published after the last snapshot still has content to serve.
        # A full load, as the tables may have been rebuilt; it records the watermark from which
        # `recsys features materialize` goes on incrementally.
        materialize_online(state, config.features, max(final, content.newest or final), True, store)
    console.log(f"online store ({config.features.online_store}) holds features as of {final}")
    from recsys.features.packed_store import pack_services

    with console.status("Packing the online values for serving (one value per entity)"):
        packed = [s.service for s in pack_services(store) if s.generation is not None]
    console.log(f"packed for serving: {', '.join(packed) or 'no feature service'}")
    return FeaturesSummary(
        dataset_version=version,
        user_rows=int(info["user_rows"]),
        item_rows=int(info["item_rows"]),
        final_snapshot=final,
        online_store=config.features.online_store,
        recomputed=recomputed,
    )
