"""What a tuning trial trains on, prepared once per search: the two-tower examples of the train and
validation positives, or the multi-task ranker's rows over the champion retriever's candidates.

Both follow `recsys train`'s protocol (training/stage.py) with the same building blocks; a user sample
(sample-first tuning) keeps the train and validation events of a seeded subset of the split's users,
chosen as `ingest.sample_users` chooses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import PipelineConfig
from recsys.state import StateDir
from training.two_tower_inputs import TwoTowerInputs, two_tower_inputs


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
) -> TwoTowerInputs:
    """Point-in-time two-tower examples of the (sampled) train and validation positives, built as
    `recsys train` builds them."""
    from evaluation.split import load_split
    from recsys.features.store import build_store
    from recsys.ingest.snapshot import load_dataset
    from training import examples as ex

    sample = sample_split(load_split(state, version, config.split), n_users, config.tune.seed)
    n_train, n_val = len(ex.positives(sample.train)), len(ex.positives(sample.validation))
    if n_train < 2 or n_val == 0:
        raise ValueError(
            f"{sample.n_users} users hold {n_train} train and {n_val} validation positives: "
            "too few to tune on (sample more users)"
        )
    dataset = load_dataset(state, version)
    store = build_store(state, config.features)
    return two_tower_inputs(config, store, dataset, sample.train, sample.validation)


def ranker_rows(config: PipelineConfig, state: StateDir, version: str, n_users: int | None) -> RankerRows:
    """The champion retriever's candidates for the (sampled) validation users at their window start,
    with `ranker.feature_service` features and click/satisfaction labels from the validation window."""
    from evaluation.split import load_split
    from recsys.features.store import build_store, historical_features
    from recsys.ingest.snapshot import load_dataset
    from training import examples as ex
    from training.candidates import ranker_inputs, window_candidates
    from training.multitask_train import task_labels
    from training.registry import TWO_TOWER_MODEL, load_champion
    from training.runtime import RetrievalModel
    from training.stage import snapshot_grid

    sample = sample_split(load_split(state, version, config.split), n_users, config.tune.seed)
    dataset = load_dataset(state, version)
    store = build_store(state, config.features)
    directory, tower_version = load_champion(state, TWO_TOWER_MODEL)
    retrieval = RetrievalModel.load(directory, tower_version)
    if ex.positives(sample.validation).empty:
        raise ValueError(f"{sample.n_users} users hold no validation positives: too few to tune on")
    grid = snapshot_grid(dataset.events, config.features.snapshot_every_days)
    candidates, _ = window_candidates(
        retrieval,
        store,
        historical_features,
        sample.train,
        sample.validation,
        grid,
        config.ranker.n_candidates,
    )
    features, sizes, _ = ranker_inputs(store, historical_features, candidates, config.ranker.feature_service)
    labels = task_labels(candidates, sample.validation, dataset.items)
    return RankerRows(features=features, labels=labels, sizes=np.asarray(sizes, dtype=np.int64))
