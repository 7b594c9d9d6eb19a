"""The request-time on-demand feature views give, through Feast online and in point-in-time retrieval,
exactly what the pure functions of `recsys.features.request_features` give (the item on screen's
content embedding included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.config import FeaturesConfig
from recsys.features.content import CONTENT_FILE, EMBEDDING_DIM, content_table
from recsys.features.request_features import (
    current_item_embedding,
    day_of_week,
    device_one_hot,
    hour_of_day,
    surface_one_hot,
)
from recsys.features.store import apply_definitions, build_store, materialize
from recsys.state import StateDir
from recsys.vocab import DEVICE_TYPES, SURFACES

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:On demand feature view is an experimental feature"),
]

SERVICE = "request_context_v1"
PUBLISHED = datetime(2020, 1, 1, tzinfo=UTC)
rng = np.random.default_rng(2)
EMBEDDINGS = {f"i{j}": rng.normal(size=EMBEDDING_DIM).astype(np.float32) for j in range(4)}


def requests(n: int = 40, seed: int = 5) -> list[dict[str, Any]]:
    """Times spread over a week in several time zones; every device and surface, unknown ones too."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    zones = [timezone(timedelta(hours=h)) for h in (-8, -3, 0, 5, 9)]
    rows = []
    for j in range(n):
        moment = start + timedelta(minutes=int(rng.integers(0, 7 * 24 * 60)))
        rows.append(
            {
                "request_ts": moment.astimezone(zones[j % len(zones)]),
                "device_type": [*DEVICE_TYPES, "fridge"][j % (len(DEVICE_TYPES) + 1)],
                "surface": [*SURFACES, "billboard"][j % (len(SURFACES) + 1)],
                # known items, one without content, and "" for no item on screen
                "current_item_id": [*EMBEDDINGS, "i99", ""][j % (len(EMBEDDINGS) + 2)],
            }
        )
    return rows


def expected(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "hour_of_day": hour_of_day(row["request_ts"]),
        "day_of_week": day_of_week(row["request_ts"]),
        "device_one_hot": device_one_hot(row["device_type"]),
        "surface_one_hot": surface_one_hot(row["surface"]),
        "current_item_embedding": current_item_embedding(
            EMBEDDINGS[row["current_item_id"]].tolist() if row["current_item_id"] in EMBEDDINGS else None,
            EMBEDDING_DIM,
        ),
    }


def plain(value: Any) -> Any:
    """Feast's value as the pure function gives it (float32 storage rounds embeddings: compared as such)."""
    if isinstance(value, list | np.ndarray):
        return np.asarray(value, dtype=np.float32).astype(float).tolist()
    return int(value)


def test_on_demand_views_equal_the_pure_functions_online_and_historically(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    items = pd.DataFrame({"item_id": list(EMBEDDINGS), "published_at": [PUBLISHED] * len(EMBEDDINGS)})
    state.offline.mkdir(parents=True)
    pq.write_table(
        content_table(items, np.stack(list(EMBEDDINGS.values())), "test"), state.offline / CONTENT_FILE
    )
    store = build_store(state, FeaturesConfig())
    apply_definitions(store)
    materialize(store, PUBLISHED, views=["item_content"])
    service = store.get_feature_service(SERVICE)
    rows = requests()
    want = [expected(row) for row in rows]
    assert len({w["hour_of_day"] for w in want}) > 10 and len({w["day_of_week"] for w in want}) == 7
    on_screen = sum(any(w["current_item_embedding"]) for w in want)
    assert on_screen == sum(row["current_item_id"] in EMBEDDINGS for row in rows) > 0

    online = store.get_online_features(features=service, entity_rows=rows).to_dict()
    for name in want[0]:
        assert [plain(v) for v in online[name]] == [w[name] for w in want], name

    entity_df = pd.DataFrame(rows)
    entity_df["request_ts"] = pd.to_datetime(entity_df["request_ts"].map(lambda t: t.isoformat()), utc=True)
    entity_df["event_timestamp"] = entity_df["request_ts"]
    entity_df["row"] = range(len(rows))
    found = store.get_historical_features(entity_df=entity_df, features=service).to_df().sort_values("row")
    for name in want[0]:
        assert [plain(v) for v in found[name]] == [w[name] for w in want], name
