"""What every offline judgement shares: the evaluation window of a split, and a two-stage system's answers.

`load_window` reads a dataset version's split once: the judged users (those with a positive in the
window), their history (everything before the window, never recommended again), their relevant items,
and each user's window start moved back to the newest feature snapshot. `score_system` runs one
registered (two-tower, ranker) pair over that window, with point-in-time Feast features, so evaluation
and the gate score champion and challenger on exactly the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import PipelineConfig
from recsys.state import MissingStateError, StateDir

SPLITS: tuple[str, ...] = ("test", "validation")


@dataclass(frozen=True)
class EvalWindow:
    """One split's evaluation window and everything known before it."""

    state: StateDir
    dataset_version: str
    split: str
    items: pd.DataFrame
    events: pd.DataFrame
    history: pd.DataFrame
    window: pd.DataFrame
    users: list[str]
    relevant: dict[str, set[str]]
    seen: dict[str, set[str]]
    starts: pd.DataFrame
    store: Any
    snapshots: list[Any]  # the feature job's snapshot times (users reading the same ones share an index)


@dataclass(frozen=True)
class SystemRun:
    """A two-stage system's answers on a window: candidates with retrieval and ranker scores."""

    two_tower_version: str
    ranker_version: str
    candidates: pd.DataFrame  # user_id, item_id, retrieval_score, event_timestamp; best first per user
    # the ranker's slice of `candidates`, plus rank_score (raw, orders the list) and rank_probability
    # (calibrated P(engaged); NaN for a ranker trained before calibration)
    ranked: pd.DataFrame
    rankings: dict[str, dict[str, list[str]]]  # "retrieval" / "retrieval+ranking" -> user -> items


def load_window(config: PipelineConfig, dataset_version: str | None, split: str = "test") -> EvalWindow:
    """The judged users of `split` (test or validation) with their history, relevant items and start times.

    Validation is the window the ranker was trained on, so its figures flatter the ranker; it is there
    for model selection, the test window for reporting.

    Raises:
        ValueError: an unknown split, or a window without a single user with a positive event.
    """
    from evaluation.split import load_split
    from recsys.features.store import build_store
    from recsys.ingest.snapshot import load_dataset
    from training import examples as ex
    from training.candidates import floor_to_snapshots
    from training.stage import snapshot_grid

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    parts = load_split(state, version, config.split)
    dataset = load_dataset(state, version)
    if split == "test":
        history = pd.concat([parts.train, parts.validation], ignore_index=True)
        window = parts.test
    else:
        history, window = parts.train, parts.validation
    relevant = ex.items_by_user(ex.positives(window))
    users = sorted(relevant)
    if not users:
        raise ValueError(f"dataset {version} has no {split} users with a positive event: nothing to evaluate")
    starts = ex.window_starts(window[window["user_id"].astype(str).isin(users)])
    grid = snapshot_grid(dataset.events, config.features.snapshot_every_days)
    starts["event_timestamp"] = floor_to_snapshots(starts["event_timestamp"], grid)
    return EvalWindow(
        state=state,
        dataset_version=version,
        split=split,
        items=dataset.items,
        events=dataset.events,
        history=history,
        window=window,
        users=users,
        relevant=relevant,
        seen=ex.items_by_user(history),
        starts=starts,
        store=build_store(state, config.features),
        snapshots=grid,
    )


def require_trained_on(state: StateDir, versions: dict[str, str], dataset_version: str) -> None:
    """Refuse to score models on a dataset version they were not trained on: the split would not match
    the one their training saw, so the figures would mix training and test data.

    Args:
        versions: registered model name -> version.
    """
    from training.registry import model_version

    for model_name, version in versions.items():
        entry = model_version(state, model_name, version)
        trained_on = entry.tags.get("dataset_version")
        if trained_on != dataset_version:
            raise ValueError(
                f"{model_name} v{entry.version} was trained on dataset {trained_on}, not {dataset_version}: "
                f"train on {dataset_version} first, or evaluate with --dataset-version {trained_on}"
            )


def rankings_by_user(candidates: pd.DataFrame, score_column: str) -> dict[str, list[str]]:
    """Per user, candidate items sorted by `score_column`, best first (ties keep candidate order)."""
    out: dict[str, list[str]] = {}
    for user, rows in candidates.groupby("user_id", sort=False):
        order = np.argsort(-rows[score_column].to_numpy(), kind="stable")
        out[str(user)] = rows["item_id"].to_numpy()[order].tolist()
    return out


def score_system(
    config: PipelineConfig,
    window: EvalWindow,
    ref: str,
    n_candidates: int,
    progress: Any = None,
) -> SystemRun:
    """Retrieve `n_candidates` per judged user with the two-tower model of `ref`, and rank the first
    `ranker.n_candidates` with its ranker.

    Args:
        ref: an alias (`champion`, `challenger`) or a ranker version number (see
            `training.registry.resolve_system`).
        progress: called with a short message per step (a rich status's `update`), or None.

    Raises:
        MissingStateError: `ref` names no registered system.
        ValueError: the system was trained on another dataset version.
    """
    from recsys.features.store import historical_features
    from training.candidates import generate_candidates, ranker_inputs, sorted_by_user
    from training.examples import history_at_cut
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, load_model, resolve_system
    from training.runtime import RankingModel, RetrievalModel

    say = progress or (lambda message: None)
    tower_version, ranker_version = resolve_system(window.state, ref)
    require_trained_on(
        window.state, {TWO_TOWER_MODEL: tower_version, RANKER_MODEL: ranker_version}, window.dataset_version
    )
    retrieval = RetrievalModel.load(*load_model(window.state, TWO_TOWER_MODEL, tower_version))
    ranking = RankingModel.load(*load_model(window.state, RANKER_MODEL, ranker_version))
    say(f"{ref}: retrieval candidates at each user's window start")
    candidates = generate_candidates(
        retrieval,
        window.store,
        historical_features,
        window.starts,
        window.seen,
        n_candidates,
        progress=lambda message: say(f"{ref}: {message}"),
        histories=history_at_cut(window.history, window.users, retrieval.history_length),
        snapshots=window.snapshots,
    )
    candidates = sorted_by_user(candidates)
    say(f"{ref}: ranker features for the candidates")
    ranked = candidates.groupby("user_id", sort=False).head(config.ranker.n_candidates).reset_index(drop=True)
    # The ranker's item-kNN signal as of the window start: neighbours and likes from the history only.
    knn = ranking.as_of(window.history).item_knn
    matrix, _, _ = ranker_inputs(window.store, historical_features, ranked, ranking.feature_service, knn)
    raw = ranking.predict_matrix(matrix)
    # Rankers trained before calibration have no probabilities: NaN, and the gate says so.
    probability = ranking.probabilities(raw) if ranking.calibrated else np.full(len(raw), np.nan)
    ranked = ranked.assign(rank_score=raw, rank_probability=probability)
    if not len(candidates):
        raise MissingStateError(f"system {ref!r} retrieved no candidates for any user")
    return SystemRun(
        two_tower_version=tower_version,
        ranker_version=ranker_version,
        candidates=candidates,
        ranked=ranked,
        rankings={
            "retrieval": rankings_by_user(candidates, "retrieval_score"),
            "retrieval+ranking": rankings_by_user(ranked, "rank_score"),
        },
    )
