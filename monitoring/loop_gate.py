"""The loop's promotion gate: the challenger against the champion on the drifted window.

After drift the champion is stale by design: it was trained on an older dataset version than the
challenger. :func:`evaluation.gate.run_gate` judges two systems trained on the same version (on another
version's split, a model could be scored on events it trained on), so the loop judges on a window where
that cannot happen: the judged users of the new version's test split whose whole test window lies after
both the drift onset (the monitor's current window start) and the newest event the champion's dataset
held. Both systems answer exactly those requests; the checks and thresholds are the gate's own
(:func:`evaluation.gate.judge`, ``evaluate.gate`` in the config).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import PipelineConfig
from recsys.state import StateDir


@dataclass(frozen=True)
class WindowGate:
    """The gate's verdict on the drifted window, with every figure it used."""

    passed: bool
    reasons: list[str]
    checks: dict[str, dict[str, float | bool]]
    users: int
    window_start: str


def trained_on(state: StateDir, model_name: str, alias: str) -> str:
    """The dataset version the model holding ``alias`` was trained on (its registry tag)."""
    from training.registry import model_version

    return str(model_version(state, model_name, alias).tags.get("dataset_version", ""))


def drifted_part(window: Any, since: pd.Timestamp) -> Any:
    """The evaluation window cut to users whose every test event is at or after ``since``.

    Their earlier events stay history (seen, never recommended again); nothing of the window precedes
    ``since``, so no model trained on data before ``since`` has seen any of it.
    """
    ts = pd.to_datetime(window.window["event_ts"], utc=True)
    first = ts.groupby(window.window["user_id"].astype(str)).min()
    users = [u for u in window.users if u in first.index and first[u] >= since]
    if not users:
        raise ValueError(f"no test user has a window entirely after {since.isoformat()}: nothing to judge")
    keep = set(users)
    return replace(
        window,
        window=window.window[window.window["user_id"].astype(str).isin(keep)],
        users=users,
        relevant={u: window.relevant[u] for u in users},
        starts=window.starts[window.starts["user_id"].astype(str).isin(keep)].reset_index(drop=True),
    )


def run_window_gate(config: PipelineConfig, version: str, since: pd.Timestamp) -> WindowGate:
    """Score champion and challenger on the drifted part of ``version``'s test window and judge them.

    Raises:
        ValueError: the window holds no user after ``since``, or it starts before the champion's data ends.
    """
    from evaluation.beyond_accuracy import list_metrics
    from evaluation.evaluate import item_categories, users_per_item
    from evaluation.gate import judge, score_psi_of
    from evaluation.harness import load_window, score_system
    from evaluation.metrics import ranking_metrics
    from evaluation.replay import serving_latency
    from recsys.ingest.snapshot import load_table
    from training.registry import CHALLENGER, CHAMPION, TWO_TOWER_MODEL

    cfg = config.evaluate.gate
    state = StateDir(config.state_dir)
    champion_data = trained_on(state, TWO_TOWER_MODEL, CHAMPION)
    champion_end = pd.Timestamp(load_table(state, champion_data, "interaction_events")["event_ts"].max())
    start = max(since, champion_end)
    window = drifted_part(load_window(config, version, "test"), start)
    n_candidates = max(config.ranker.n_candidates, cfg.ndcg_k)
    # The champion is scored under its own dataset version's name: the check that guards against scoring
    # a model on events it trained on is met by construction here (the window starts after its data ends).
    as_champion = replace(window, dataset_version=champion_data)
    runs = {
        CHALLENGER: score_system(config, window, CHALLENGER, n_candidates),
        CHAMPION: score_system(config, as_champion, CHAMPION, n_candidates),
    }
    categories = item_categories(window.items)
    figures = {}
    for role, run in runs.items():
        lists = run.rankings["retrieval+ranking"]
        figures[role] = ranking_metrics(lists, window.relevant, [cfg.ndcg_k]) | list_metrics(
            [lists.get(u, [])[: cfg.ndcg_k] for u in window.users],
            [cfg.ndcg_k],
            sorted(categories),
            categories,
            users_per_item(window.seen),
            len(window.seen),
        )
    # Calibrated probabilities, as the release gate compares them: raw ranker scores of two trainings sit
    # on unrelated scales, so their PSI measures the scale, not what the models believe.
    psi = score_psi_of({"champion": runs[CHAMPION], "challenger": runs[CHALLENGER]})
    timings = serving_latency(config, CHALLENGER, window.users[: cfg.latency_requests], cfg.ndcg_k)
    passed, reasons, checks = judge(
        figures[CHAMPION], figures[CHALLENGER], psi, float(np.percentile(timings, 99)), cfg
    )
    return WindowGate(passed, reasons, checks, len(window.users), start.isoformat())
