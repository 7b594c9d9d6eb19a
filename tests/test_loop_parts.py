"""The loop's parts on small frames: the growing simulated log, quiet Evidently reports, new-item buckets."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from monitoring.loop_scenario import EVENTS_DIR, log_as_of
from monitoring.reports import write_report
from monitoring.signals import event_signals
from recsys.simulator.settings import SimulatorConfig
from recsys.simulator.stage import run_simulate
from recsys.simulator.writer import read_events


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SimulatorConfig(n_users=150, n_items=60, days=10, sessions_per_user=3.0, bot_fraction=0.02)
    return run_simulate(config, tmp_path_factory.mktemp("sim") / "full").path


def test_log_as_of_keeps_what_was_logged_before_the_date(simulation: Path, tmp_path: Path) -> None:
    until = datetime(2024, 1, 6, tzinfo=UTC)
    log = log_as_of(simulation, tmp_path / "as_of", until)
    everything = read_events(simulation).to_pandas()
    kept = read_events(log).to_pandas()
    before = everything[everything["event_ts"] < pd.Timestamp(until)]
    assert sorted(kept["event_id"]) == sorted(before["event_id"])
    assert sorted(p.name for p in (log / EVENTS_DIR).iterdir())[-1] == "event_date=2024-01-05"
    items = pq.read_table(log / "items.parquet").to_pandas()
    all_items = pq.read_table(simulation / "items.parquet").to_pandas()
    published = pd.to_datetime(all_items["published_at"], utc=True)
    assert set(items["item_id"]) == set(all_items["item_id"][published.isna() | (published < until)])
    users = set(pq.read_table(log / "users.parquet").to_pandas()["user_id"])
    assert set(kept["user_id"]) <= users  # every logged user exists, bots clicking before signup included
    assert (log / "manifest.json").read_text() == (simulation / "manifest.json").read_text()


def test_log_as_of_cuts_at_midnights_only(simulation: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a midnight"):
        log_as_of(simulation, tmp_path / "x", datetime(2024, 1, 6, 12, tzinfo=UTC))
    with pytest.raises(ValueError, match="no events before"):
        log_as_of(simulation, tmp_path / "y", datetime(2023, 12, 1, tzinfo=UTC))


def test_drift_reports_print_no_arithmetic_warnings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # A category on one side only and a constant column: Evidently divides by zero on both.
    reference = pd.DataFrame({"a": rng.choice(["x", "y", "z"], 300), "c": np.zeros(300)})
    current = pd.DataFrame({"a": rng.choice(["x", "w"], 300), "c": np.zeros(300)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdict = write_report("data_drift", reference, current, ["a"], ["c"], tmp_path, 0.5)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert verdict.drifted_columns == ["a"]


def test_items_published_inside_a_window_are_new_on_either_side() -> None:
    events = pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3"],
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["old", "fresh", "gone"],
            "event_type": ["click"] * 3,
            "device_type": ["tv"] * 3,
            "surface": ["homepage"] * 3,
            "dwell_time_ms": [None] * 3,
            "position": [1, 2, 3],
            "event_ts": pd.to_datetime(["2024-01-02"] * 3, utc=True),
        }
    )
    rank = pd.Series({"old": 1, "gone": 12})
    buckets = event_signals(events, rank, ["fresh"])["item_popularity_bucket"].tolist()
    assert buckets == ["top_1-9", "new", "top_10-99"]
    assert event_signals(events, rank)["item_popularity_bucket"].tolist()[1] == "unseen"
