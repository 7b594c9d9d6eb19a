"""`run_features` end to end on a tiny dataset version: Spark -> offline tables -> Feast -> online store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import FeaturesConfig, PipelineConfig
from recsys.features import schema
from recsys.features.schedule import FINAL_SNAPSHOT_OFFSET
from recsys.features.stage import run_features
from recsys.features.store import build_store, online_features
from recsys.state import MissingStateError, StateDir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2021, 3, 1, tzinfo=UTC)
VERSION = "tiny-v1"


def write_dataset(state: StateDir) -> None:
    """Three users, two items, seven events over 40 days, in the ingest layout."""
    rows = [
        ("a", "m1", "like", 0),
        ("a", "m2", "view", 3),
        ("b", "m1", "skip", 4),
        ("b", "m2", "like", 15),
        ("c", "m2", "like", 20),
        ("a", "m1", "view", 33),
        ("c", "m1", "like", 40),
    ]
    ts = pa.array([T0 + timedelta(days=d) for *_, d in rows], pa.timestamp("us", tz="UTC"))
    events = pa.table(
        {
            "event_id": [f"e{n}" for n in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "event_ts": ts,
            "server_ts": ts,
        }
    )
    items = pa.table(
        {
            "item_id": ["m1", "m2"],
            "title": ["One (2001)", "Two"],
            "categories": pa.array([["Comedy"], ["Drama", "Romance"]], pa.list_(pa.string())),
            "published_at": pa.array([datetime(2001, 1, 1, tzinfo=UTC), None], pa.timestamp("us", tz="UTC")),
        }
    )
    folder = state.dataset(VERSION)
    folder.mkdir(parents=True)
    pq.write_table(events, folder / "interaction_events.parquet")
    pq.write_table(items, folder / "items.parquet")
    (folder / "manifest.json").write_text(json.dumps({"dataset_version": VERSION}))
    (state.datasets / "LATEST").write_text(VERSION + "\n")


def test_run_features_is_idempotent_and_serves_the_last_snapshot(spark: Any, state: StateDir) -> None:
    write_dataset(state)
    config = PipelineConfig(state_dir=state.root, features=FeaturesConfig(snapshot_every_days=10))

    first = run_features(config)
    assert first.recomputed and first.dataset_version == VERSION
    assert first.final_snapshot == T0 + timedelta(days=40) + FINAL_SNAPSHOT_OFFSET
    tables = {
        name: (state.offline / name).read_bytes()
        for name in (schema.USER_FEATURES_FILE, schema.ITEM_FEATURES_FILE)
    }
    build = json.loads((state.offline / schema.BUILD_INFO_FILE).read_text())
    assert build["dataset_version"] == VERSION and build["snapshot_every_days"] == 10

    again = run_features(config, VERSION)
    assert not again.recomputed
    assert (again.user_rows, again.item_rows) == (first.user_rows, first.item_rows)
    assert all((state.offline / name).read_bytes() == data for name, data in tables.items())

    store = build_store(state, config.features)
    users = online_features(
        store, "ranker_v1", [{"user_id": "a", "item_id": "m1"}, {"user_id": "c", "item_id": "m2"}]
    )
    assert users["user_n_events"].tolist() == [3, 2]
    assert users["item_n_events"].tolist() == [4, 3]
    assert users.loc[0, "item_age_days"] == pytest.approx(
        (first.final_snapshot - datetime(2001, 1, 1, tzinfo=UTC)) / timedelta(days=1), abs=1e-2
    )
    offline = pd.read_parquet(state.offline / schema.USER_FEATURES_FILE)
    assert offline["feature_ts"].max() == pd.Timestamp(first.final_snapshot)


def test_missing_dataset_is_reported(state: StateDir) -> None:
    with pytest.raises(MissingStateError, match="ingest"):
        run_features(PipelineConfig(state_dir=state.root))
