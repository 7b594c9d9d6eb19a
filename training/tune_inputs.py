"""What a tuning trial trains on, prepared once per search: the two-tower examples of the train and
validation positives, or the multi-task ranker's rows over the champion retriever's candidates.

Both follow `recsys train`'s protocol (training/stage.py) with the same building blocks; a user sample
(sample-first tuning) keeps the train and validation events of a seeded subset of the split's users,
chosen as `ingest.sample_users` chooses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import PipelineConfig
from recsys.state import StateDir
from training.retrieval import TwoTowerExamples


@dataclass(frozen=True)
class RetrievalInputs:
    """Two-tower examples and the vocabulary sizes a model of any tuned width needs."""

    train: TwoTowerExamples
    validation: TwoTowerExamples
    n_users: int
    n_items: int
    content_dim: int


@dataclass(frozen=True)
class RankerRows:
    """Multi-task ranker rows: features, (n, n_tasks) labels, rows per user (contiguous)."""

    features: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray


@dataclass(frozen=True)
class SplitSample:
    train: pd.DataFrame
    validation: pd.DataFrame
    n_users: int


def sample_split(split: Any, n_users: int | None, seed: int) -> SplitSample:
    """The train and validation events of ``n_users`` users of the train window (all when None)."""
    from recsys.ingest.movielens import sample_user_ids

    keep = sample_user_ids(split.train["user_id"], n_users, seed)
    train = split.train[split.train["user_id"].astype(str).isin(keep)]
    validation = split.validation[split.validation["user_id"].astype(str).isin(keep)]
    return SplitSample(train, validation, len(keep))


def retrieval_inputs(
    config: PipelineConfig, state: StateDir, version: str, n_users: int | None
) -> RetrievalInputs:
    """Point-in-time two-tower examples of the (sampled) train and validation positives."""
    from evaluation.split import load_split
    from recsys.features.store import build_store, historical_features
    from recsys.ingest.snapshot import load_dataset
    from training import examples as ex
    from training.runtime import ITEM_CONTENT_FEATURE_SERVICE, TWO_TOWER_FEATURE_SERVICE, ItemContent
    from training.stage import _histories, _with_ts, uses_content

    sample = sample_split(load_split(state, version, config.split.method), n_users, config.tune.seed)
    dataset = load_dataset(state, version)
    store = build_store(state, config.features)
    train_pos, val_pos = ex.positives(sample.train), ex.positives(sample.validation)
    if len(train_pos) < 2 or val_pos.empty:
        raise ValueError(
            f"{sample.n_users} users hold {len(train_pos)} train and {len(val_pos)} validation positives: "
            "too few to tune on (sample more users)"
        )
    users, items = ex.vocabulary(train_pos["user_id"]), ex.vocabulary(train_pos["item_id"])
    content: ItemContent | None = None
    if uses_content(config):
        catalog = sorted(dataset.items["item_id"].astype(str))
        latest = pd.to_datetime(dataset.events["event_ts"], utc=True).max() + timedelta(days=1)
        rows = pd.DataFrame({"item_id": catalog, "event_timestamp": latest})
        content_rows = historical_features(store, rows, ITEM_CONTENT_FEATURE_SERVICE)
        content = ItemContent.from_rows(content_rows) or None
    columns = ["user_id", "item_id"]
    n = config.two_tower.history_length
    train_rows = historical_features(store, _with_ts(train_pos, columns), TWO_TOWER_FEATURE_SERVICE)
    val_rows = historical_features(store, _with_ts(val_pos, columns), TWO_TOWER_FEATURE_SERVICE)
    train_history = _histories([sample.train], train_rows, n)
    val_history = _histories([sample.train, sample.validation], val_rows, n)
    return RetrievalInputs(
        train=ex.two_tower_examples(train_rows, users, items, content, train_history, n),
        validation=ex.two_tower_examples(val_rows, users, items, content, val_history, n),
        n_users=len(users),
        n_items=len(items),
        content_dim=0 if content is None else content.dim,
    )


def ranker_rows(config: PipelineConfig, state: StateDir, version: str, n_users: int | None) -> RankerRows:
    """The champion retriever's candidates for the (sampled) validation users at their window start,
    with `ranker.feature_service` features and click/satisfaction labels from the validation window."""
    from evaluation.split import load_split
    from recsys.features.store import build_store, historical_features
    from recsys.ingest.snapshot import load_dataset
    from training import examples as ex
    from training.candidates import floor_to_snapshots, generate_candidates, ranker_inputs, sorted_by_user
    from training.multitask_train import task_labels
    from training.registry import TWO_TOWER_MODEL, load_champion
    from training.runtime import RetrievalModel
    from training.stage import snapshot_grid

    sample = sample_split(load_split(state, version, config.split.method), n_users, config.tune.seed)
    dataset = load_dataset(state, version)
    store = build_store(state, config.features)
    directory, tower_version = load_champion(state, TWO_TOWER_MODEL)
    retrieval = RetrievalModel.load(directory, tower_version)
    val_pos = ex.positives(sample.validation)
    starts = ex.window_starts(sample.validation[sample.validation["user_id"].isin(val_pos["user_id"])])
    if starts.empty:
        raise ValueError(f"{sample.n_users} users hold no validation positives: too few to tune on")
    grid = snapshot_grid(dataset.events, config.features.snapshot_every_days)
    starts["event_timestamp"] = floor_to_snapshots(starts["event_timestamp"], grid)
    history = retrieval.model_config.history_length
    candidates = generate_candidates(
        retrieval,
        store,
        historical_features,
        starts,
        ex.items_by_user(sample.train),
        config.ranker.n_candidates,
        histories=ex.history_at_cut(sample.train, starts["user_id"], history),
    )
    candidates = sorted_by_user(candidates)
    features, sizes, _ = ranker_inputs(store, historical_features, candidates, config.ranker.feature_service)
    labels = task_labels(candidates, sample.validation, dataset.items)
    return RankerRows(features=features, labels=labels, sizes=np.asarray(sizes, dtype=np.int64))
