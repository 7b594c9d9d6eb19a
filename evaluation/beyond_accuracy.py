"""Beyond-accuracy metrics of recommendation lists: coverage, diversity, novelty, exposure concentration.

Accuracy alone rewards recommending the same hits to everyone. These metrics say how much of the
catalogue a model ever shows, how varied each list is, how unfamiliar its items are, and how unequally
exposure is spread. They take the lists only (no relevance), so every list counts, relevant or not.

`lists` is any iterable of ranked item-id lists (already cut at K by the caller).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import numpy as np

from evaluation.metrics import MetricError


def _materialise(lists: Iterable[Sequence[str]]) -> list[Sequence[str]]:
    out = list(lists)
    if not out:
        raise MetricError("no recommendation lists given")
    return out


def exposure_counts(lists: Iterable[Sequence[str]], catalogue: Sequence[str]) -> np.ndarray:
    """How many lists show each catalogue item, in catalogue order (0 for never-shown items).

    Raises:
        MetricError: when a list holds an item outside the catalogue (the catalogue is then wrong).

    >>> exposure_counts([["a", "b"], ["a"]], ["a", "b", "c"]).tolist()
    [2, 1, 0]
    """
    index = {item: i for i, item in enumerate(catalogue)}
    if len(index) != len(catalogue):
        raise MetricError("the catalogue holds an item more than once")
    counts = Counter(item for ranked in _materialise(lists) for item in ranked)
    unknown = set(counts) - index.keys()
    if unknown:
        raise MetricError(f"{len(unknown)} recommended items are not in the catalogue, e.g. {min(unknown)!r}")
    out = np.zeros(len(catalogue), dtype=np.int64)
    for item, n in counts.items():
        out[index[item]] = n
    return out


def catalogue_coverage(lists: Iterable[Sequence[str]], catalogue: Sequence[str]) -> float:
    """Share of the catalogue shown in at least one list.

    >>> catalogue_coverage([["a", "b"], ["a"]], ["a", "b", "c", "d"])
    0.5
    """
    if not catalogue:
        raise MetricError("the catalogue is empty")
    return float((exposure_counts(lists, catalogue) > 0).mean())


def gini_index(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 when all are equal, (n - 1) / n when one holds all.

    Uses G = sum_i (2i - n - 1) x_(i) / (n sum x) over the values sorted ascending, i from 1.

    >>> gini_index(np.array([0, 0, 0, 4]))
    0.75
    """
    x = np.sort(np.asarray(values, dtype=float).ravel())
    if x.size == 0 or (x < 0).any() or not np.isfinite(x).all():
        raise MetricError("Gini needs at least one finite, non-negative value")
    total = x.sum()
    if total == 0:
        raise MetricError("Gini of all-zero values is undefined")
    n = x.size
    i = np.arange(1, n + 1)
    # Equal values sum to zero only up to rounding (e.g. -2.7e-17 for five equal values): never below 0.
    return max(0.0, float(((2 * i - n - 1) * x).sum() / (n * total)))


def exposure_gini(lists: Iterable[Sequence[str]], catalogue: Sequence[str]) -> float:
    """Gini of exposure counts over the whole catalogue, never-shown items included as zeros.

    >>> exposure_gini([["a"], ["a"]], ["a", "b"])  # counts [2, 0]
    0.5
    """
    return gini_index(exposure_counts(lists, catalogue))


def top_share(lists: Iterable[Sequence[str]], catalogue: Sequence[str], fraction: float = 0.01) -> float:
    """Share of all exposures taken by the most-shown ceil(fraction x catalogue size) items (at least 1).

    >>> top_share([["a", "b"], ["a", "c"]], ["a", "b", "c", "d"], fraction=0.25)  # "a": 2 of 4
    0.5
    """
    if not 0 < fraction <= 1:
        raise MetricError(f"fraction must be in (0, 1], got {fraction}")
    counts = np.sort(exposure_counts(lists, catalogue))[::-1]
    total = counts.sum()
    if total == 0:
        raise MetricError("the lists are empty: no exposure to share")
    n_top = max(1, math.ceil(fraction * len(catalogue)))
    return float(counts[:n_top].sum() / total)


def head_items(interaction_counts: Mapping[str, float], head_share: float = 0.2) -> set[str]:
    """The most popular items that together hold `head_share` of all interactions.

    Items are taken most-interacted first (ties by id) until their cumulative count reaches
    head_share x total; the item that crosses the threshold belongs to the head.

    >>> sorted(head_items({"a": 6, "b": 3, "c": 1}, head_share=0.5))
    ['a']
    >>> sorted(head_items({"a": 6, "b": 3, "c": 1}, head_share=0.7))
    ['a', 'b']
    """
    if not 0 < head_share <= 1:
        raise MetricError(f"head_share must be in (0, 1], got {head_share}")
    ordered = sorted(interaction_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(n for _, n in ordered)
    if total <= 0:
        raise MetricError("no interactions to define the head")
    head: set[str] = set()
    cumulative = 0.0
    for item, n in ordered:
        if cumulative >= head_share * total:
            break
        head.add(item)
        cumulative += n
    return head


def long_tail_share(
    lists: Iterable[Sequence[str]], interaction_counts: Mapping[str, float], head_share: float = 0.2
) -> float:
    """Share of recommended slots holding an item outside the head (see `head_items`).

    Items with no interactions at all are in the tail.

    >>> long_tail_share([["a", "c"], ["b", "d"]], {"a": 6, "b": 3, "c": 1}, head_share=0.5)
    0.75
    """
    head = head_items(interaction_counts, head_share)
    slots = [item for ranked in _materialise(lists) for item in ranked]
    if not slots:
        raise MetricError("the lists are empty")
    return sum(item not in head for item in slots) / len(slots)


def novelty(lists: Iterable[Sequence[str]], item_users: Mapping[str, int], n_users: int) -> float:
    """Mean self-information -log2 p(i) of the recommended items, p(i) = share of users who know item i.

    p(i) is smoothed as (users of i + 1) / (n_users + 1), so an item nobody has seen gets the largest
    finite value log2(n_users + 1) rather than infinity, and an item everyone knows gets 0.

    >>> novelty([["a", "b"]], {"a": 3, "b": 0}, n_users=3)  # (-log2(4/4) - log2(1/4)) / 2
    1.0
    """
    if n_users < 1:
        raise MetricError(f"n_users must be at least 1, got {n_users}")
    slots = [item for ranked in _materialise(lists) for item in ranked]
    if not slots:
        raise MetricError("the lists are empty")
    users = np.array([item_users.get(item, 0) for item in slots], dtype=float)
    if (users < 0).any() or (users > n_users).any():
        raise MetricError(f"item user counts must lie in [0, n_users={n_users}]")
    return float(np.mean(-np.log2((users + 1) / (n_users + 1))))


def _distances(m: np.ndarray, distance: str) -> np.ndarray:
    """(n, n) pairwise distances between the rows of m, with a zero diagonal."""
    if distance == "cosine":
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        if (norms == 0).any():
            raise MetricError("cosine distance is undefined for a zero embedding")
        unit = m / norms
        d = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    else:
        inter = m @ m.T
        sizes = m.sum(axis=1)
        union = sizes[:, None] + sizes[None, :] - inter
        # two items without any category are alike: distance 0
        d = np.where(union > 0, 1.0 - inter / np.where(union > 0, union, 1), 0.0)
    # an item against itself is 0 up to rounding: make it exact, so a sum covers the n(n-1) pairs only
    np.fill_diagonal(d, 0.0)
    out: np.ndarray = d
    return out


def _mean_of_prefix(d: np.ndarray, k: int) -> float | None:
    """Mean pairwise distance among the first k items (None when they are fewer than two)."""
    n = min(k, d.shape[0])
    return float(d[:n, :n].sum() / (n * (n - 1))) if n >= 2 else None


def _mean_pairwise(matrices: Iterable[np.ndarray], distance: str) -> float:
    """Mean over lists of the mean pairwise distance among a list's rows; lists under 2 items skipped."""
    per_list = [
        value for m in matrices if (value := _mean_of_prefix(_distances(m, distance), m.shape[0])) is not None
    ]
    if not per_list:
        raise MetricError("no list has two items: diversity is undefined")
    return float(np.mean(per_list))


def intra_list_diversity(
    lists: Iterable[Sequence[str]], item_ids: Sequence[str], embeddings: np.ndarray
) -> float:
    """Mean over lists of the mean pairwise cosine distance (1 - cosine) between item embeddings.

    Lists with fewer than two items are left out. Range [0, 2]; 0 when every list repeats one direction.

    >>> intra_list_diversity([["a", "b", "c"]], ["a", "b", "c"], np.array([[1.0, 0], [0, 1.0], [1.0, 0]]))
    0.6666666666666666
    """
    index = {item: i for i, item in enumerate(item_ids)}
    vectors = np.asarray(embeddings, dtype=float)
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
        raise MetricError(f"embeddings {vectors.shape} must have one row per item id ({len(item_ids)})")

    def rows(ranked: Sequence[str]) -> np.ndarray:
        missing = [item for item in ranked if item not in index]
        if missing:
            raise MetricError(f"no embedding for item {missing[0]!r}")
        return vectors[[index[item] for item in ranked]]

    return _mean_pairwise((rows(r) for r in _materialise(lists)), "cosine")


def _category_rows(categories: Mapping[str, Collection[str]]) -> Callable[[Sequence[str]], np.ndarray]:
    """A function giving the multi-hot category rows of a list; the item x category matrix is built once."""
    vocabulary = sorted({c for cats in categories.values() for c in cats})
    column = {c: j for j, c in enumerate(vocabulary)}
    row_of = {item: i for i, item in enumerate(categories)}
    multi_hot = np.zeros((len(row_of), max(1, len(vocabulary))))
    for item, i in row_of.items():
        multi_hot[i, [column[c] for c in categories[item]]] = 1.0

    def rows(ranked: Sequence[str]) -> np.ndarray:
        missing = [item for item in ranked if item not in row_of]
        if missing:
            raise MetricError(f"no categories for item {missing[0]!r}")
        return multi_hot[[row_of[item] for item in ranked]]

    return rows


def category_diversity(lists: Iterable[Sequence[str]], categories: Mapping[str, Collection[str]]) -> float:
    """Mean over lists of the mean pairwise Jaccard distance between items' category sets.

    Jaccard distance = 1 - |A & B| / |A | B|; two items both without categories count as identical (0).
    An item missing from `categories` is an error. Lists with fewer than two items are left out.

    >>> category_diversity([["a", "b", "c"]], {"a": {"x"}, "b": {"x", "y"}, "c": {"z"}})  # (1/2 + 1 + 1) / 3
    0.8333333333333334
    """
    rows = _category_rows(categories)
    return _mean_pairwise((rows(r) for r in _materialise(lists)), "jaccard")


def list_metrics(
    lists: Sequence[Sequence[str]],
    ks: Sequence[int],
    catalogue: Sequence[str],
    categories: Mapping[str, Collection[str]],
    item_users: Mapping[str, int],
    n_users: int,
) -> dict[str, float]:
    """Coverage, category diversity, novelty and exposure Gini of the lists cut at each K.

    Keys are "coverage@<k>", "category_diversity@<k>" (NaN when no list has two items), "novelty@<k>",
    "gini@<k>".

    >>> cats = {"a": {"x"}, "b": {"x"}, "c": {"y"}, "d": set()}
    >>> m = list_metrics([["a", "b"], ["a", "c"]], [1, 2], ["a", "b", "c", "d"], cats, {"a": 1}, n_users=1)
    >>> m["coverage@1"], m["gini@1"], m["novelty@1"], m["category_diversity@2"]  # pairs a-b 0, a-c 1
    (0.25, 0.75, 0.0, 0.5)
    """
    rows = _category_rows(categories)
    # one distance matrix per list at the largest K; a smaller K reads its top-left corner
    distances = [_distances(rows(ranked[: max(ks)]), "jaccard") for ranked in lists]
    out: dict[str, float] = {}
    for k in ks:
        cut = [ranked[:k] for ranked in lists]
        out[f"coverage@{k}"] = catalogue_coverage(cut, catalogue)
        per_list = [v for d in distances if (v := _mean_of_prefix(d, k)) is not None]
        out[f"category_diversity@{k}"] = float(np.mean(per_list)) if per_list else float("nan")
        out[f"novelty@{k}"] = novelty(cut, item_users, n_users)
        out[f"gini@{k}"] = exposure_gini(cut, catalogue)
    return out
