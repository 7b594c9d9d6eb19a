"""Top-K ranking metrics: one numpy definition per metric, for one user or averaged over many.

Every metric is computed from a gain matrix (users x positions): the gain of the item at each position of
each user's ranked list, 0 where the item is not relevant or the list is shorter than K. The per-user
functions (`recall_at_k`, ...) and the batch average (`ranking_metrics`) share these definitions, so they
cannot drift apart. Conventions, for every metric:

- Relevance is a collection of item ids (binary, gain 1) or a mapping item id -> non-negative gain
  (graded). An item with gain 0 is not relevant. Only NDCG uses the grade; the others use gain > 0.
- K larger than a ranked list: the missing positions count as misses (Precision@K still divides by K).
- A user with no relevant item scores 0 from the per-user functions, and is left out of the batch
  average (nothing can be found for them; counting them would only scale every model down alike).
- A ranked list holding an item twice is an error: it would count one hit twice.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Relevance = Collection[str] | Mapping[str, float]
Gain = Literal["linear", "exponential"]
RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "mrr", "map", "hit_rate")


class MetricError(ValueError):
    """A metric asked for with impossible input (K below 1, duplicates, negative gains, no users)."""


def _check_k(k: int) -> None:
    if k < 1:
        raise MetricError(f"K must be at least 1, got {k}")


def _gains(relevant: Relevance) -> dict[str, float]:
    """Item id -> gain > 0; graded input is checked, binary input gets gain 1."""
    if isinstance(relevant, Mapping):
        out: dict[str, float] = {}
        for item, grade in relevant.items():
            value = float(grade)
            if not np.isfinite(value) or value < 0:
                raise MetricError(f"relevance of item {item!r} must be a finite gain >= 0, got {grade!r}")
            if value > 0:
                out[item] = value
        return out
    return dict.fromkeys(relevant, 1.0)


@dataclass(frozen=True)
class GainMatrix:
    """The judged rankings of a batch of users, what every metric is computed from.

    Attributes:
        gains: (n_users, depth) gain of the item at each position; 0 for misses and past a list's end.
        ideal: (n_users, depth) the users' relevance grades sorted best first, padded with 0.
        n_relevant: (n_users,) number of relevant items of each user (gain > 0).
    """

    gains: np.ndarray
    ideal: np.ndarray
    n_relevant: np.ndarray


def judge(rankings: Sequence[Sequence[str]], relevant: Sequence[Relevance], depth: int) -> GainMatrix:
    """Look up the gain of the first `depth` items of every ranked list.

    >>> judge([["a", "b"]], [{"b": 2.0, "c": 1.0}], 3).gains
    array([[0., 2., 0.]])
    """
    _check_k(depth)
    if len(rankings) != len(relevant):
        raise MetricError(f"{len(rankings)} ranked lists for {len(relevant)} relevance sets")
    gains = np.zeros((len(rankings), depth))
    ideal = np.zeros((len(rankings), depth))
    n_relevant = np.zeros(len(rankings))
    for row, (ranked, rel) in enumerate(zip(rankings, relevant, strict=True)):
        if len(set(ranked)) != len(ranked):
            raise MetricError(f"ranked list {row} holds an item more than once")
        grade = _gains(rel)
        gains[row, : min(depth, len(ranked))] = [grade.get(item, 0.0) for item in ranked[:depth]]
        best = sorted(grade.values(), reverse=True)[:depth]
        ideal[row, : len(best)] = best
        n_relevant[row] = len(grade)
    return GainMatrix(gains=gains, ideal=ideal, n_relevant=n_relevant)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (users with nothing relevant)."""
    out: np.ndarray = np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)
    return out


def _hits(judged: GainMatrix, k: int) -> np.ndarray:
    _check_k(k)
    if k > judged.gains.shape[1]:
        raise MetricError(f"K={k} is deeper than the judged depth {judged.gains.shape[1]}")
    hits: np.ndarray = judged.gains[:, :k] > 0
    return hits


def precision(judged: GainMatrix, k: int) -> np.ndarray:
    """Per user, relevant items among the first K divided by K."""
    out: np.ndarray = _hits(judged, k).sum(axis=1) / k
    return out


def recall(judged: GainMatrix, k: int) -> np.ndarray:
    """Per user, relevant items among the first K divided by all the user's relevant items."""
    return _safe_divide(_hits(judged, k).sum(axis=1).astype(float), judged.n_relevant)


def hit_rate(judged: GainMatrix, k: int) -> np.ndarray:
    """Per user, 1 when at least one relevant item is among the first K, else 0."""
    return _hits(judged, k).any(axis=1).astype(float)


def reciprocal_rank(judged: GainMatrix, k: int) -> np.ndarray:
    """Per user, 1 / position of the first relevant item within the first K (0 when none)."""
    hits = _hits(judged, k)
    first = hits.argmax(axis=1)
    out: np.ndarray = np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)
    return out


def average_precision(judged: GainMatrix, k: int) -> np.ndarray:
    """Per user, the sum of Precision@i at each relevant position i <= K, over all relevant items.

    The denominator is the user's number of relevant items (the TREC convention), not min(K, that number):
    AP@K reaches 1 only when every relevant item is within the first K.
    """
    hits = _hits(judged, k)
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return _safe_divide((precision_at_i * hits).sum(axis=1), judged.n_relevant)


def ndcg(judged: GainMatrix, k: int, gain: Gain = "linear") -> np.ndarray:
    """Per user, DCG@K over the DCG@K of the ideal order (the user's grades sorted best first).

    DCG sums g(rel) / log2(position + 1) over positions 1..K, with g(rel) = rel ("linear", as
    scikit-learn's `ndcg_score`) or 2**rel - 1 ("exponential"); both agree for binary relevance.
    """
    _hits(judged, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    gains, best = judged.gains[:, :k], judged.ideal[:, :k]
    if gain == "exponential":
        gains, best = np.exp2(gains) - 1.0, np.exp2(best) - 1.0
    elif gain != "linear":
        raise MetricError(f"gain must be 'linear' or 'exponential', got {gain!r}")
    dcg = (gains * discount).sum(axis=1)
    ideal = (best * discount).sum(axis=1)
    return _safe_divide(dcg, ideal)


def _one(ranked: Sequence[str], relevant: Relevance, k: int) -> GainMatrix:
    return judge([ranked], [relevant], k)


def precision_at_k(ranked: Sequence[str], relevant: Relevance, k: int) -> float:
    """Share of the first K positions holding a relevant item (a short list still divides by K).

    >>> precision_at_k(["a", "b"], {"b"}, 4)
    0.25
    """
    return float(precision(_one(ranked, relevant, k), k)[0])


def recall_at_k(ranked: Sequence[str], relevant: Relevance, k: int) -> float:
    """Share of the relevant items found in the first k of `ranked` (0 when nothing is relevant).

    >>> recall_at_k(["a", "b", "c"], {"b", "z"}, 2)
    0.5
    """
    return float(recall(_one(ranked, relevant, k), k)[0])


def ndcg_at_k(ranked: Sequence[str], relevant: Relevance, k: int, gain: Gain = "linear") -> float:
    """Normalised discounted cumulative gain at k; binary (a set) or graded (a mapping to gains).

    DCG sums gain / log2(position + 1) over hits (positions from 1); the ideal places the best
    min(k, |relevant|) grades first.

    >>> round(ndcg_at_k(["x", "a"], {"a"}, 2), 4)
    0.6309
    >>> round(ndcg_at_k(["b", "a"], {"a": 2.0, "b": 1.0}, 2), 4)  # (1 + 2/log2 3) / (2 + 1/log2 3)
    0.8597
    """
    return float(ndcg(_one(ranked, relevant, k), k, gain)[0])


def reciprocal_rank_at_k(ranked: Sequence[str], relevant: Relevance, k: int) -> float:
    """1 / position of the first relevant item within the first K; 0 when there is none.

    >>> reciprocal_rank_at_k(["x", "y", "a"], {"a"}, 5)
    0.3333333333333333
    """
    return float(reciprocal_rank(_one(ranked, relevant, k), k)[0])


def average_precision_at_k(ranked: Sequence[str], relevant: Relevance, k: int) -> float:
    """Average precision at K, divided by the number of relevant items (TREC convention).

    >>> average_precision_at_k(["a", "x", "b"], {"a", "b"}, 3)  # (1/1 + 2/3) / 2
    0.8333333333333333
    """
    return float(average_precision(_one(ranked, relevant, k), k)[0])


def hit_at_k(ranked: Sequence[str], relevant: Relevance, k: int) -> float:
    """1.0 when a relevant item is among the first K, else 0.0.

    >>> hit_at_k(["x", "a"], {"a"}, 1), hit_at_k(["x", "a"], {"a"}, 2)
    (0.0, 1.0)
    """
    return float(hit_rate(_one(ranked, relevant, k), k)[0])


def ranking_metrics(
    rankings: Mapping[str, Sequence[str]],
    relevant: Mapping[str, Relevance],
    ks: Sequence[int],
    gain: Gain = "linear",
) -> dict[str, float]:
    """Every ranking metric at every K, averaged over the users with at least one relevant item.

    Args:
        rankings: user id -> ranked item ids, best first. A user missing here has an empty list.
        relevant: user id -> relevant items (a set) or item -> gain (graded). Users whose relevance is
            empty are left out of the average.
        ks: cut-offs; keys are "<metric>@<k>" for metric in `RANKING_METRICS`.
        gain: NDCG gain function for graded relevance.

    Returns:
        Metric key -> mean over the included users.

    >>> m = ranking_metrics({"u1": ["a", "b"], "u2": ["c"]}, {"u1": {"b"}, "u2": {"c"}, "u3": set()}, [1])
    >>> m["precision@1"], m["mrr@1"], m["hit_rate@1"]
    (0.5, 0.5, 0.5)
    """
    if not ks:
        raise MetricError("at least one K is needed")
    users = [u for u in sorted(relevant) if _gains(relevant[u])]
    if not users:
        raise MetricError("no user has a relevant item: the metrics are undefined")
    judged = judge([rankings.get(u, []) for u in users], [relevant[u] for u in users], max(ks))
    out: dict[str, float] = {}
    for k in ks:
        out[f"precision@{k}"] = float(precision(judged, k).mean())
        out[f"recall@{k}"] = float(recall(judged, k).mean())
        out[f"ndcg@{k}"] = float(ndcg(judged, k, gain).mean())
        out[f"mrr@{k}"] = float(reciprocal_rank(judged, k).mean())
        out[f"map@{k}"] = float(average_precision(judged, k).mean())
        out[f"hit_rate@{k}"] = float(hit_rate(judged, k).mean())
    return out
