"""Drift: Evidently flags a shifted column and leaves a stationary log alone."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring import drift as drift_module
from monitoring.drift import DriftError, drift_windows, nearest_snapshot, run_drift
from recsys.config import DriftConfig, PipelineConfig
from recsys.ingest.snapshot import save_dataset
from recsys.state import StateDir

START = pd.Timestamp("2024-01-01", tz="UTC")
TYPES = ["view", "like", "skip"]


def synthetic_log(seed: int, shift_event_type: bool, n_per_window: int = 5000) -> pd.DataFrame:
    """Two 28-day halves (whole weeks), same users, items and clock; optionally other event types later."""
    rng = np.random.default_rng(seed)
    rows = []
    # Heavy and light users, the same in both halves: activity differs far more between users than by chance.
    weights = rng.lognormal(0.0, 1.0, 100)
    for half in (0, 1):
        probs = [0.1, 0.1, 0.8] if (half == 1 and shift_event_type) else [0.5, 0.35, 0.15]
        seconds = rng.uniform(0, 28 * 86400, n_per_window) + half * 28 * 86400
        items = np.minimum(rng.zipf(1.6, n_per_window), 60)
        users = rng.choice(100, n_per_window, p=weights / weights.sum())
        types = rng.choice(TYPES, n_per_window, p=probs)
        for k in range(n_per_window):
            rows.append(
                (f"u{users[k]}", f"i{items[k]}", types[k], START + pd.Timedelta(seconds=float(seconds[k])))
            )
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "event_ts"])
    n = len(frame)
    frame["event_ts"] = pd.to_datetime(frame["event_ts"], utc=True).astype("datetime64[us, UTC]")
    return pd.DataFrame(
        {
            "event_id": [f"e{k:06d}" for k in range(n)],
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "event_type": frame["event_type"],
            "dwell_time_ms": pd.array([None] * n, dtype="Int64"),
            "surface": None,
            "session_id": frame["user_id"] + "-1",
            "device_type": None,
            "position": pd.array([None] * n, dtype="Int32"),
            "request_id": None,
            "event_ts": frame["event_ts"],
            "server_ts": frame["event_ts"],
        }
    )


def user_features(seed: int, scale_current: float) -> pd.DataFrame:
    """Three snapshots (day 20, 30, 61) of 400 users; the last one optionally scaled up."""
    rng = np.random.default_rng(seed)
    frames = []
    for day, scale in ((20, 1.0), (30, 1.0), (61, scale_current)):
        n_events = rng.poisson(20, 400) * scale
        frames.append(
            pd.DataFrame(
                {
                    "user_id": [f"u{k}" for k in range(400)],
                    "feature_ts": START + pd.Timedelta(days=day),
                    "user_n_events": n_events.astype("int64"),
                    "user_n_events_30d": rng.poisson(5, 400).astype("int64"),
                    "user_days_since_last_event": rng.exponential(3, 400).astype("float32"),
                    "user_genre_affinity": [[0.5, 0.5]] * 400,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def make_state(root: Path, events: pd.DataFrame, features: pd.DataFrame | None) -> StateDir:
    state = StateDir(root)
    users = events.groupby("user_id")["event_ts"].min().rename("signup_ts").reset_index().assign(region=None)
    items = pd.DataFrame({"item_id": sorted(set(events["item_id"]))})
    items = items.assign(title=items["item_id"], text=items["item_id"], duration_s=np.nan)
    items["categories"] = [[] for _ in range(len(items))]
    items["published_at"] = pd.Series(pd.NaT, index=items.index, dtype="datetime64[us, UTC]")
    save_dataset(state, events, items, users, source={"name": "synthetic"})
    if features is not None:
        state.offline.mkdir(parents=True)
        features.to_parquet(state.offline / "user_features.parquet")
    return state


def config_for(state: StateDir, threshold: float = 0.5) -> PipelineConfig:
    drift = DriftConfig(current_days=28, reference_days=28, drift_share_threshold=threshold)
    return PipelineConfig(state_dir=state.root, drift=drift)


def test_doctests() -> None:
    assert doctest.testmod(drift_module).failed == 0


def test_windows_are_end_anchored_and_snapshots_nearest() -> None:
    events = synthetic_log(0, shift_event_type=False, n_per_window=50)
    windows = drift_windows(events, DriftConfig(current_days=30, reference_days=10))
    assert windows.current_end == events["event_ts"].max()
    assert windows.current_end - windows.current_start == pd.Timedelta(days=30)
    assert windows.reference_end == windows.current_start
    assert windows.reference_end - windows.reference_start == pd.Timedelta(days=10)
    snap = nearest_snapshot(user_features(0, 1.0), START + pd.Timedelta(days=27))
    assert (snap["feature_ts"] == START + pd.Timedelta(days=30)).all() and len(snap) == 400


def test_empty_window_is_a_clear_error(tmp_path: Path) -> None:
    events = synthetic_log(0, shift_event_type=False, n_per_window=50)
    state = make_state(tmp_path / "state", events, None)
    config = config_for(state).model_copy(update={"drift": DriftConfig(current_days=90, reference_days=30)})
    with pytest.raises(DriftError, match="empty window"):
        run_drift(config)


@pytest.mark.slow
def test_stationary_log_shows_no_drift(tmp_path: Path) -> None:
    state = make_state(tmp_path / "state", synthetic_log(1, shift_event_type=False), user_features(1, 1.0))
    summary = run_drift(config_for(state))
    assert summary.drifted_columns == []
    assert not summary.drift_detected
    report = json.loads((summary.path / "drift.json").read_text())
    assert report["user_features"]["compared"] is True
    assert len(report["columns"]) == 5 + 3  # per-event columns and the user features present
    assert (summary.path / "report.html").stat().st_size > 100_000


@pytest.mark.slow
def test_shifted_columns_are_flagged(tmp_path: Path) -> None:
    state = make_state(tmp_path / "state", synthetic_log(2, shift_event_type=True), user_features(2, 3.0))
    summary = run_drift(config_for(state, threshold=0.25))
    assert set(summary.drifted_columns) == {"event_type", "user_n_events"}
    assert summary.share_drifted == pytest.approx(2 / 8)
    assert summary.drift_detected  # 2/8 >= 0.25
    report = json.loads((summary.path / "drift.json").read_text())
    assert report["drift_detected"] is True and report["dataset_version"] == summary.dataset_version
    assert report["n_reference"] == summary.n_reference > 1000
    assert set(report) >= {
        "reference_window",
        "current_window",
        "n_current",
        "drifted_columns",
        "share_drifted",
    }
    assert (summary.path / "user_features_report.html").exists()
