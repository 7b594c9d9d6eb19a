"""Offline replay: the serving stages themselves (retrieval -> ranking -> re-ranking) over the judged users.

`serving.stages.RetrievalStage` and `RankingStage` run unchanged, in this process, without Ray Serve;
only two things differ from live serving, both so the replay answers as serving would have at each
user's window start:

- features come from a `PointInTimeReader` (Feast historical reads at the user's window start, fetched
  in bulk) instead of the online store, which already holds the window being judged;
- the retriever excludes the user's history before the window (`AsOfRetrieval`), not everything the
  user has ever seen, which would include the very items being judged;
- the popularity fallback of users the model does not know (cold start) counts the history before the
  window, not the model's stored list, which counts every event of the dataset, the window's included.

`serving_latency` is the other use of the same stages: the live path with online features, timed per
request, for the gate's latency check.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evaluation.harness import EvalWindow
from recsys.config import PipelineConfig

USER_KEY = "user_id"
ITEM_KEY = "item_id"
TS = "event_timestamp"


class PointInTimeReader:
    """A serving `FeatureReader` answering from Feast historical reads at each user's window start.

    `prefetch` reads many rows in one call (a historical read costs seconds however few rows it asks
    for); a call for rows not prefetched reads them on the spot, so a stage asking for a feature service
    the replay did not expect still gets point-in-time values.
    """

    def __init__(self, store: Any, read: Any, starts: Mapping[str, Any]) -> None:
        self._store = store
        self._read = read
        self._starts = starts
        self._cache: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        self.reads = 0

    @staticmethod
    def _key(row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(row[k]) for k in (USER_KEY, ITEM_KEY) if k in row)

    def prefetch(self, service: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Read `rows` (user_id and maybe item_id) of `service` as of each user's start, into the cache."""
        wanted = [r for r in rows if (service, self._key(r)) not in self._cache]
        if not wanted:
            return
        keys = [k for k in (USER_KEY, ITEM_KEY) if k in wanted[0]]
        entity = pd.DataFrame({k: [str(r[k]) for r in wanted] for k in keys})
        # Unknown users (the warm-up probe) are read as of the earliest start: they have no features anyway.
        fallback = min(self._starts.values())
        entity[TS] = pd.to_datetime([self._starts.get(u, fallback) for u in entity[USER_KEY]], utc=True)
        found = self._read(self._store, entity, service).drop(columns=[TS])
        self.reads += 1
        for record in found.to_dict(orient="records"):
            self._cache[(service, self._key(record))] = record

    def __call__(self, service: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
        self.prefetch(service, rows)
        return pd.DataFrame([self._cache[(service, self._key(r))] for r in rows])


class AsOfRetrieval:
    """The retrieval model as of a window start: searches the item index as of that start (given with
    `with model.as_of(index):` per start time) and excludes only the items of the user's earlier history.

    A user tower that reads recent positive items gets them as of the window start too (``recent``,
    from `training.examples.history_at_cut`), not the model's stored ones, which may hold the window.
    So does the popularity fallback (``popularity``, (item, score) best first, from
    `training.examples.popularity` over the history), when given. Delegates everything else to the
    served model (same weights).
    """

    def __init__(
        self,
        model: Any,
        history: Mapping[str, set[str]],
        recent: Mapping[str, Sequence[str]] | None = None,
        popularity: Sequence[tuple[str, float]] | None = None,
    ) -> None:
        self._model = model
        self._history = history
        self._recent = recent or {}
        self._popularity = None if popularity is None else list(popularity)
        self._row = {item: row for row, item in enumerate(model.catalog)}
        # The saved index describes items as of the end of training: searching it for an earlier window
        # would describe items with features from after the moment judged.
        self._index: Any = None

    @contextlib.contextmanager
    def as_of(self, index: Any) -> Iterator[None]:
        """Search `index` inside the block; outside any block, retrieval refuses to use a stale one."""
        self._index = index
        try:
            yield
        finally:
            self._index = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @property
    def version(self) -> str:
        return str(self._model.version)

    def knows_user(self, user_id: str) -> bool:
        return bool(self._model.knows_user(user_id))

    def popular(self, n: int) -> tuple[list[str], np.ndarray]:
        if self._popularity is None:
            ids, scores = self._model.popular(n)
            return list(ids), np.asarray(scores)
        top = self._popularity[:n]
        return [item for item, _ in top], np.array([score for _, score in top], dtype=np.float32)

    def embed_users(
        self, user_ids: list[str], features: pd.DataFrame, histories: Sequence[Sequence[str]] | None = None
    ) -> np.ndarray:
        if not getattr(self._model, "history_length", 0):
            return np.asarray(self._model.embed_users(user_ids, features))
        chosen = histories if histories is not None else [self._recent.get(u, ()) for u in user_ids]
        return np.asarray(self._model.embed_users(user_ids, features, chosen))

    def retrieve(
        self, user_id: str, user_features: Mapping[str, Any], n: int
    ) -> tuple[list[str], np.ndarray]:
        query = self.embed_users([user_id], pd.DataFrame([dict(user_features)]))  # (1, dim)
        banned = {self._row[i] for i in self._history.get(user_id, ()) if i in self._row}
        if self._index is None:
            raise RuntimeError("AsOfRetrieval.retrieve runs only inside `with model.as_of(index):`")
        ids, scores = self._index.search(query, n, exclude=[banned])
        keep = ids[0] >= 0
        return [self._model.catalog[r] for r in ids[0][keep]], scores[0][keep]


@dataclass(frozen=True)
class ReplayRun:
    rankings: dict[str, list[str]]
    fallbacks: dict[str, int]  # fallback reason -> number of users answered that way
    two_tower_version: str
    ranker_version: str


def _stages(
    config: PipelineConfig,
    state: Any,
    ref: str,
    reader: Any,
    history: Mapping[str, set[str]] | None,
    history_events: pd.DataFrame | None = None,
) -> Any:
    """The serving stages for the system `ref`, built as serving builds them, over `reader`."""
    from serving.reranking import ItemVectors
    from serving.stages import RankingStage, RetrievalStage
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, load_model, resolve_system
    from training.runtime import RankingModel, RetrievalModel

    tower_version, ranker_version = resolve_system(state, ref)
    tower = RetrievalModel.load(*load_model(state, TWO_TOWER_MODEL, tower_version))
    ranker = RankingModel.load(*load_model(state, RANKER_MODEL, ranker_version))
    rerank = config.serve.rerank
    vectors = (
        ItemVectors([str(i) for i in tower.catalog], tower.item_embeddings)
        if rerank.enabled and rerank.mmr_lambda < 1.0
        else None
    )
    recent = None
    popularity = None
    if history_events is not None:
        from training.examples import history_at_cut
        from training.examples import popularity as count_popularity

        # The stored list counts the whole dataset, the judged window too: cold-start users would be
        # served items popular because of the very events being judged.
        popularity = count_popularity(history_events)
        # Item-kNN neighbours and likes as of the window start, not the served ones (they hold the window).
        ranker = ranker.as_of(history_events)
        if tower.history_length:
            users = history_events["user_id"].astype(str).unique()
            recent = history_at_cut(history_events, users, tower.history_length)
    model = AsOfRetrieval(tower, history, recent, popularity) if history is not None else tower
    retrieval = RetrievalStage(model, reader, str(tower.feature_service))
    ranking = RankingStage(ranker, reader, rerank, vectors)
    return retrieval, ranking, tower_version, ranker_version


def run_replay(config: PipelineConfig, window: EvalWindow, ref: str, k: int) -> ReplayRun:
    """Every judged user's top `k` as the serving stages answer it at the user's window start."""
    from recsys.features.store import historical_features
    from training.candidates import item_indexes_over

    starts = dict(zip(window.starts["user_id"].astype(str), window.starts["event_timestamp"], strict=True))
    reader = PointInTimeReader(window.store, historical_features, starts)
    retrieval, ranking, tower_version, ranker_version = _stages(
        config, window.state, ref, reader, window.seen, window.history
    )
    n = max(config.serve.n_candidates, k)
    reader.prefetch(str(retrieval.model.feature_service), [{USER_KEY: u} for u in window.users])
    users_at = window.starts.assign(user_id=window.starts["user_id"].astype(str))
    users_at = users_at[users_at["user_id"].isin(set(map(str, window.users)))]
    first: dict[str, Any] = {}
    times = list(users_at["event_timestamp"].unique())
    for when, index in item_indexes_over(
        retrieval.model, window.store, historical_features, times, snapshots=window.snapshots
    ):
        with retrieval.model.as_of(index):
            for user in users_at.loc[users_at["event_timestamp"] == when, "user_id"]:
                first[user] = retrieval.candidates(user, n, k)
    for user in map(str, window.users):  # users without a window start (none expected) get the fallback
        if user not in first:
            first[user] = retrieval.candidates(user, n, k)
    pairs = [
        {USER_KEY: u, ITEM_KEY: i} for u, c in first.items() if c.fallback_reason is None for i in c.item_ids
    ]
    if pairs:
        reader.prefetch(ranking.model.feature_service, pairs)
    rankings: dict[str, list[str]] = {}
    fallbacks: dict[str, int] = {}
    for user, candidates in first.items():
        if candidates.fallback_reason is None:
            candidates = ranking.rank(user, candidates)
        else:
            fallbacks[candidates.fallback_reason] = fallbacks.get(candidates.fallback_reason, 0) + 1
        rankings[user] = list(candidates.item_ids[:k])
    return ReplayRun(rankings, fallbacks, tower_version, ranker_version)


def serving_latency(config: PipelineConfig, ref: str, users: Sequence[str], k: int) -> np.ndarray:
    """Milliseconds per request of the live in-process path (online features) for `users`, after warm-up."""
    from functools import partial

    from recsys.features.store import build_store, online_features
    from recsys.state import StateDir

    state = StateDir(config.state_dir)
    reader = partial(online_features, build_store(state, config.features))
    retrieval, ranking, _, _ = _stages(config, state, ref, reader, None)
    retrieval.warm_up()
    ranking.warm_up()
    n = max(config.serve.n_candidates, k)
    timings = []
    for user in [users[0], *users]:  # the first request pays for lazy imports and caches: not counted
        started = time.perf_counter()
        candidates = retrieval.candidates(user, n, k)
        if candidates.fallback_reason is None:
            ranking.rank(user, candidates)
        timings.append((time.perf_counter() - started) * 1000)
    return np.asarray(timings[1:])
