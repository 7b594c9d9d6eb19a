"""`recsys loop`: drift check -> new dataset -> features -> challenger -> gate -> shadow -> promote or keep.

One run: ingest the current log (a new content-derived dataset version when the log grew), run the
monitor on it, and decide (:mod:`monitoring.decisions`): refuse on a broken upstream, retrain on drift or
when the schedule is due, else stop. A retrain splits, refreshes features, checks the fresh feature
snapshot for emptied columns (refusing again if one appears), trains a challenger, runs the promotion
gate, and shadow-scores challenger and champion retrievers on the drifted window: test users of the new
version whose whole test window comes after the drift onset and after the champion's data (a stale
champion is gated there too, by :mod:`monitoring.loop_gate`). Promotion needs both to pass; otherwise the
champion stays and the reasons are recorded. Every step goes to one MLflow run (``recsys-loop`` tags
and metrics, the monitor's verdict and Evidently reports as artefacts) and to
``monitor/runs/<run_id>/loop.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.decisions import Trigger, decide_promotion, decide_trigger, due_models, load_schedule
from recsys.config import PipelineConfig
from recsys.state import StateDir

LOOP_RUN_NAME = "recsys-loop"


@dataclass
class LoopRecord:
    """What the run did, step by step; written as loop.json and logged to MLflow."""

    run_id: str
    started: str
    dataset_version: str = ""
    status: str = "ok"
    decision: str = ""
    trigger: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift_detected: bool = False
    window: str = ""
    current_window: dict[str, str] = field(default_factory=dict)
    # How the challenger's two-tower model was trained: `full`, or `finetune from v<champion>`.
    retrain_mode: str = ""

    def step(self, name: str, **details: Any) -> None:
        self.steps.append({"step": name, **details})

    def as_json(self) -> dict[str, Any]:
        return {"kind": "loop", **self.__dict__}


def _last_trained(state: StateDir) -> dict[str, datetime | None]:
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, champion_version

    out: dict[str, datetime | None] = {}
    for key, name in (("retrieval", TWO_TOWER_MODEL), ("ranker", RANKER_MODEL)):
        entry = champion_version(state, name)
        out[key] = None if entry is None else datetime.fromtimestamp(entry.creation_timestamp / 1000, UTC)
    return out


def _days_since_drift_retrain(state: StateDir, now: datetime) -> float | None:
    from monitoring.runs_index import read_runs

    for run in read_runs(state.monitor):
        drift = any(r.startswith("drift") for r in run.get("trigger", []))
        if run.get("kind") == "loop" and drift and run.get("decision", "").startswith(("promoted", "kept")):
            return (now - datetime.fromisoformat(run["started"])).total_seconds() / 86400
    return None


def shadow_ndcg(
    user_ids: list[str],
    user_embeddings: np.ndarray,
    item_ids: list[str],
    item_embeddings: np.ndarray,
    seen: dict[str, set[str]],
    relevant: dict[str, set[str]],
    k: int,
) -> float:
    """NDCG@k of exact dot-product retrieval for these users, never recommending what they had seen."""
    from evaluation.metrics import ranking_metrics

    scores = user_embeddings @ item_embeddings.T  # (n_users, n_items)
    position = {item: j for j, item in enumerate(item_ids)}
    rankings = {}
    for row, user in enumerate(user_ids):
        banned = [position[i] for i in seen.get(user, set()) if i in position]
        scores[row, banned] = -np.inf
        top = np.argsort(-scores[row], kind="stable")[:k]
        rankings[user] = [item_ids[j] for j in top]
    return ranking_metrics(rankings, relevant, [k])[f"ndcg@{k}"]


def shadow_compare(
    config: PipelineConfig, state: StateDir, version: str, since: pd.Timestamp
) -> dict[str, float]:
    """Champion and challenger retrievers on the drifted part of ``version``'s test window (test users
    whose every test event is at or after ``since``): same users, same features."""
    from evaluation.split import load_split
    from monitoring.drift import nearest_snapshot
    from training.examples import positives
    from training.registry import CHALLENGER, CHAMPION, TWO_TOWER_MODEL, load_model
    from training.runtime import RetrievalModel

    split = load_split(state, version)
    first = pd.to_datetime(split.test["event_ts"], utc=True).groupby(split.test["user_id"].astype(str)).min()
    test_pos = positives(split.test)
    history = pd.concat([split.train, split.validation])
    after = set(first.index[first >= since])
    users = sorted(set(test_pos["user_id"].astype(str)) & after)[: config.loop.shadow_users]
    relevant = {u: set(g.astype(str)) for u, g in test_pos.groupby("user_id")["item_id"]}
    seen = {u: set(g.astype(str)) for u, g in history.groupby("user_id")["item_id"]}
    if not users:
        raise ValueError(f"no test user has a window entirely after {since.isoformat()}: nothing to judge")
    start = first[users].min()
    features = nearest_snapshot(pd.read_parquet(state.offline / "user_features.parquet"), start)
    rows = features.drop_duplicates("user_id").set_index("user_id").reindex(users).reset_index()
    out: dict[str, float] = {"shadow_users": float(len(users))}
    for alias in (CHAMPION, CHALLENGER):
        model = RetrievalModel.load(*load_model(state, TWO_TOWER_MODEL, alias))
        emb = model.embed_users(users, rows)
        out[f"shadow_ndcg_{alias}"] = shadow_ndcg(
            users, emb, model.catalog, model.item_embeddings, seen, relevant, config.loop.shadow_k
        )
    return out


def judged_since(state: StateDir, drift_start: pd.Timestamp) -> pd.Timestamp:
    """Where the comparison window starts: after the drift onset and after the champion's newest event."""
    from monitoring.loop_gate import trained_on
    from recsys.ingest.snapshot import load_table
    from training.registry import CHAMPION, TWO_TOWER_MODEL

    events = load_table(state, trained_on(state, TWO_TOWER_MODEL, CHAMPION), "interaction_events")
    return max(drift_start, pd.Timestamp(events["event_ts"].max()))


def _gate(
    config: PipelineConfig, state: StateDir, version: str, since: pd.Timestamp
) -> tuple[bool, list[str], dict[str, Any]]:
    """The promotion gate: the evaluation gate when both systems share the dataset version, else the same
    checks on the drifted window (:mod:`monitoring.loop_gate`)."""
    from evaluation.gate import run_gate
    from monitoring.loop_gate import run_window_gate, trained_on
    from training.registry import CHAMPION, TWO_TOWER_MODEL

    if trained_on(state, TWO_TOWER_MODEL, CHAMPION) == version:
        decision = run_gate(config, dataset_version=version)
        return bool(decision.passed), list(decision.reasons), {"mlflow_run_id": decision.mlflow_run_id}
    verdict = run_window_gate(config, version, since)
    checks = {f"{name}.{key}": v for name, check in verdict.checks.items() for key, v in check.items()}
    return verdict.passed, verdict.reasons, {"users": verdict.users, "since": verdict.window_start, **checks}


def _emptied_feature_columns(state: StateDir) -> list[str]:
    """Feature columns filled in the previous snapshot and empty in the newest one."""
    from monitoring.upstream import emptied_columns

    problems = []
    for table in ("user_features", "item_features"):
        path = state.offline / f"{table}.parquet"
        if not path.exists():
            continue
        features = pd.read_parquet(path)
        stamps = sorted(pd.to_datetime(features["feature_ts"], utc=True).unique())
        if len(stamps) < 2:
            continue
        ts = pd.to_datetime(features["feature_ts"], utc=True)
        before, latest = features[ts == stamps[-2]], features[ts == stamps[-1]]
        columns = [c for c in features.columns if c not in ("user_id", "item_id", "feature_ts", "created_ts")]
        problems += [f"{table}.{c}" for c in emptied_columns(before, latest, columns)]
    return problems


def run_loop(
    config: PipelineConfig,
    window: str | None = None,
    now: datetime | None = None,
    say: Callable[[str], None] = print,
) -> LoopRecord:
    """One turn of the loop; see the module docstring. Never raises for a refusal: it records it."""
    from monitoring.monitor import new_run_id, run_monitor
    from monitoring.runs_index import write_index
    from recsys.ingest.stage import run_ingest

    moment = now or datetime.now(UTC)
    state = StateDir(config.state_dir)
    record = LoopRecord(run_id=new_run_id(moment), started=moment.isoformat())
    schedule = load_schedule(config.loop.schedule)
    version = run_ingest(config).dataset_version
    record.dataset_version = version
    record.step("ingest", dataset_version=version)
    monitor = run_monitor(config, window, version)
    record.alerts = [a for a in monitor.as_json()["alerts"]]
    record.reports = {
        k: {**v, "html": f"../{monitor.run_id}/{v['html']}"} for k, v in monitor.reports.items()
    }
    record.drift_detected, record.window = monitor.drift_detected, monitor.window
    record.current_window = monitor.windows.as_json()["current_window"]
    record.metrics.update(
        {
            f"{o.metric}.{o.subject}": o.value
            for o in monitor.observations
            if o.metric in ("feature_psi", "score_psi")
        }
    )
    record.step("monitor", run_id=monitor.run_id, status=monitor.status, drift=monitor.drift_detected)
    trigger: Trigger = decide_trigger(
        monitor.alerts,
        monitor.drift_detected,
        due_models(schedule, _last_trained(state), moment),
        schedule,
        _days_since_drift_retrain(state, moment),
        config.loop.follow_schedule,
    )
    record.trigger = trigger.reasons
    say(f"loop: {trigger.action}: {'; '.join(trigger.reasons)}")
    if trigger.action == "retrain":
        _retrain(config, state, version, record, say)
    else:
        record.decision = (
            "refused: " + "; ".join(trigger.reasons) if trigger.action == "refuse" else "no retrain"
        )
        record.status = "page" if trigger.action == "refuse" else "ok"
    _record(state, record, monitor.path)
    write_index(state.monitor)
    say(f"loop {record.run_id}: {record.decision}")
    return record


def _retrain(
    config: PipelineConfig, state: StateDir, version: str, record: LoopRecord, say: Callable[[str], None]
) -> None:
    from evaluation.split import run_split
    from recsys.features.stage import run_features
    from training.registry import CHALLENGER, RANKER_MODEL, TWO_TOWER_MODEL, alias_version, promote
    from training.stage import run_train

    run_split(config, version)
    run_features(config, version)
    record.step("features", dataset_version=version)
    emptied = _emptied_feature_columns(state)
    if emptied:
        record.decision = f"refused: feature columns empty in the newest snapshot: {', '.join(emptied)}"
        record.status = "page"
        return
    summary = run_train(config, version, alias=CHALLENGER, retrain=config.loop.retrain)
    record.retrain_mode = summary.retrain_mode + (
        f" from v{summary.finetuned_from}" if summary.finetuned_from is not None else ""
    )
    record.step(
        "train",
        two_tower=summary.two_tower_version,
        ranker=summary.ranker_version,
        skipped=summary.skipped,
        seconds=round(summary.seconds, 1),
        retrain_requested=config.loop.retrain,
        retrain_mode=summary.retrain_mode,
        finetuned_from=summary.finetuned_from,
        **({"finetune_refused": summary.finetune_refused} if summary.finetune_refused else {}),
    )
    if alias_version(state, TWO_TOWER_MODEL, CHALLENGER) is None:
        record.decision = f"promoted: first model (v{summary.two_tower_version}) is the champion"
        return
    since = judged_since(state, pd.Timestamp(record.current_window["start"]))
    gate_passed, gate_reasons, gate_info = _gate(config, state, version, since)
    record.step("gate", passed=gate_passed, reasons=gate_reasons, **gate_info)
    record.metrics.update(
        {f"gate.{k}": float(v) for k, v in gate_info.items() if isinstance(v, int | float | bool)}
    )
    shadow = shadow_compare(config, state, version, since)
    record.metrics.update(shadow)
    record.step("shadow", **shadow)
    verdict = decide_promotion(
        gate_passed, gate_reasons, shadow.get("shadow_ndcg_challenger"), shadow.get("shadow_ndcg_champion")
    )
    if verdict.promote:
        previous = promote(state, TWO_TOWER_MODEL, summary.two_tower_version)
        promote(state, RANKER_MODEL, summary.ranker_version)
        record.decision = (
            f"promoted v{summary.two_tower_version} (was v{previous}): {'; '.join(verdict.reasons)}"
        )
    else:
        record.decision = f"kept the champion: {'; '.join(verdict.reasons)}"
    say(f"loop: {record.decision}")


def _record(state: StateDir, record: LoopRecord, monitor_dir: Path) -> None:
    """loop.json in its own run folder, and one MLflow run with the drift report as artefacts."""
    import mlflow

    from training.registry import configure

    out = state.monitor / "runs" / record.run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop.json").write_text(json.dumps(record.as_json(), indent=2, sort_keys=True, default=str) + "\n")
    configure(state)
    with mlflow.start_run(run_name=LOOP_RUN_NAME):
        mlflow.set_tags(
            {
                "loop_run_id": record.run_id,
                "dataset_version": record.dataset_version,
                "decision": record.decision[:4000],
                **({"retrain_mode": record.retrain_mode} if record.retrain_mode else {}),
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in record.metrics.items() if np.isfinite(v)})
        mlflow.log_dict(record.as_json(), "loop.json")
        mlflow.log_artifacts(str(monitor_dir), "monitor")
