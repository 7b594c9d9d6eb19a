"""`recsys monitor`: every signal of a window against the one before it, judged by the tiered rules.

The current window is the ``window`` up to the newest event of the dataset version (or ``at``); the
reference is the ``reference_window`` before it. Signals (:mod:`monitoring.signals`): data PSI, KL and
fill rates of the event log and of the stored feature snapshots, category vocabulary changes, contract
violations, business metrics from served lists, the served ranker's calibration (its logged probabilities
against the clicks, :mod:`monitoring.calibration`) and, when a champion retriever is registered, its score
distribution and user-embedding drift. Each run writes ``monitor/runs/<run_id>/verdict.json`` with the
Evidently reports beside it, and rewrites ``monitor/index.html``.

Exit status of the command: 0 nothing fired, 3 a notify rule fired, 4 a page rule fired.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.alerts import DEFAULT_RULES, Alert, Observation, evaluate_rules, format_alerts, load_rules
from monitoring.calibration import calibration_note, calibration_observations, served_calibration
from monitoring.drift import DriftError, Windows, nearest_snapshot
from monitoring.signals import (
    business_observations,
    contract_observation,
    data_observations,
    event_signals,
    model_observations,
    snapshot_observations,
    vocabulary_observations,
)
from recsys.config import PipelineConfig
from recsys.state import MissingStateError, StateDir
from recsys.vocab import GENRES

EXIT_CODES: dict[str, int] = {"ok": 0, "notify": 3, "page": 4}
_DURATION = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> pd.Timedelta:
    """``30m``, ``24h``, ``7d`` as a Timedelta; anything else is a clear error.

    >>> parse_duration("36h")
    Timedelta('1 days 12:00:00')
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"window {text!r} must look like 30m, 1h, 24h or 7d")
    return pd.Timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def monitor_windows(end: pd.Timestamp, window: pd.Timedelta, reference: pd.Timedelta) -> Windows:
    """``(end - window, end]`` and the ``reference`` long window just before it."""
    start = end - window
    return Windows(start - reference, start, start, end)


def _cut(events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    ts = events["event_ts"]
    return events[(ts > start) & (ts <= end)]


@dataclass(frozen=True)
class MonitorRun:
    """The outcome of one run: every observation, the alerts that fired, the reports written."""

    run_id: str
    dataset_version: str
    window: str
    windows: Windows
    observations: list[Observation]
    alerts: list[Alert]
    path: Path
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``page`` when any page rule fired, else ``notify`` when any rule fired, else ``ok``."""
        severities = {a.severity for a in self.alerts}
        return "page" if "page" in severities else "notify" if severities else "ok"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def drift_detected(self) -> bool:
        """Whether the data or the model moved (rather than the pipeline broke): what triggers a retrain."""
        drift_metrics = {"feature_psi", "score_psi", "embedding_centroid_distance"}
        return any(a.metric in drift_metrics for a in self.alerts) or any(
            r.get("drift_detected") for r in self.reports.values()
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "kind": "monitor",
            "dataset_version": self.dataset_version,
            "window": self.window,
            **self.windows.as_json(),
            "status": self.status,
            "drift_detected": self.drift_detected,
            "alerts": [_jsonable(asdict(a)) for a in self.alerts],
            "observations": [_jsonable(asdict(o)) for o in self.observations],
            "reports": self.reports,
            "notes": self.notes,
        }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, float) and not np.isfinite(value):
            value = None
        out[key] = value
    return out


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: ``20261127T101500Z-1a2b3c``."""
    moment = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{moment}-{uuid.uuid4().hex[:6]}"


def _feature_observations(
    state: StateDir, windows: Windows, since: datetime, n_bins: int
) -> list[Observation]:
    observations: list[Observation] = []
    for table in ("user_features", "item_features"):
        path = state.offline / f"{table}.parquet"
        if not path.exists():
            continue
        features = pd.read_parquet(path)
        ref, cur = (
            nearest_snapshot(features, windows.reference_end),
            nearest_snapshot(features, windows.current_end),
        )
        if ref["feature_ts"].iloc[0] == cur["feature_ts"].iloc[0]:
            continue  # one snapshot serves both windows: nothing to compare
        columns = [c for c in features.columns if c not in ("user_id", "item_id", "feature_ts", "created_ts")]
        observations += snapshot_observations(ref, cur, columns, since, n_bins)
    return observations


def _model_observations(
    state: StateDir,
    ref_events: pd.DataFrame,
    cur_events: pd.DataFrame,
    windows: Windows,
    n_users: int,
    since: datetime,
) -> tuple[list[Observation], dict[str, np.ndarray]]:
    """Champion retriever scores and user embeddings for a seeded sample of each window's users.

    Only users with a row in the feature snapshot are sampled: users the snapshot does not know all get the
    same cold-start embedding, and their share follows how fresh the snapshot is (before the loop refreshes
    features, every newcomer of the current window is one), not how the model or the users changed.
    """
    from training.registry import CHAMPION, TWO_TOWER_MODEL, load_model
    from training.runtime import RetrievalModel

    directory, version = load_model(state, TWO_TOWER_MODEL, CHAMPION)
    model = RetrievalModel.load(directory, version)
    features = pd.read_parquet(state.offline / "user_features.parquet")
    rng = np.random.default_rng(0)
    sides = []
    for events, end in ((ref_events, windows.reference_end), (cur_events, windows.current_end)):
        snapshot = nearest_snapshot(features, end).drop_duplicates("user_id").set_index("user_id")
        users = np.array(sorted(set(events["user_id"].astype(str)) & set(snapshot.index.astype(str))))
        if not len(users):
            raise MissingStateError(f"no user of the window before {end.isoformat()} has features")
        users = users[np.sort(rng.permutation(len(users))[:n_users])]
        rows = snapshot.reindex(users).reset_index()
        sides.append((list(users), model.embed_users(list(users), rows)))
    (ref_ids, ref_emb), (cur_ids, cur_emb) = sides
    observations = model_observations(ref_ids, ref_emb, cur_ids, cur_emb, model.item_embeddings, since)

    def top(users: np.ndarray) -> np.ndarray:
        return np.sort(users @ model.item_embeddings.T, axis=1)[:, -10:].ravel()

    return observations, {"reference": top(ref_emb), "current": top(cur_emb)}


def _calibration_observations(
    state: StateDir, events: pd.DataFrame, windows: Windows, window: str, since: datetime
) -> tuple[list[Observation], str | None]:
    """The served ranker's calibration in the current window (the reference window's as baselines): the
    answers logged in the state's served log during each window, joined to that window's clicks."""
    from serving.served import SERVED_FOLDER, ServedTail  # the serving stack loads only for this read

    tail = ServedTail(state.root / SERVED_FOLDER)
    rows = list(tail.read_new(since_day=windows.reference_start.date().isoformat()))
    sides = []
    for start, stop in (
        (windows.reference_start, windows.reference_end),
        (windows.current_start, windows.current_end),
    ):
        inside = [row for row in rows if start < datetime.fromisoformat(row["served_at"]) <= stop]
        sides.append(served_calibration(inside, _cut(events, start, stop)))
    reference, current = sides
    return calibration_observations(reference, current, window, since), calibration_note(current)


def collect(
    config: PipelineConfig, window: str, dataset_version: str | None, at: datetime | None
) -> tuple[str, Windows, list[Observation], dict[str, Any], list[str]]:
    """Read the dataset version and measure every signal.

    Returns:
        (version, windows, observations, frames for the reports, notes on unavailable signals).
    """
    from recsys.ingest.snapshot import load_table

    cfg = config.monitor
    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    events = load_table(state, version, "interaction_events")
    if events.empty:
        raise DriftError(f"dataset {version} holds no events: nothing to monitor")
    span = parse_duration(window)
    end = pd.Timestamp(at) if at is not None else pd.Timestamp(events["event_ts"].max())
    end = end.tz_localize("UTC") if end.tzinfo is None else end
    windows = monitor_windows(end, span, parse_duration(cfg.reference_window or window))
    ref_events = _cut(events, windows.reference_start, windows.reference_end)
    cur_events = _cut(events, windows.current_start, windows.current_end)
    if ref_events.empty or cur_events.empty:
        raise DriftError(
            f"empty window: {len(ref_events)} reference and {len(cur_events)} current events between "
            f"{windows.reference_start.isoformat()} and {end.isoformat()}; pick a longer --window"
        )
    since = windows.current_start.to_pydatetime()
    counts = ref_events.groupby("item_id").size().sort_values(ascending=False, kind="stable")
    item_rank = pd.Series(np.arange(1, len(counts) + 1), index=counts.index)
    items = load_table(state, version, "items")
    published = pd.to_datetime(items["published_at"], utc=True)
    # Items published inside a window are that window's arrivals (bucket `new`), on both sides.
    arrived = {
        side: items["item_id"][(published > start) & (published <= stop)].astype(str)
        for side, start, stop in (
            ("reference", windows.reference_start, windows.reference_end),
            ("current", windows.current_start, windows.current_end),
        )
    }
    ref_frame = event_signals(ref_events, item_rank, arrived["reference"])
    cur_frame = event_signals(cur_events, item_rank, arrived["current"])
    bucket = pd.Timedelta(days=1) if span >= pd.Timedelta(days=2) else pd.Timedelta(hours=1)
    observations = data_observations(
        ref_frame, cur_frame, cur_events["event_ts"], since, n_bins=cfg.psi_bins, bucket=bucket
    )
    observations += _feature_observations(state, windows, since, cfg.psi_bins)
    observations += vocabulary_observations(ref_events, cur_events, items, GENRES, since)
    observations.append(contract_observation(load_table(state, version, "quarantine"), since))
    catalogue = items["item_id"].astype(str).tolist()
    categories = {str(i): set(c) for i, c in zip(items["item_id"], items["categories"], strict=True)}
    notes: list[str] = []
    business = business_observations(ref_events, cur_events, window, since, catalogue, categories)
    # The CTR rules judge fixed windows (a day against the day before, an hour against the same hour a day
    # earlier), whatever window the run was asked for.
    for label, length, lag in (
        ("24h", pd.Timedelta(hours=24), None),
        ("1h", pd.Timedelta(hours=1), pd.Timedelta(days=1)),
    ):
        cur = _cut(events, end - length, end)
        ref_end = end - (lag or length)
        ref = _cut(events, ref_end - length, ref_end)
        business += [
            o
            for o in business_observations(
                ref, cur, label, (end - length).to_pydatetime(), catalogue, categories
            )
            if o.metric == "ctr"
        ]
    if not business:
        notes.append("business metrics unavailable: the log holds no impressions with a request_id")
    observations += business
    calibration, note = _calibration_observations(state, events, windows, window, since)
    observations += calibration
    notes += [note] if note else []
    frames: dict[str, Any] = {"reference": ref_frame, "current": cur_frame}
    frames["reference_target"] = ref_events["event_type"].reset_index(drop=True)
    frames["current_target"] = cur_events["event_type"].reset_index(drop=True)
    if cfg.model_sample_users > 0:
        try:
            model_obs, scores = _model_observations(
                state, ref_events, cur_events, windows, cfg.model_sample_users, since
            )
            observations += model_obs
            frames["scores"] = scores
        except (MissingStateError, FileNotFoundError) as err:
            notes.append(f"model signals unavailable: {err}")
    return version, windows, observations, frames, notes


def write_reports(frames: dict[str, Any], out: Path, drift_share: float) -> dict[str, dict[str, Any]]:
    """The three Evidently reports of a run (prediction drift only when champion scores were measured)."""
    from monitoring.reports import target_labels, usable, write_report

    reports: dict[str, dict[str, Any]] = {}
    ref, cur = frames["reference"], frames["current"]
    categorical = usable(
        ref, [c for c in ("event_type", "device_type", "surface", "hour_of_day", "item_popularity_bucket")]
    )
    numerical = usable(ref, [c for c in ("user_activity", "dwell_time_ms", "position")])
    categorical = usable(cur, categorical)
    numerical = usable(cur, numerical)
    reports["data_drift"] = write_report(
        "data_drift", ref, cur, categorical, numerical, out, drift_share
    ).as_json()
    target = (
        pd.DataFrame({"target": target_labels(frames["reference_target"])}),
        pd.DataFrame({"target": target_labels(frames["current_target"])}),
    )
    reports["target_drift"] = write_report(
        "target_drift", *target, ["target"], [], out, drift_share
    ).as_json()
    if "scores" in frames:
        scores = frames["scores"]
        reports["prediction_drift"] = write_report(
            "prediction_drift",
            pd.DataFrame({"score": scores["reference"]}),
            pd.DataFrame({"score": scores["current"]}),
            [],
            ["score"],
            out,
            drift_share,
        ).as_json()
    return reports


def run_monitor(
    config: PipelineConfig,
    window: str | None = None,
    dataset_version: str | None = None,
    at: datetime | None = None,
) -> MonitorRun:
    """Measure, judge, write the run folder and the index; print the alerts."""
    from rich.console import Console

    from monitoring.runs_index import write_index

    console = Console(stderr=True)
    cfg = config.monitor
    label = window or cfg.window
    rules = load_rules(cfg.rules or DEFAULT_RULES)
    state = StateDir(config.state_dir)
    with console.status(
        f"monitor: measuring the last {label} against the {cfg.reference_window or label} before"
    ):
        version, windows, observations, frames, notes = collect(config, label, dataset_version, at)
    alerts = evaluate_rules(rules, observations)
    run_id = new_run_id()
    out = state.monitor / "runs" / run_id
    out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    if cfg.evidently_reports:
        with console.status("monitor: Evidently reports (data, target, prediction drift)"):
            reports = write_reports(frames, out, config.drift.drift_share_threshold)
    run = MonitorRun(run_id, version, label, windows, observations, alerts, out, reports, notes)
    (out / "verdict.json").write_text(json.dumps(run.as_json(), indent=2, sort_keys=True) + "\n")
    write_index(state.monitor)
    console.print(format_alerts(alerts), soft_wrap=True, markup=False, highlight=False)
    for note in notes:
        console.print(f"note: {note}", markup=False)
    console.print(
        f"run {run_id}: {run.status}; reports and verdict in {out}; index {state.monitor / 'index.html'}"
    )
    return run
