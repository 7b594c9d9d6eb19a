"""Per-user temporal split: ordering, fractions, small users, persistence and idempotence."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import synthetic_events

from evaluation import split as split_module
from evaluation.split import holdout_counts, load_split, run_split, temporal_split, write_split
from recsys.config import PipelineConfig, SplitConfig
from recsys.ingest.snapshot import save_dataset
from recsys.state import MissingStateError, StateDir

CFG = SplitConfig(validation_fraction=0.1, test_fraction=0.2, min_user_events=5)


def test_doctests() -> None:
    assert doctest.testmod(split_module).failed == 0


def test_holdout_counts_round_up_but_keep_a_training_event() -> None:
    test, val = holdout_counts(np.array([1, 4, 5, 7, 10, 11]), CFG)
    # n=5: ceil(1.0)=1 test, ceil(0.5)=1 val; n=7: ceil(1.4)=2, ceil(0.7)=1; n=11: ceil(2.2)=3, ceil(1.1)=2
    assert test.tolist() == [0, 0, 1, 2, 2, 3]
    assert val.tolist() == [0, 0, 1, 1, 1, 2]
    wide = SplitConfig(validation_fraction=0.45, test_fraction=0.45, min_user_events=3)
    test, val = holdout_counts(np.array([3, 4]), wide)
    assert (test + val).tolist() == [2, 3]  # ceil would take 4 of 3 and 4 of 4: one train event stays
    assert test.tolist() == [2, 2]


def test_split_is_per_user_temporal_and_complete() -> None:
    events = synthetic_events()
    result = temporal_split(events, CFG)
    parts = {"train": result.train, "validation": result.validation, "test": result.test}
    assert sum(len(p) for p in parts.values()) == len(events)
    assert set().union(*(set(p["event_id"]) for p in parts.values())) == set(events["event_id"])
    key = ["event_ts", "event_id"]
    for user, group in events.groupby("user_id"):
        n = len(group)
        train, val, test = (p[p["user_id"] == user] for p in parts.values())
        assert len(train) >= 1
        if n < CFG.min_user_events:
            assert len(val) == len(test) == 0
            continue
        assert len(test) == min(math.ceil(n * 0.2), n - 1)
        assert len(val) == min(math.ceil(n * 0.1), n - 1 - len(test))
        last_train = max(train[key].itertuples(index=False, name=None))
        held = pd.concat([val, test])
        assert min(held[key].itertuples(index=False, name=None)) > last_train
        assert (held["event_ts"] >= train["event_ts"].max()).all()
        if len(val):
            assert max(val[key].itertuples(index=False, name=None)) < min(
                test[key].itertuples(index=False, name=None)
            )
    assert list(result.train.columns) == list(events.columns)


def test_split_is_deterministic() -> None:
    a = temporal_split(synthetic_events(seed=1), CFG)
    b = temporal_split(synthetic_events(seed=1).iloc[::-1], CFG)
    pd.testing.assert_frame_equal(a.test, b.test)


def test_write_load_round_trip(state: StateDir) -> None:
    result = temporal_split(synthetic_events(), CFG)
    write_split(state, "v1", result)
    loaded = load_split(state, "v1")
    for part in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(getattr(loaded, part), getattr(result, part), check_dtype=True)
    with pytest.raises(MissingStateError):
        load_split(state, "v2")


def test_run_split_is_idempotent(tmp_path: Path) -> None:
    events = synthetic_events()
    users = events.groupby("user_id")["event_ts"].min().rename("signup_ts").reset_index().assign(region=None)
    items = pd.DataFrame({"item_id": sorted(set(events["item_id"]))}).assign(
        title=lambda f: f["item_id"], text=lambda f: f["item_id"], duration_s=np.nan, published_at=pd.NaT
    )
    items["categories"] = [[] for _ in range(len(items))]
    items["published_at"] = pd.to_datetime(items["published_at"], utc=True)
    state = StateDir(tmp_path / "state")
    version, _ = save_dataset(state, events, items, users, source={"name": "synthetic"})
    config = PipelineConfig(state_dir=state.root, split=CFG)
    first = run_split(config)
    assert first.created and first.dataset_version == version
    assert first.n_train + first.n_validation + first.n_test == len(events)
    mtime = (first.path / "test.parquet").stat().st_mtime_ns
    second = run_split(config, version)
    assert not second.created and (second.n_train, second.n_test) == (first.n_train, first.n_test)
    assert (first.path / "test.parquet").stat().st_mtime_ns == mtime
