"""Co-view: which items are engaged with together in a session, and how much a candidate was co-viewed
with what a user engaged with lately.

The batch job builds the item-item table (``coview_table``, Spark); ``coview_scores`` is the one scoring
function over it, used by the ranker's training rows and by serving alike (``build_ranker_matrix``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.features import schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def _items(value: Any) -> list[Any] | None:
    """A list feature as a list; None for missing (None, NaN, absent)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    # tolist() gives Python strings and numbers at once; iterating an array boxes every element.
    return value.tolist() if isinstance(value, np.ndarray) else list(value)


_EMPTY: tuple[list[Any], list[Any]] = ([], [])
_first = itemgetter(0)
_second = itemgetter(1)


def coview_scores(
    recent_items: Sequence[str] | np.ndarray | None,
    neighbours: Iterable[Any],
    counts: Iterable[Any],
) -> tuple[np.ndarray, np.ndarray]:
    """How often each candidate was co-viewed with the user's recent items.

    Args:
        recent_items: The user's recent items (``user_recent_items``); None when the user is unknown.
        neighbours: Per candidate, its co-viewed items (``item_coview_items``); None when it has none.
        counts: Per candidate, the co-view counts aligned with ``neighbours`` (``item_coview_counts``).

    Returns:
        (n_candidates,) float32 each: the summed counts of the candidate's neighbours among the recent
        items (0 without neighbours), and that sum over all of the candidate's listed counts (NaN without
        neighbours). Both NaN for an unknown user.

    >>> score, share = coview_scores(["a", "b"], [["a", "c"], None, ["b", "a"]], [[3, 1], None, [2, 2]])
    >>> score.tolist(), share.tolist()
    ([3.0, 0.0, 4.0], [0.75, nan, 1.0])
    """
    neighbours, counts = list(neighbours), list(counts)
    n = len(neighbours)
    if len(counts) != n:
        raise ValueError(f"{n} candidates' co-viewed items but {len(counts)} candidates' counts")
    recent = _items(recent_items)
    if recent is None:
        return np.full(n, np.nan, dtype=np.float32), np.full(n, np.nan, dtype=np.float32)
    # Iteration in C (chain, map) over every listed neighbour, no Python frame per neighbour or per
    # candidate: serving scores 500 candidates of up to COVIEW_NEIGHBOURS neighbours each per request.
    # The frames serving builds hold Python lists and None; other cells (arrays, NaN) go through `_items`.
    if not set(map(type, neighbours)) | set(map(type, counts)) <= {list, type(None)}:
        neighbours, counts = list(map(_items, neighbours)), list(map(_items, counts))
    listed = [
        (items, values) if items and values is not None else _EMPTY
        for items, values in zip(neighbours, counts, strict=True)
    ]
    lengths = np.fromiter(map(len, map(_first, listed)), dtype=np.int64, count=n)
    weight_lengths = np.fromiter(map(len, map(_second, listed)), dtype=np.int64, count=n)
    if not np.array_equal(lengths, weight_lengths):
        bad = int(np.flatnonzero(lengths != weight_lengths)[0])
        raise ValueError(f"candidate {bad}: {lengths[bad]} co-viewed items but {weight_lengths[bad]} counts")
    size = int(lengths.sum())
    hit = np.fromiter(
        map(set(recent).__contains__, chain.from_iterable(map(_first, listed))), dtype=bool, count=size
    )
    weight = np.fromiter(chain.from_iterable(map(_second, listed)), dtype=np.float64, count=size)
    owner = np.repeat(np.arange(n), lengths)
    score = np.bincount(owner, weights=np.where(hit, weight, 0.0), minlength=n).astype(np.float32)
    total = np.bincount(owner, weights=weight, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where((lengths > 0) & (total > 0), score / total, np.nan).astype(np.float32)
    return score, share


def coview_table(ev: DataFrame, snaps: DataFrame, n_snapshots: int) -> DataFrame:
    """Item-item co-view neighbours, as of every snapshot where an item's neighbours changed (Spark).

    ``ev`` holds the feature job's prepared events (user_id, session_id, item_id, event_type, ts, bucket
    ``k``, weight ``w``), ``snaps`` the snapshots (``k``, ``s`` in microseconds).

    Each engaged event of a session is paired with the next ``schema.COVIEW_WINDOW`` engaged events of the
    same session (both directions); a pair counts from the bucket of its later event, so the snapshot at S
    only counts pairs whose two events are before S. Pairs seen fewer than ``schema.COVIEW_MIN_COUNT``
    times are left out; each item keeps its ``schema.COVIEW_NEIGHBOURS`` most co-viewed items.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    engaged = ev.where((F.col("w") > 0) & F.col("session_id").isNotNull())
    order = Window.partitionBy("user_id", "session_id").orderBy("ts", "item_id", "event_type")
    following = F.array(
        *[
            F.struct(F.lead("item_id", j).over(order).alias("b"), F.lead("k", j).over(order).alias("k"))
            for j in range(1, schema.COVIEW_WINDOW + 1)
        ]
    )
    pairs = (
        engaged.select(F.col("item_id").alias("a"), following.alias("following"))
        .select("a", F.explode("following").alias("next"))
        .select("a", F.col("next.b").alias("b"), F.col("next.k").alias("k"))
        .where(F.col("b").isNotNull() & (F.col("a") != F.col("b")))
    )
    both = pairs.unionByName(pairs.select(F.col("b").alias("a"), F.col("a").alias("b"), "k"))
    per_pair = Window.partitionBy("a", "b").orderBy("k")
    # A pair's count as of bucket k holds until its next change (k_next).
    counts = (
        both.groupBy("a", "b", "k")
        .agg(F.count(F.lit(1)).alias("c"))
        .select(
            "a",
            "b",
            "k",
            F.sum("c")
            .over(per_pair.rowsBetween(Window.unboundedPreceding, Window.currentRow))
            .alias("count"),
            F.lead("k", 1, n_snapshots + 1).over(per_pair).alias("k_next"),
        )
        .where(F.col("count") >= schema.COVIEW_MIN_COUNT)
    )
    changed = counts.select(F.col("a").alias("item_id"), F.col("k").alias("at")).distinct()
    as_of = changed.join(
        counts,
        (changed["item_id"] == counts["a"])
        & (counts["k"] <= changed["at"])
        & (changed["at"] < counts["k_next"]),
    )
    ranked = F.array_sort(F.collect_list(F.struct((-F.col("count")).alias("neg"), F.col("b").alias("b"))))
    top = as_of.groupBy("item_id", "at").agg(F.slice(ranked, 1, schema.COVIEW_NEIGHBOURS).alias("top"))
    feature_ts = F.timestamp_micros(F.col("s"))
    return top.join(snaps, top["at"] == snaps["k"]).select(
        "item_id",
        feature_ts.alias(schema.FEATURE_TS),
        F.transform("top", lambda x: x["b"]).alias("item_coview_items"),
        F.transform("top", lambda x: -x["neg"]).cast("array<long>").alias("item_coview_counts"),
        feature_ts.alias(schema.CREATED_TS),
    )
