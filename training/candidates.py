"""Candidates and ranker rows for users at a point in time, with features from Feast.

Training (validation window) and evaluation (test window) both go through these functions, so the
ranker is trained on exactly the kind of rows it is evaluated on. Every feature is read point-in-time at
the start of the user's window; item embeddings are recomputed per snapshot time for the same reason,
so neither retrieval nor ranking sees popularity from the window it is judged on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from training.index import ItemIndex
from training.item_knn_signal import ItemKNNSignal
from training.ranker_features import (
    RANKER_FEATURE_SERVICE,
    USER_COLUMNS,
    build_ranker_matrix,
    ranker_columns,
)
from training.runtime import TWO_TOWER_FEATURE_SERVICE, RetrievalModel

# historical_features(store, entity_df, service_name) -> entity_df columns + the service's features.
FeatureReader = Callable[[Any, pd.DataFrame, str], pd.DataFrame]
TS = "event_timestamp"
ITEM_ROWS_PER_READ = 200_000


def floor_to_snapshots(times: pd.Series, snapshots: list[datetime]) -> pd.Series:
    """Each time moved back to the newest snapshot at or before it (the earliest time if none).

    A point-in-time read at the floored time returns the same features as at the original time, and
    users sharing a snapshot then share one set of item embeddings.
    """
    grid = pd.to_datetime(pd.Series(sorted(snapshots)), utc=True).to_numpy()
    values = pd.to_datetime(times, utc=True).to_numpy()
    pos = np.searchsorted(grid, values, side="right") - 1
    floored = np.where(pos >= 0, grid[np.clip(pos, 0, None)], values)
    return pd.Series(pd.to_datetime(floored, utc=True), index=times.index)


def index_read_times(times: pd.Series, snapshots: Sequence[datetime]) -> pd.Series:
    """The time each time's item index is built from: its snapshot, one shared time before the first.

    From the first snapshot on, a time reads the item features of the newest snapshot at or before it.
    Before the first snapshot no item has batch features yet, so every such time reads the same empty
    rows: they all share the earliest of them, and one item index serves them all (a 1M-user log whose
    windows open inside the first snapshot interval would otherwise build one index per user). Only the
    index is shared: candidates keep each user's own time, so request-time values stay exact.
    """
    times = pd.to_datetime(times, utc=True)
    if not len(snapshots):
        return pd.Series(times.min(), index=times.index)
    floored = floor_to_snapshots(times, list(snapshots))
    before = floored < min(pd.to_datetime(pd.Series(snapshots), utc=True))
    return floored.where(~before, floored[before].min()) if before.any() else floored


def item_indexes_over(
    model: RetrievalModel,
    store: Any,
    read: FeatureReader,
    times: Sequence[Any],
    progress: Callable[[str], None] | None = None,
    snapshots: Sequence[datetime] | None = None,
) -> Iterator[tuple[Any, ItemIndex]]:
    """The item index as of each time, oldest first: item embeddings from item features read at that time.

    The one way to retrieve "as of t": candidate generation and the offline replay of the serving stages
    both go through it, so an item is never described with features from after the moment judged.
    With the feature job's `snapshots`, times that read the same item features share one index
    (`index_read_times`); without, every distinct time builds its own.
    """
    catalog = model.catalog
    ordered = sorted(set(times))
    if snapshots is None:
        read_at = dict(zip(ordered, ordered, strict=True))
    else:
        shared = index_read_times(pd.Series(pd.to_datetime(ordered, utc=True)), snapshots)
        read_at = dict(zip(ordered, shared, strict=True))
    reads = sorted(set(read_at.values()))
    position = {t: step for step, t in enumerate(reads)}
    per_call = max(1, ITEM_ROWS_PER_READ // max(len(catalog), 1))
    item_rows_at: dict[Any, pd.DataFrame] = {}

    def item_rows(step: int) -> pd.DataFrame:
        if reads[step] not in item_rows_at:
            # One feature read covers several times: each read has a fixed cost of seconds.
            batch = reads[step : step + per_call]
            entity = pd.DataFrame({"item_id": catalog * len(batch), TS: np.repeat(batch, len(catalog))})
            rows = read(store, entity, TWO_TOWER_FEATURE_SERVICE)
            for j, t in enumerate(batch):
                item_rows_at[t] = rows.iloc[j * len(catalog) : (j + 1) * len(catalog)].reset_index(drop=True)
        return item_rows_at.pop(reads[step])

    built: tuple[Any, ItemIndex] | None = None
    for when in ordered:
        key = read_at[when]
        if built is None or built[0] != key:
            if progress:
                progress(f"candidates: item index {position[key] + 1}/{len(reads)}")
            embeddings = model.embed_items(catalog, item_rows(position[key]))
            built = (key, ItemIndex.build(embeddings, np.arange(len(catalog))))
        yield when, built[1]


def generate_candidates(
    model: RetrievalModel,
    store: Any,
    read: FeatureReader,
    users_at: pd.DataFrame,
    exclude: Mapping[str, set[str]],
    n: int,
    progress: Callable[[str], None] | None = None,
    histories: Mapping[str, Sequence[str]] | None = None,
    snapshots: Sequence[datetime] | None = None,
) -> pd.DataFrame:
    """Top-n retrieval candidates per user, with user and item features as of each user's time.

    Args:
        model: the trained retriever.
        store, read: the feature store and its point-in-time reader (historical_features).
        users_at: columns user_id and event_timestamp (already floored to snapshot times).
        exclude: items never to return per user (what the user saw before the window).
        n: candidates per user.
        histories: per user, the recent positive items before the window (oldest first) for a model
            whose user tower reads them; None gives every user an empty one, never the model's stored
            history, which may hold the very window judged.
        snapshots: the feature job's snapshot times, so that users whose times read the same item
            features share one item index (see `item_indexes_over`); None builds one per distinct time.

    Returns:
        Columns user_id, item_id, retrieval_score, event_timestamp; per user best first.
    """
    catalog = model.catalog
    user_rows = read(store, users_at[["user_id", TS]].reset_index(drop=True), TWO_TOWER_FEATURE_SERVICE)
    user_ids = [str(u) for u in users_at["user_id"]]
    history = [list((histories or {}).get(u, ())) for u in user_ids] if model.history_length else None
    user_emb = model.embed_users(user_ids, user_rows, history)  # (n_users, dim)
    frames = []
    row_of = {item: i for i, item in enumerate(catalog)}
    times = list(users_at[TS].unique())
    for when, index in item_indexes_over(model, store, read, times, progress, snapshots):
        mask = (users_at[TS] == when).to_numpy()
        users = list(users_at["user_id"][mask])
        banned = [{row_of[i] for i in exclude.get(u, set()) if i in row_of} for u in users]
        ids, scores = index.search(user_emb[mask], n, exclude=banned)  # (users, n) each
        for user, id_row, score_row in zip(users, ids, scores, strict=True):
            keep = id_row >= 0
            frames.append(
                pd.DataFrame(
                    {
                        "user_id": user,
                        "item_id": [catalog[r] for r in id_row[keep]],
                        "retrieval_score": score_row[keep],
                        TS: pd.Timestamp(when),
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=["user_id", "item_id", "retrieval_score", TS])
    return pd.concat(frames, ignore_index=True)


def window_candidates(
    model: RetrievalModel,
    store: Any,
    read: FeatureReader,
    history: pd.DataFrame,
    window: pd.DataFrame,
    grid: list[datetime],
    n: int,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ranker's training candidates: for each user with a positive in `window`, the top-n items at
    the user's window start (floored to the snapshot `grid`), never an item of the user's `history`, the
    model's history input as of that history.

    Returns:
        (candidates grouped by user as `sorted_by_user` orders them, the users' start times).
    """
    from training import examples as ex

    positives = ex.positives(window)
    starts = ex.window_starts(window[window["user_id"].isin(positives["user_id"])])
    starts["event_timestamp"] = floor_to_snapshots(starts["event_timestamp"], grid)
    candidates = generate_candidates(
        model,
        store,
        read,
        starts,
        ex.items_by_user(history),
        n,
        progress=progress,
        histories=ex.history_at_cut(history, starts["user_id"], model.history_length),
        snapshots=grid,
    )
    return sorted_by_user(candidates), starts


def ranker_inputs(
    store: Any,
    read: FeatureReader,
    candidates: pd.DataFrame,
    service: str = RANKER_FEATURE_SERVICE,
    item_knn: ItemKNNSignal | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Ranker matrix for candidate rows (grouped by user), with `service`'s features at each row's time.

    ``item_knn``, fitted on the events before the candidates' window, adds its columns (a ranker trained
    with the signal); None leaves them out.

    Returns:
        (n_rows, n_features) float32 matrix, group sizes, and the users in group order; rows keep the
        order of `candidates` sorted stably by user.
    """
    if candidates.empty:
        empty = np.zeros((0, len(ranker_columns(service, item_knn is not None))), dtype=np.float32)
        return empty, np.zeros(0, dtype=np.int64), []
    users = list(dict.fromkeys(candidates["user_id"]))
    group = candidates["user_id"].map({u: g for g, u in enumerate(users)}).to_numpy()
    order = np.argsort(group, kind="stable")
    rows = candidates.iloc[order].reset_index(drop=True)
    features = read(store, rows[["user_id", "item_id", TS]], service).reset_index(drop=True)
    if len(features) != len(rows):
        raise ValueError(f"feature store returned {len(features)} rows for {len(rows)} candidates")
    sizes = np.bincount(group[order], minlength=len(users))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    user_columns = [c for c in USER_COLUMNS if c in features.columns]
    scores = rows["retrieval_score"].to_numpy(dtype=np.float32)
    blocks = []
    for g in range(len(users)):
        block = features.iloc[offsets[g] : offsets[g + 1]]
        user_row = block.iloc[0][user_columns].to_dict() if len(block) else {}
        knn = None
        if item_knn is not None:
            knn = item_knn.scores(
                users[g], rows["item_id"].iloc[offsets[g] : offsets[g + 1]].astype(str).tolist()
            )
        blocks.append(
            build_ranker_matrix(
                user_row, block, scores[offsets[g] : offsets[g + 1]], service, item_knn_scores=knn
            )
        )
    return np.concatenate(blocks).astype(np.float32), sizes.astype(np.int64), users


def sorted_by_user(candidates: pd.DataFrame) -> pd.DataFrame:
    """Candidates with each user's rows contiguous, users in first-appearance order (ranker_inputs' order)."""
    users = {u: g for g, u in enumerate(dict.fromkeys(candidates["user_id"]))}
    order = np.argsort(candidates["user_id"].map(users).to_numpy(), kind="stable")
    return candidates.iloc[order].reset_index(drop=True)
