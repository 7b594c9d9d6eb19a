"""Seeded or hand-written input data shared by several test modules."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import RankerConfig
from recsys.state import StateDir
from training.ranker_features import RANKER_FEATURE_NAMES

Rows = Sequence[Sequence[object]]


def write_movielens_dir(folder: Path, ratings: Rows, movies: Rows, tags: Rows = ()) -> Path:
    """A tiny MovieLens directory, with the CRLF line endings of the real files."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[list[str], Rows]] = {
        "ratings.csv": (["userId", "movieId", "rating", "timestamp"], ratings),
        "movies.csv": (["movieId", "title", "genres"], movies),
        "tags.csv": (["userId", "movieId", "tag", "timestamp"], tags),
    }
    for name, (header, rows) in files.items():
        with (folder / name).open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(header)
            writer.writerows(rows)
    return folder


def synthetic_events(seed: int = 0, n_users: int = 40) -> pd.DataFrame:
    """Seeded events: users with 1..60 events, many sharing a timestamp (as MovieLens ratings do)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for k in range(int(rng.integers(1, 61))):
            second = int(rng.integers(0, 50))  # coarse clock: ties are common
            rows.append((f"u{u}", f"i{rng.integers(0, 30)}", f"{u:03d}{k:03d}", second))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_id", "second"])
    n = len(frame)
    return pd.DataFrame(
        {
            "event_id": frame["event_id"],
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "event_type": "like",
            "dwell_time_ms": pd.array([None] * n, dtype="Int64"),
            "surface": None,
            "session_id": frame["user_id"] + "-1",
            "device_type": None,
            "position": pd.array([None] * n, dtype="Int32"),
            "request_id": None,
            "event_ts": pd.to_datetime(1_500_000_000 + frame["second"], unit="s", utc=True).astype(
                "datetime64[us, UTC]"
            ),
            "server_ts": pd.to_datetime(1_500_000_000 + frame["second"], unit="s", utc=True).astype(
                "datetime64[us, UTC]"
            ),
        }
    ).sample(frac=1.0, random_state=seed)  # the split must not rely on input order


# A ranker small enough to train in a second on `planted_ranker_rows` (ranker_v1 columns).
# One seeded holdout and lambdarank, the settings the exact counts of tests/test_ranker*.py are written for;
# the cross-fitted default has its own tests.
SMALL_RANKER = RankerConfig(
    n_candidates=20,
    objective="lambdarank",
    n_estimators=40,
    num_leaves=7,
    min_child_samples=5,
    feature_fraction=1.0,
    bagging_fraction=1.0,
    lambda_l2=0.0,
    folds=1,
    num_threads=1,
    feature_service="ranker_v1",
)
_DOT = RANKER_FEATURE_NAMES.index("genre_affinity_dot")


def planted_ranker_rows(
    n_users: int = 60, per_user: int = 20, seed: int = 0, extra_columns: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user, the two candidates with the highest genre_affinity_dot are the positives; `extra_columns`
    noise columns follow the ranker_v1 ones (the item-kNN signal's, for a ranker trained with it)."""
    rng = np.random.default_rng(seed)
    width = len(RANKER_FEATURE_NAMES) + extra_columns
    features = rng.normal(size=(n_users * per_user, width)).astype(np.float32)
    labels = np.zeros(n_users * per_user, dtype=np.float32)
    for u in range(n_users):
        block = slice(u * per_user, (u + 1) * per_user)
        top = np.argsort(-features[block, _DOT])[:2]
        labels[u * per_user + top] = 1
    return features, labels, np.full(n_users, per_user)


# (entity id, feature_ts, value, created_ts or None for feature_ts): one snapshot row of a feature table.
SnapshotRow = tuple[str, datetime, int, datetime | None]


def write_snapshot_tables(
    state: StateDir, users: Sequence[SnapshotRow], items: Sequence[SnapshotRow]
) -> None:
    """The user and item snapshot tables, every feature of a row derived from its `value`, so a read tells
    which row it came from: counts are `value`, floats `float(value)`, lists hold them, strings `v<value>`.

    Follows `recsys.features.schema` whatever columns it holds.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.features import schema

    def cell(kind: pa.DataType, value: int) -> object:
        if pa.types.is_list(kind):
            return [cell(kind.value_type, value)] * 3
        if pa.types.is_integer(kind):
            return value
        if pa.types.is_floating(kind):
            return float(value)
        return f"v{value}"

    state.offline.mkdir(parents=True, exist_ok=True)
    for rows, layout, name in (
        (users, schema.user_features_schema(), schema.USER_FEATURES_FILE),
        (items, schema.item_features_schema(), schema.ITEM_FEATURES_FILE),
    ):
        key = layout.field(0).name
        columns: dict[str, list[object]] = {field.name: [] for field in layout}
        for entity, feature_ts, value, created_ts in rows:
            for field in layout:
                if field.name == key:
                    columns[key].append(entity)
                elif field.name == schema.FEATURE_TS:
                    columns[field.name].append(feature_ts)
                elif field.name == schema.CREATED_TS:
                    columns[field.name].append(created_ts or feature_ts)
                else:
                    columns[field.name].append(cell(field.type, value))
        pq.write_table(pa.table(columns, schema=layout), state.offline / name)
    write_feature_table({}, schema.coview_schema(), state.offline / schema.COVIEW_FILE)


def write_feature_table(columns: Mapping[str, Any], layout: object, path: Path) -> None:
    """One offline feature table in ``layout`` (a pyarrow schema). Columns the caller does not name,
    features added after it was written, are null, so every view over the table can be materialised."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert isinstance(layout, pa.Schema)
    n = len(next(iter(columns.values()))) if columns else 0
    full = {name: columns.get(name, [None] * n) for name in layout.names}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(full, schema=layout), path)
