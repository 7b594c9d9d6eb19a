"""Pure data preparation for training: positives, id vocabularies, window starts, labels, popularity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from recsys.ingest.leakage import check_feature_rows
from recsys.vocab import POSITIVE_EVENT_TYPES
from training.retrieval import TwoTowerExamples
from training.runtime import ItemContent, _epoch_us, item_dense_from_frame, user_dense_from_frame
from training.two_tower import pad_history


def positives(events: pd.DataFrame) -> pd.DataFrame:
    """The positive events (like, save, purchase): what the models learn to recommend."""
    return events[events["event_type"].isin(POSITIVE_EVENT_TYPES)].reset_index(drop=True)


def vocabulary(ids: pd.Series) -> list[str]:
    """Sorted distinct ids; id i gets embedding row i + 1 (row 0 is for unknown ids)."""
    return sorted({str(i) for i in ids})


def lookup(ids: pd.Series, vocab: list[str]) -> np.ndarray:
    """Embedding rows for ids: 1 + position in `vocab`, 0 when absent."""
    rows = {item: row + 1 for row, item in enumerate(vocab)}
    return np.array([rows.get(str(i), 0) for i in ids], dtype=np.int64)


def recent_positive_items(events: pd.DataFrame, at: pd.DataFrame, n: int) -> list[list[str]]:
    """Per row of ``at``, the user's last ``n`` positive items strictly before its time, oldest first.

    The user tower's history input, the one definition training, evaluation and serving share: an event
    at the same instant as the row, or later, is never in it (a training example does not see itself).
    Events at the same instant keep the order of ``events``; an item liked twice counts twice.

    Args:
        events: columns user_id, item_id, event_type, event_ts (only like/save/purchase count).
        at: columns user_id and event_timestamp, one row per history wanted.
        n: how many items at most; 0 gives empty histories.

    Returns:
        One list of item ids per row of ``at``, in its order.
    """
    out: list[list[str]] = [[] for _ in range(len(at))]
    if n <= 0 or not len(at):
        return out
    pos = positives(events)
    if not len(pos):
        return out
    times = _epoch_us(pd.to_datetime(pos["event_ts"], utc=True))
    query_times = _epoch_us(pd.to_datetime(at["event_timestamp"], utc=True))
    # One sort key (user code, time rank) for events and rows alike, then one binary search for every
    # row: a loop over users that scanned every row cost users x rows (a 1M-user train sat in it for
    # over 12 minutes).
    codes, _ = pd.factorize(
        np.concatenate([pos["user_id"].astype(str).to_numpy(), at["user_id"].astype(str).to_numpy()])
    )
    grid = np.unique(np.concatenate([times, query_times]))
    width = len(grid) + 1
    keys = codes[: len(pos)].astype(np.int64) * width + np.searchsorted(grid, times)
    order = np.argsort(keys, kind="stable")  # by user, then time; same-instant events keep their order
    keys, items = keys[order], pos["item_id"].astype(str).to_numpy()[order]
    user_code = codes[len(pos) :].astype(np.int64)
    firsts = np.searchsorted(keys, user_code * width, side="left")  # the user's first event
    ends = np.searchsorted(keys, user_code * width + np.searchsorted(grid, query_times), side="left")
    for row in np.flatnonzero(ends > firsts):  # first event at or after the row's time, exclusive
        end = int(ends[row])
        out[row] = items[max(int(firsts[row]), end - n) : end].tolist()
    return out


def history_at_cut(events: pd.DataFrame, users: Iterable[str], n: int) -> dict[str, list[str]]:
    """Each user's last ``n`` positive items among ``events`` (everything known at a cut: a split's
    earlier windows, or the whole log a model is trained on), oldest first."""
    ids = [str(u) for u in users]
    if not len(events):
        return {u: [] for u in ids}
    after = pd.to_datetime(events["event_ts"], utc=True).max() + pd.Timedelta(microseconds=1)
    found = recent_positive_items(events, pd.DataFrame({"user_id": ids, "event_timestamp": after}), n)
    return dict(zip(ids, found, strict=True))


def two_tower_examples(
    rows: pd.DataFrame,
    users: list[str],
    items: list[str],
    content: ItemContent | None = None,
    history: list[list[str]] | None = None,
    history_length: int = 0,
) -> TwoTowerExamples:
    """Model inputs from positive events joined with their point-in-time `two_tower_v1` features, and
    with each item's content embedding where it was known at the event (when ``content`` is given).

    ``history`` (from :func:`recent_positive_items`, aligned with ``rows``) becomes the user tower's
    (n, history_length) matrix of item rows; items without an ID row are padding.

    Raises:
        LeakageError: a feature row's snapshot is newer than its example (or the rows do not say when
            their features are from): the run stops rather than train on the future.
    """
    check_feature_rows(rows)
    history_rows = None
    if history is not None and history_length > 0:
        rows_of = {item: row + 1 for row, item in enumerate(items)}
        history_rows = pad_history([[rows_of.get(i, 0) for i in h] for h in history], history_length)
    return TwoTowerExamples(
        user_idx=lookup(rows["user_id"], users),
        user_dense=user_dense_from_frame(rows),
        item_idx=lookup(rows["item_id"], items),
        item_dense=item_dense_from_frame(
            rows, None if content is None else content.rows(rows["item_id"], as_of=rows["event_timestamp"])
        ),
        history=history_rows,
    )


def window_starts(events: pd.DataFrame) -> pd.DataFrame:
    """Per user, the time of the first event of a window: columns user_id, event_timestamp."""
    starts = events.groupby("user_id", sort=True)["event_ts"].min()
    return pd.DataFrame({"user_id": starts.index.astype(str), "event_timestamp": starts.to_numpy()})


def sample_window(window: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """The window's events of at most `max_users` of its users with a positive (a seeded draw), or the
    whole window when it has no more than that (or `max_users` is None).

    >>> w = pd.DataFrame({"user_id": ["a", "b", "b", "c"], "event_type": ["like", "view", "like", "like"]})
    >>> len(sample_window(w, 5, 0))
    4
    >>> sampled = sample_window(w, 2, 0)  # b keeps its view beside its like
    >>> sorted(set(sampled["user_id"])), len(sampled)
    (['b', 'c'], 3)
    """
    users = sorted(set(positives(window)["user_id"].astype(str)))
    if max_users is None or len(users) <= max_users:
        return window
    chosen = set(np.random.default_rng(seed).choice(users, size=max_users, replace=False).tolist())
    return window[window["user_id"].astype(str).isin(chosen)]


def items_by_user(events: pd.DataFrame) -> dict[str, set[str]]:
    """The set of items each user has an event for."""
    return {str(u): set(map(str, g)) for u, g in events.groupby("user_id", sort=False)["item_id"]}


def candidate_labels(candidates: pd.DataFrame, relevant: Mapping[str, set[str]]) -> np.ndarray:
    """1 where the candidate item is a positive of its user in the judged window, else 0."""
    return np.fromiter(
        (
            item in relevant.get(user, ())
            for user, item in zip(candidates["user_id"], candidates["item_id"], strict=True)
        ),
        dtype=np.float32,
        count=len(candidates),
    )


def popularity(events: pd.DataFrame) -> list[tuple[str, float]]:
    """Items by number of positive events, most first (ties by item id, for determinism)."""
    counts = positives(events)["item_id"].astype(str).value_counts()
    frame = pd.DataFrame({"item_id": counts.index, "n": counts.to_numpy()}).sort_values(
        ["n", "item_id"], ascending=[False, True], kind="stable"
    )
    return [(str(i), float(n)) for i, n in zip(frame["item_id"], frame["n"], strict=True)]
