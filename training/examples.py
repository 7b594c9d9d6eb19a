"""Pure data preparation for training: positives, id vocabularies, window starts, labels, popularity."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from recsys.ingest.leakage import check_feature_rows
from recsys.vocab import POSITIVE_EVENT_TYPES
from training.retrieval import TwoTowerExamples
from training.runtime import ItemContent, item_dense_from_frame, user_dense_from_frame


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


def two_tower_examples(
    rows: pd.DataFrame, users: list[str], items: list[str], content: ItemContent | None = None
) -> TwoTowerExamples:
    """Model inputs from positive events joined with their point-in-time `two_tower_v1` features, and
    with each item's content embedding where it was known at the event (when ``content`` is given).

    Raises:
        LeakageError: a feature row's snapshot is newer than its example (or the rows do not say when
            their features are from): the run stops rather than train on the future.
    """
    check_feature_rows(rows)
    return TwoTowerExamples(
        user_idx=lookup(rows["user_id"], users),
        user_dense=user_dense_from_frame(rows),
        item_idx=lookup(rows["item_id"], items),
        item_dense=item_dense_from_frame(
            rows, None if content is None else content.rows(rows["item_id"], as_of=rows["event_timestamp"])
        ),
    )


def window_starts(events: pd.DataFrame) -> pd.DataFrame:
    """Per user, the time of the first event of a window: columns user_id, event_timestamp."""
    starts = events.groupby("user_id", sort=True)["event_ts"].min()
    return pd.DataFrame({"user_id": starts.index.astype(str), "event_timestamp": starts.to_numpy()})


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
