"""Slices of the judged users and items, and ranking metrics per slice (pure functions).

User slices say for whom a model works: cold-start users (fewer than `cold_start_max` events of
history), power users (history at or above the `power_quantile` of the judged users), and, when the
event log records them, users by the device and the surface they used most in the window. Item slices
say what a model finds: long-tail items (outside the head that holds `head_share` of the history's
interactions) and new items (no interaction in the history at all). For an item slice the relevant set
of every user is cut down to the slice's items, and only users with such an item are averaged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from evaluation.beyond_accuracy import head_items
from evaluation.metrics import ranking_metrics

# Event-log columns whose values slice the users, when the log has them (MovieLens has neither).
CONTEXT_COLUMNS: tuple[str, ...] = ("device_type", "surface")


def user_slices(
    history_counts: Mapping[str, int],
    users: Sequence[str],
    cold_start_max: int = 5,
    power_quantile: float = 0.9,
) -> dict[str, set[str]]:
    """`cold_start` (fewer than `cold_start_max` history events) and `power` users among `users`.

    >>> s = user_slices({"a": 1, "b": 10, "c": 20, "d": 40}, ["a", "b", "c", "d", "e"], power_quantile=0.75)
    >>> # the 0.75 quantile of [1, 10, 20, 40, 0] is 20: c and d are power users
    >>> sorted(s["cold_start"]), sorted(s["power"])
    (['a', 'e'], ['c', 'd'])
    """
    counts = np.array([history_counts.get(u, 0) for u in users], dtype=float)
    threshold = float(np.quantile(counts, power_quantile)) if len(counts) else 0.0
    cold = {u for u, c in zip(users, counts, strict=True) if c < cold_start_max}
    # Strictly above the quantile when it is 0: a window of cold users has no power users.
    power = {u for u, c in zip(users, counts, strict=True) if c >= threshold and c > 0}
    return {"cold_start": cold, "power": power - cold}


def context_slices(window: pd.DataFrame, users: Collection[str]) -> dict[str, set[str]]:
    """Users by the device type and surface they used most in the window (`device=mobile`, ...).

    Columns that are absent or empty give no slices. Ties go to the value first in sort order.

    >>> w = pd.DataFrame({"user_id": ["a", "a", "b"], "device_type": ["tv", "tv", "mobile"]})
    >>> context_slices(w, {"a", "b"})
    {'device=mobile': {'b'}, 'device=tv': {'a'}}
    """
    out: dict[str, set[str]] = {}
    for column in CONTEXT_COLUMNS:
        if column not in window.columns:
            continue
        rows = window[["user_id", column]].dropna()
        rows = rows[rows["user_id"].astype(str).isin(set(users))]
        if rows.empty:
            continue
        counts = rows.astype(str).value_counts().reset_index(name="n")
        counts = counts.sort_values(["user_id", "n", column], ascending=[True, False, True], kind="stable")
        modes = counts.drop_duplicates("user_id")
        label = "device" if column == "device_type" else column
        for value, group in modes.groupby(column, sort=True):
            out[f"{label}={value}"] = set(group["user_id"])
    return out


def item_slices(history_counts: Mapping[str, float], head_share: float = 0.2) -> dict[str, set[str]]:
    """`head` items (the complement defines the long tail); new items are those absent from the counts.

    >>> item_slices({"a": 6, "b": 3, "c": 1}, head_share=0.5)
    {'head': {'a'}}
    """
    return {"head": head_items(history_counts, head_share)} if history_counts else {"head": set()}


def restrict_relevant(
    relevant: Mapping[str, set[str]], keep: Collection[str] | None = None, drop: Collection[str] | None = None
) -> dict[str, set[str]]:
    """Each user's relevant items within `keep` (when given) and outside `drop`; users left empty go.

    >>> restrict_relevant({"u": {"a", "b"}, "v": {"a"}}, drop={"a"})
    {'u': {'b'}}
    """
    out: dict[str, set[str]] = {}
    for user, items in relevant.items():
        chosen = {i for i in items if (keep is None or i in keep) and (drop is None or i not in drop)}
        if chosen:
            out[user] = chosen
    return out


def slice_metrics(
    rankings: Mapping[str, Mapping[str, Sequence[str]]],
    relevant: Mapping[str, set[str]],
    users_by_slice: Mapping[str, Collection[str]],
    relevant_by_slice: Mapping[str, Mapping[str, set[str]]],
    ks: Sequence[int],
) -> dict[str, dict[str, object]]:
    """Per slice: `n_users` and, per model, every ranking metric averaged over the slice's users.

    User slices keep each user's full relevant set; item slices (`relevant_by_slice`) replace it.
    Empty slices are reported with `n_users` 0 and no models.
    """
    out: dict[str, dict[str, object]] = {}
    for name, members in users_by_slice.items():
        out[name] = _one_slice(rankings, {u: relevant[u] for u in members if u in relevant}, ks)
    for name, restricted in relevant_by_slice.items():
        out[name] = _one_slice(rankings, restricted, ks)
    return out


def _one_slice(
    rankings: Mapping[str, Mapping[str, Sequence[str]]], subset: Mapping[str, set[str]], ks: Sequence[int]
) -> dict[str, object]:
    if not subset:
        return {"n_users": 0, "models": {}}
    models = {name: ranking_metrics(lists, subset, ks) for name, lists in rankings.items()}
    return {"n_users": len(subset), "models": models}
