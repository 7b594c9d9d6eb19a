"""Data drift of the event log (and of user features) between two end-anchored windows, with Evidently.

The current window is the last ``current_days`` up to the newest event; the reference window is the
``reference_days`` before it. Per event we compare what was done (event_type), when (hour, weekday), on
what (popularity bucket of the item, ranked on the reference window) and by whom (log1p of the user's
number of events in the window). When the features stage has written ``offline/user_features.parquet``,
the user features at the snapshot nearest each window's end are compared too, in a second report.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import DriftConfig, PipelineConfig
from recsys.state import StateDir

EVENT_CATEGORICAL: tuple[str, ...] = ("event_type", "hour_of_day", "day_of_week", "item_popularity_bucket")
EVENT_NUMERICAL: tuple[str, ...] = ("user_activity",)
USER_FEATURE_COLUMNS: tuple[str, ...] = (
    "user_n_events",
    "user_n_positive",
    "user_n_events_30d",
    "user_days_since_first_event",
    "user_days_since_last_event",
)


class DriftError(ValueError):
    """The windows cannot be compared (for example one of them holds no events)."""


@dataclass(frozen=True)
class Windows:
    """Half-open intervals ``(start, end]`` of event time."""

    reference_start: pd.Timestamp
    reference_end: pd.Timestamp
    current_start: pd.Timestamp
    current_end: pd.Timestamp

    def as_json(self) -> dict[str, dict[str, str]]:
        return {
            "reference_window": {
                "start": self.reference_start.isoformat(),
                "end": self.reference_end.isoformat(),
            },
            "current_window": {"start": self.current_start.isoformat(), "end": self.current_end.isoformat()},
        }


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """The outcome written to ``drift/<dataset_version>/drift.json``."""

    dataset_version: str
    drift_detected: bool
    share_drifted: float
    drifted_columns: list[str]
    n_reference: int
    n_current: int
    path: Path
    columns: list[ColumnDrift] = field(default_factory=list)


def drift_windows(events: pd.DataFrame, cfg: DriftConfig) -> Windows:
    """Both windows, anchored at the newest event."""
    if events.empty:
        raise DriftError("no events: nothing to compare")
    end = pd.Timestamp(events["event_ts"].max())
    current_start = end - pd.Timedelta(days=cfg.current_days)
    return Windows(current_start - pd.Timedelta(days=cfg.reference_days), current_start, current_start, end)


def popularity_bucket(ranks: pd.Series) -> pd.Series:
    """Decade of a 1-based popularity rank: ``top_1-9``, ``top_10-99``, ...; ``unseen`` for missing ranks.

    >>> popularity_bucket(pd.Series([1, 10, 250, None])).tolist()
    ['top_1-9', 'top_10-99', 'top_100-999', 'unseen']
    """
    exponent = np.floor(np.log10(ranks.astype("float64")))
    labels = [
        "unseen" if np.isnan(e) else f"top_{10 ** int(e)}-{10 ** (int(e) + 1) - 1}"
        for e in exponent.to_numpy()
    ]
    return pd.Series(labels, index=ranks.index, dtype=object)


def event_frame(window_events: pd.DataFrame, item_rank: pd.Series) -> pd.DataFrame:
    """Per-event drift columns of the events of one window."""
    ts = window_events["event_ts"]
    ranks = window_events["item_id"].map(item_rank)
    return pd.DataFrame(
        {
            "event_type": window_events["event_type"].astype(str).to_numpy(),
            "hour_of_day": ts.dt.hour.astype(str).str.zfill(2).to_numpy(),
            "day_of_week": ts.dt.day_name().to_numpy(),
            "item_popularity_bucket": popularity_bucket(ranks).to_numpy(),
            # log1p: a few heavy users would otherwise dominate the distance between the windows.
            "user_activity": np.log1p(window_events.groupby("user_id")["event_id"].transform("size")),
        }
    ).reset_index(drop=True)


def window_frames(events: pd.DataFrame, windows: Windows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-event drift columns of the reference and the current window."""
    ts = events["event_ts"]
    reference = events[(ts > windows.reference_start) & (ts <= windows.reference_end)]
    current = events[(ts > windows.current_start) & (ts <= windows.current_end)]
    if reference.empty or current.empty:
        raise DriftError(
            f"empty window: {len(reference)} reference and {len(current)} current events "
            f"(windows end at {windows.current_end.isoformat()}; adjust drift.reference_days/current_days)"
        )
    counts = reference.groupby("item_id").size().sort_values(ascending=False, kind="stable")
    item_rank = pd.Series(np.arange(1, len(counts) + 1), index=counts.index)
    return event_frame(reference, item_rank), event_frame(current, item_rank)


def nearest_snapshot(features: pd.DataFrame, moment: pd.Timestamp) -> pd.DataFrame:
    """The rows of the ``feature_ts`` snapshot closest to ``moment``."""
    stamps = pd.Series(pd.to_datetime(features["feature_ts"], utc=True).unique())
    chosen = stamps.iloc[int((stamps - moment).abs().to_numpy().argmin())]
    return features[pd.to_datetime(features["feature_ts"], utc=True) == chosen]


@contextmanager
def quiet_statistics() -> Iterator[None]:
    """Silence numpy/scipy arithmetic warnings raised inside Evidently's statistics.

    They are expected, not faults: a category present on one side only makes a chi-square term divide by
    zero (an infinite statistic, which Evidently reads as drift), and a constant column has no
    correlation. Printed, they buried the alerts an on-call engineer reads. Other warnings still show.
    """
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    categorical: list[str],
    numerical: list[str],
    drift_share: float,
) -> tuple[list[ColumnDrift], Any]:
    """Run Evidently's DataDriftPreset; per-column verdicts come from its per-column drift tests."""
    from evidently import DataDefinition, Report
    from evidently import Dataset as EvDataset
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(categorical_columns=categorical, numerical_columns=numerical)
    report = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True)
    snapshot = report.run(
        EvDataset.from_pandas(current, data_definition=definition),
        EvDataset.from_pandas(reference, data_definition=definition),
    )
    scores: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, bool] = {}
    content = snapshot.dict()
    for metric in content["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            scores[config["column"]] = {**config, "value": metric["value"]}
    for test in content["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        if test.get("id") == "drift" and "column" in params:
            verdicts[params["column"]] = test["status"] == "FAIL"
    columns = [
        ColumnDrift(
            column=name,
            method=str(scores[name]["method"]),
            score=float(scores[name]["value"]),
            threshold=float(scores[name]["threshold"]),
            drifted=verdicts[name],
        )
        for name in [*categorical, *numerical]
        if name in scores and name in verdicts
    ]
    return columns, snapshot


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run_drift(config: PipelineConfig, dataset_version: str | None = None) -> DriftSummary:
    """Compare the reference and current windows of a dataset version; write report.html and drift.json."""
    from rich.console import Console

    from recsys.ingest.snapshot import load_table

    console = Console(stderr=True)
    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    cfg = config.drift
    events = load_table(state, version, "interaction_events")
    windows = drift_windows(events, cfg)
    reference, current = window_frames(events, windows)
    out = state.drift(version)
    out.mkdir(parents=True, exist_ok=True)
    with (
        console.status(f"Evidently: {len(reference):,} reference vs {len(current):,} current events"),
        quiet_statistics(),
    ):
        columns, snapshot = compare(
            reference, current, list(EVENT_CATEGORICAL), list(EVENT_NUMERICAL), cfg.drift_share_threshold
        )
        snapshot.save_html(str(out / "report.html"))
    user_info: dict[str, Any] | None = None
    features_path = state.offline / "user_features.parquet"
    if features_path.exists():
        features = pd.read_parquet(features_path)
        ref_users = nearest_snapshot(features, windows.reference_end)
        cur_users = nearest_snapshot(features, windows.current_end)
        ref_ts, cur_ts = ref_users["feature_ts"].iloc[0], cur_users["feature_ts"].iloc[0]
        numeric = [c for c in USER_FEATURE_COLUMNS if c in features.columns]
        user_info = {
            "reference_feature_ts": str(ref_ts),
            "current_feature_ts": str(cur_ts),
            "compared": False,
        }
        if ref_ts != cur_ts and numeric:
            with console.status("Evidently: user features"), quiet_statistics():
                user_columns, user_snapshot = compare(
                    ref_users[numeric].astype("float64").reset_index(drop=True),
                    cur_users[numeric].astype("float64").reset_index(drop=True),
                    [],
                    numeric,
                    cfg.drift_share_threshold,
                )
                user_snapshot.save_html(str(out / "user_features_report.html"))
            columns += user_columns
            user_info |= {"compared": True, "n_reference": len(ref_users), "n_current": len(cur_users)}
    drifted = [c.column for c in columns if c.drifted]
    share = len(drifted) / len(columns) if columns else 0.0
    detected = share >= cfg.drift_share_threshold
    payload = {
        "dataset_version": version,
        **windows.as_json(),
        "n_reference": len(reference),
        "n_current": len(current),
        "drifted_columns": drifted,
        "share_drifted": share,
        "drift_detected": detected,
        "drift_share_threshold": cfg.drift_share_threshold,
        "columns": {
            c.column: {"method": c.method, "score": c.score, "threshold": c.threshold, "drifted": c.drifted}
            for c in columns
        },
        "user_features": user_info,
    }
    _write_json_atomic(out / "drift.json", payload)
    verdict = "[red]drift detected[/red]" if detected else "[green]no drift[/green]"
    console.print(f"drift {version}: {verdict}: {len(drifted)}/{len(columns)} columns drifted {drifted}")
    return DriftSummary(version, detected, share, drifted, len(reference), len(current), out, columns)
