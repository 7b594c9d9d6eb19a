"""Top-K ranking metrics with binary relevance: pure functions on id lists."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence


class MetricError(ValueError):
    """A metric asked for with an impossible K."""


def _check_k(k: int) -> None:
    if k < 1:
        raise MetricError(f"K must be at least 1, got {k}")


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant items found in the first k of `ranked` (0 when nothing is relevant).

    >>> recall_at_k(["a", "b", "c"], {"b", "z"}, 2)
    0.5
    """
    _check_k(k)
    if not relevant:
        return 0.0
    hits = sum(1 for item in ranked[:k] if item in relevant)
    return hits / len(relevant)


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Normalised discounted cumulative gain at k with gain 1 per relevant item.

    DCG sums 1 / log2(position + 1) over hits (positions from 1); the ideal places min(k, |relevant|)
    hits first.

    >>> round(ndcg_at_k(["x", "a"], {"a"}, 2), 4)
    0.6309
    """
    _check_k(k)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(pos + 2) for pos, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(pos + 2) for pos in range(min(k, len(relevant))))
    return dcg / ideal
