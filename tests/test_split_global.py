"""Global time split, the split choice and its folder, and the leakage check on every split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from factories import synthetic_events
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.split import SplitError, global_split, load_split, run_split, split_dir, split_events
from recsys.config import PipelineConfig, SplitConfig
from recsys.ingest.leakage import LeakageError, check_split_order
from recsys.ingest.snapshot import save_dataset
from recsys.state import StateDir

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def events_at(hours: list[tuple[str, float]]) -> pd.DataFrame:
    """One like per (user, hours after T0)."""
    ts = pd.Series([T0 + timedelta(hours=h) for _, h in hours]).astype("datetime64[us, UTC]")
    n = len(hours)
    return pd.DataFrame(
        {
            "event_id": [f"e{k:04d}" for k in range(n)],
            "user_id": [u for u, _ in hours],
            "item_id": "i1",
            "event_type": "like",
            "dwell_time_ms": pd.array([None] * n, dtype="Int64"),
            "surface": None,
            "session_id": [f"{u}-1" for u, _ in hours],
            "device_type": None,
            "position": pd.array([None] * n, dtype="Int32"),
            "request_id": None,
            "event_ts": ts,
            "server_ts": ts,
        }
    )


def test_global_split_cuts_at_t_and_t_plus_d() -> None:
    # T = T0 + 2 days, d = 1 day: train < 48 h <= validation < 72 h <= test.
    events = events_at([("a", 0), ("a", 47.9), ("a", 48), ("b", 71.9), ("b", 72), ("b", 100), ("c", 10)])
    cfg = SplitConfig(method="global", cutoff=T0 + timedelta(days=2), validation_days=1)
    split = global_split(events, cfg)
    assert sorted(split.train["event_id"]) == ["e0000", "e0001", "e0006"]
    assert sorted(split.validation["event_id"]) == ["e0002", "e0003"]
    assert sorted(split.test["event_id"]) == ["e0004", "e0005"]


def test_default_cutoff_leaves_the_last_test_days_to_test() -> None:
    events = events_at([("a", 24 * d) for d in range(20)])  # one event a day, days 0..19
    split = global_split(events, SplitConfig(method="global", validation_days=3, test_days=5))
    # newest = day 19: test from day 14, validation from day 11.
    assert pd.to_datetime(split.test["event_ts"]).min() == T0 + timedelta(days=14)
    assert len(split.test) == 6 and len(split.validation) == 3 and len(split.train) == 11


def test_cutoff_before_every_event_is_a_clear_error() -> None:
    events = events_at([("a", 10)])
    with pytest.raises(SplitError, match="no event before the split cutoff"):
        global_split(events, SplitConfig(method="global", cutoff=T0))


@settings(max_examples=60, deadline=None)
@given(
    hours=st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 400)), min_size=1, max_size=60),
    cut=st.integers(-10, 300),
    days=st.floats(0.1, 10),
)
def test_global_split_properties(hours: list[tuple[str, int]], cut: int, days: float) -> None:
    events = events_at([(u, float(h)) for u, h in hours])
    cfg = SplitConfig(method="global", cutoff=T0 + timedelta(hours=cut), validation_days=days)
    t, t_d = T0 + timedelta(hours=cut), T0 + timedelta(hours=cut) + timedelta(days=days)
    if all(T0 + timedelta(hours=h) >= t for _, h in hours):
        with pytest.raises(SplitError):
            global_split(events, cfg)
        return
    split = global_split(events, cfg)
    ids = [*split.train["event_id"], *split.validation["event_id"], *split.test["event_id"]]
    assert sorted(ids) == sorted(events["event_id"])  # a partition: nothing lost, nothing twice
    assert (split.train["event_ts"] < t).all()
    assert ((split.validation["event_ts"] >= t) & (split.validation["event_ts"] < t_d)).all()
    assert (split.test["event_ts"] >= t_d).all()
    check_split_order(split.train, split.test)  # no test event earlier than a train event of its user


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(["per_user", "global"]))
def test_no_held_out_event_precedes_a_training_event_of_its_user(seed: int, method: str) -> None:
    events = synthetic_events(seed, n_users=12)
    cfg = SplitConfig(method=method, validation_days=10 / 86_400, test_days=10 / 86_400)  # type: ignore[arg-type]
    split = split_events(events, cfg)
    for held in (split.validation, split.test):
        last_train = split.train.groupby("user_id")["event_ts"].max()
        first_held = held.groupby("user_id")["event_ts"].min()
        common = last_train.index.intersection(first_held.index)
        assert (first_held[common] >= last_train[common]).all()


def test_split_order_check_catches_a_leaky_split() -> None:
    train = events_at([("a", 10), ("b", 5)])
    test = events_at([("a", 9), ("b", 6)])
    with pytest.raises(LeakageError, match="1 users have test events before their last training event"):
        check_split_order(train, test)


def test_run_split_writes_each_method_to_its_own_folder(tmp_path: object) -> None:
    from pathlib import Path

    state = StateDir(Path(str(tmp_path)) / "state")
    version, _ = _synthetic_version(state)
    glob = PipelineConfig(
        state_dir=state.root, split=SplitConfig(method="global", test_days=1e-4, validation_days=1e-4)
    )
    first = run_split(glob, version)
    assert first.path == split_dir(state, version, "global") == state.splits(version) / "global"
    per_user = run_split(PipelineConfig(state_dir=state.root), version)
    assert per_user.path == state.splits(version)
    # Writing the per-user split beside the global one leaves the global one in place.
    assert len(load_split(state, version, "global").test) == first.n_test
    assert len(load_split(state, version).test) == per_user.n_test
    with pytest.raises(SplitError, match="unknown split"):
        split_dir(state, version, "random")


def _synthetic_version(state: StateDir) -> tuple[str, pd.DataFrame]:
    """A saved dataset version of synthetic events (three per hour of one week), and its events."""
    events = synthetic_events(3)
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(30)],
            "title": "t",
            "text": "t",
            "categories": [[]] * 30,
            "duration_s": None,
            "published_at": pd.Series([pd.NaT] * 30, dtype="datetime64[us, UTC]"),
        }
    ).astype({"duration_s": "float64"})
    users = pd.DataFrame({"user_id": sorted(events["user_id"].unique())})
    users["signup_ts"] = pd.Series(pd.Timestamp("2017-01-01", tz="UTC"), index=users.index).astype(
        "datetime64[us, UTC]"
    )
    users["region"] = None
    version, _ = save_dataset(state, events, items, users, source={"name": "synthetic"})
    return version, events


def test_a_split_asked_for_with_other_settings_is_refused_not_reused(tmp_path: object) -> None:
    from pathlib import Path

    state = StateDir(Path(str(tmp_path)) / "state")
    version, events = _synthetic_version(state)
    span_days = (events["event_ts"].max() - events["event_ts"].min()).total_seconds() / 86400
    short = SplitConfig(method="global", test_days=span_days / 50, validation_days=span_days / 50)
    long = SplitConfig(method="global", test_days=span_days / 3, validation_days=span_days / 50)
    written = run_split(PipelineConfig(state_dir=state.root, split=short), version)
    assert len(split_events(events, long).test) > written.n_test  # the two cuts do differ

    # A second run with the same settings reuses the split; any reader with them loads it.
    again = run_split(PipelineConfig(state_dir=state.root, split=short), version)
    assert (again.created, again.n_test) == (False, written.n_test)
    assert len(load_split(state, version, short).test) == written.n_test
    # Other settings are refused by name, both when splitting and when training or evaluating load it.
    with pytest.raises(SplitError, match=r"test_days .* \(asked: "):
        run_split(PipelineConfig(state_dir=state.root, split=long), version)
    with pytest.raises(SplitError, match="test_days"):
        load_split(state, version, long)
    # The per-user split's settings are its own: the global split's days do not concern it.
    per_user = run_split(PipelineConfig(state_dir=state.root), version)
    load_split(state, version, SplitConfig(test_days=99.0))
    with pytest.raises(SplitError, match=r"test_fraction 0\.2 \(asked: 0\.3\)"):
        load_split(state, version, SplitConfig(test_fraction=0.3))
    assert len(load_split(state, version, "global").test) == written.n_test
    assert len(load_split(state, version).test) == per_user.n_test
    # A split written before settings were recorded cannot be checked, and loads as before.
    (split_dir(state, version, "global") / "split.json").unlink()
    assert len(load_split(state, version, long).test) == written.n_test
