"""Paired comparisons on the same judged users: is a difference between two rows of the table real?

A mean over a few hundred users moves by a few thousandths from one seed to the next, so "0.1148 beats
0.1100" says little alone. Both systems are judged on the same users, so the per-user differences are
resampled (users whole, with replacement) and the difference of the means gets a percentile interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluation.metrics import MetricError, Relevance, judge, ndcg, recall

PER_USER_METRICS = {"ndcg": ndcg, "recall": recall}


@dataclass(frozen=True)
class PairedDifference:
    """``system`` minus ``other`` on ``metric`` (e.g. "ndcg@10"), averaged over the same ``n_users``, with
    a bootstrap interval of level 1 - alpha."""

    system: str
    other: str
    metric: str
    n_users: int
    difference: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        """ "better" or "worse" when the interval excludes zero, else "not significant"."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "not significant"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def per_user_metric(
    rankings: Mapping[str, Sequence[str]],
    relevant: Mapping[str, Relevance],
    users: Sequence[str],
    metric: str,
) -> np.ndarray:
    """(len(users),) values of ``metric`` ("ndcg@10", "recall@100") per user; a missing ranking scores 0.

    >>> per_user_metric({"u": ["a", "b"]}, {"u": {"b"}, "v": {"a"}}, ["u", "v"], "recall@2").tolist()
    [1.0, 0.0]
    """
    name, _, cut = metric.partition("@")
    if name not in PER_USER_METRICS or not cut.isdigit():
        raise MetricError(
            f"unknown metric {metric!r}: one of {sorted(PER_USER_METRICS)} at a cut-off, e.g. ndcg@10"
        )
    k = int(cut)
    judged = judge([rankings.get(u, []) for u in users], [relevant[u] for u in users], k)
    values: np.ndarray = PER_USER_METRICS[name](judged, k)
    return values


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of a - b, low, high): the percentile interval of the mean per-user difference, users
    resampled with replacement. Seeded, so the same inputs give the same interval.

    >>> paired_bootstrap(np.array([1.0, 1.0, 1.0]), np.zeros(3))
    (1.0, 1.0, 1.0)
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or len(diff) == 0:
        raise MetricError(
            f"paired values must be two equal, non-empty 1-d arrays, got {np.shape(a)}, {np.shape(b)}"
        )
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // len(diff))  # bounds the (resamples, users) index block in memory
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = diff[rng.integers(0, len(diff), size=(stop - start, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(low), float(high)


def compare_rows(
    rankings: Mapping[str, Mapping[str, Sequence[str]]],
    relevant: Mapping[str, Relevance],
    system: str,
    metrics: Sequence[str],
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[PairedDifference]:
    """``system`` against every other row of ``rankings`` on each metric, over the users with a relevant
    item (the users the table's means are over)."""
    users = [u for u in sorted(relevant) if len(relevant[u])]
    if not users:
        raise MetricError("no user has a relevant item: nothing to compare")
    out = []
    for metric in metrics:
        mine = per_user_metric(rankings[system], relevant, users, metric)
        for other, lists in rankings.items():
            if other == system:
                continue
            theirs = per_user_metric(lists, relevant, users, metric)
            difference, low, high = paired_bootstrap(mine, theirs, n_resamples, seed=seed)
            out.append(PairedDifference(system, other, metric, len(users), difference, low, high))
    return out


def render_comparisons(comparisons: Sequence[PairedDifference]) -> str:
    """One line per comparison, e.g. ``retrieval+ranking - item-knn  ndcg@10  +0.0048 [-0.0051, +0.0149]``."""
    lines = []
    for c in comparisons:
        lines.append(
            f"{c.system} - {c.other:<18} {c.metric:<10} {c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]"
            f"  {c.verdict} ({c.n_users} users)"
        )
    return "\n".join(lines)
