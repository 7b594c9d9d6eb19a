"""Item indexes shared across times that read the same item features: fewer builds, identical candidates."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from commands import SMALL_CONFIG

from recsys.state import StateDir
from training.candidates import generate_candidates, index_read_times, item_indexes_over

GRID = [datetime(2000, 1, 11, tzinfo=UTC), datetime(2000, 1, 21, tzinfo=UTC)]


def _times(*days: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(days), utc=True))


def test_index_read_times_share_one_time_before_the_first_snapshot() -> None:
    times = _times("2000-01-05", "2000-01-15", "2000-01-02", "2000-01-21", "2000-02-01", "2000-01-10")
    expected = _times("2000-01-02", "2000-01-11", "2000-01-02", "2000-01-21", "2000-01-21", "2000-01-02")
    assert index_read_times(times, GRID).tolist() == expected.tolist()
    # Without snapshots no time has item features: all share the earliest.
    assert set(index_read_times(times, [])) == {pd.Timestamp("2000-01-02", tz="UTC")}


class _Catalogue:
    """A retriever's item side only: embeddings are a function of the rows read, so a test can tell
    which read an index was built from."""

    catalog: ClassVar[list[str]] = ["a", "b", "c"]

    def embed_items(self, item_ids: list[str], features: pd.DataFrame) -> np.ndarray:
        day = features["day"].to_numpy(dtype=np.float32)
        return np.stack([np.ones(len(item_ids), dtype=np.float32), day], axis=1)


def test_item_indexes_over_builds_one_index_per_read_time() -> None:
    reads: list[list[pd.Timestamp]] = []

    def read(store: Any, entity: pd.DataFrame, service: str) -> pd.DataFrame:
        reads.append(sorted(set(entity["event_timestamp"])))
        return entity.assign(day=pd.to_datetime(entity["event_timestamp"], utc=True).dt.day)

    times = list(_times("2000-01-03", "2000-01-05", "2000-01-11", "2000-01-21", "2000-01-07"))
    shared = list(item_indexes_over(_Catalogue(), None, read, times, snapshots=GRID))  # type: ignore[arg-type]
    assert [when for when, _ in shared] == sorted(times)
    indexes = [index for _, index in shared]
    assert indexes[0] is indexes[1] is indexes[2]  # the three times before the first snapshot
    assert len({id(i) for i in indexes}) == 3
    # The pre-snapshot index is built from the earliest of those times' rows, the others from their own.
    assert [float(i.search(np.array([[0.0, 1.0]], dtype=np.float32), 1)[1][0, 0]) for i in indexes] == [
        3.0,
        3.0,
        3.0,
        11.0,
        21.0,
    ]
    assert sum(len(r) for r in reads) == 3
    # Without snapshots every distinct time builds (and reads) its own.
    reads.clear()
    alone = list(item_indexes_over(_Catalogue(), None, read, times))  # type: ignore[arg-type]
    assert len({id(i) for _, i in alone}) == 5 and sum(len(r) for r in reads) == 5


@pytest.mark.integration
@pytest.mark.slow
def test_shared_indexes_give_the_same_candidates_on_a_real_store(small_pipeline: StateDir) -> None:
    """Before the first snapshot the feature store holds no item rows, so one shared index returns
    exactly what one index per user returns: same items, same scores, each user's own time."""
    from evaluation.harness import load_window
    from recsys.config import load_config
    from recsys.features.store import historical_features
    from training.registry import TWO_TOWER_MODEL, load_model, resolve_system
    from training.runtime import RetrievalModel

    config = load_config(Path(SMALL_CONFIG), [f"state_dir={small_pipeline.root}"])
    window = load_window(config, None, "test")
    first = min(pd.to_datetime(pd.Series(window.snapshots), utc=True))
    starts = window.starts
    early = starts[pd.to_datetime(starts["event_timestamp"], utc=True) < first]
    assert early["event_timestamp"].nunique() >= 2, "the test needs users before the first snapshot"
    users_at = pd.concat([early, starts.drop(early.index).head(5)], ignore_index=True)

    tower, _ = resolve_system(window.state, "champion")
    model = RetrievalModel.load(*load_model(window.state, TWO_TOWER_MODEL, tower))
    args = (model, window.store, historical_features, users_at, window.seen, 20)
    shared = generate_candidates(*args, snapshots=window.snapshots)
    alone = generate_candidates(*args)
    key = ["user_id", "item_id"]
    shared, alone = shared.sort_values(key, ignore_index=True), alone.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(shared, alone)
    assert set(shared["event_timestamp"]) == set(pd.to_datetime(users_at["event_timestamp"], utc=True))
