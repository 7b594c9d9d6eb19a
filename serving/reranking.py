"""Re-ranking: the last step of the serving graph, turning the ranker's order into the list that is shown.

The ranker scores items one by one; a good list also needs variety, fresh items, no repeats of what the
user was just shown, and room for business rules. Each rule is a plain function on candidate arrays;
`rerank` composes them in this order:

1. drop blocklisted items and items in the exclusion set (e.g. recently shown), so no later rule sees them;
2. relevance: the ranker scores min-max scaled to [0, 1] within the request, plus a freshness bonus
   and any per-request bonus (the session genre match);
3. MMR: greedily pick the item with the best trade-off between relevance and novelty against the items
   already picked (first `depth` positions; the rest follow by relevance);
4. category caps: at most `max_per_category` items of one category in the first `cap_window` positions;
5. pins: business-pinned items are placed at fixed positions;
6. cut to `k`.

Scores returned are the ranker's own scores of the chosen items, so what is logged stays comparable
across requests; the order, not the score, carries the re-ranking.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class RerankError(ValueError):
    """Candidate arrays that do not line up with each other."""


class Pin(BaseModel):
    """A business rule: always show `item_id` at the 1-based `position` (unless blocklisted or excluded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str = Field(min_length=1)
    position: int = Field(ge=1)


class RerankConfig(BaseModel):
    """How the ranked list is re-ranked before it is shown.

    >>> RerankConfig().mmr_lambda
    0.7
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # 1.0 is pure relevance; lower values trade relevance for dissimilarity to items already picked.
    mmr_lambda: float = Field(default=0.7, ge=0.0, le=1.0)
    # Positions filled by MMR; the rest of the candidates follow in relevance order.
    depth: int = Field(default=100, ge=1)
    max_per_category: int | None = Field(default=4, ge=1)
    cap_window: int = Field(default=10, ge=1)
    # Bonus, in units of the [0, 1] scaled relevance, for a brand-new item; halves every half-life.
    freshness_weight: float = Field(default=0.1, ge=0.0)
    freshness_half_life_days: float = Field(default=365.0, gt=0.0)
    # No item shown to a user in their last `no_repeat_responses` answers is shown again (0 turns it off).
    no_repeat_responses: int = Field(default=3, ge=0)
    recent_users: int = Field(default=10_000, ge=1)
    blocklist: frozenset[str] = frozenset()
    pins: tuple[Pin, ...] = ()


@dataclass(frozen=True)
class ItemInfo:
    """What the rules know about each candidate, row-aligned with the candidate list.

    Attributes:
        embeddings: (n, dim) item vectors for MMR similarity; None to use `categories` instead.
        categories: (n, n_categories) multi-hot (or weighted) category membership, e.g. genre vectors.
        age_days: (n,) days since the item was published; negative or NaN when unknown (no bonus).
    """

    embeddings: np.ndarray | None = None
    categories: np.ndarray | None = None
    age_days: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> ItemInfo:
        """The same information for a subset of rows, in the given order."""
        return ItemInfo(
            *(None if a is None else a[rows] for a in (self.embeddings, self.categories, self.age_days))
        )


def _check(n: int, info: ItemInfo) -> None:
    for name, array in (("embeddings", info.embeddings), ("categories", info.categories)):
        if array is not None and (array.ndim != 2 or len(array) != n):
            raise RerankError(f"{name} must have shape ({n}, d), got {array.shape}")
    if info.age_days is not None and info.age_days.shape != (n,):
        raise RerankError(f"age_days must have shape ({n},), got {info.age_days.shape}")


def allowed(item_ids: Sequence[str], banned: Iterable[str]) -> np.ndarray:
    """(n,) bool mask: True for items not in `banned` (blocklist and exclusions together).

    >>> allowed(["a", "b", "c"], {"b"}).tolist()
    [True, False, True]
    """
    banned_set = set(banned)
    return np.fromiter((i not in banned_set for i in item_ids), dtype=bool, count=len(item_ids))


def scale_scores(scores: np.ndarray) -> np.ndarray:
    """Scores min-max scaled to [0, 1], so relevance and cosine similarity share a scale; constant -> 1.

    >>> scale_scores(np.array([2.0, 4.0, 3.0])).tolist()
    [0.0, 1.0, 0.5]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    low, span = scores.min(), np.ptp(scores)
    return np.ones_like(scores) if span == 0 else (scores - low) / span


def freshness_bonus(age_days: np.ndarray, weight: float, half_life_days: float) -> np.ndarray:
    """`weight * 0.5 ** (age / half_life)`: newer items get more; unknown (negative, NaN) age gets none.

    >>> freshness_bonus(np.array([0.0, 10.0, -1.0, np.nan]), 0.2, 10.0).tolist()
    [0.2, 0.1, 0.0, 0.0]
    """
    age = np.asarray(age_days, dtype=np.float64)
    known = np.isfinite(age) & (age >= 0)
    bonus = weight * np.exp2(-np.where(known, age, 0.0) / half_life_days)
    return np.where(known, bonus, 0.0)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.nan_to_num(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def mmr_order(relevance: np.ndarray, vectors: np.ndarray | None, lam: float, depth: int) -> np.ndarray:
    """Maximal marginal relevance: row indices, the first `depth` picked greedily, the rest by relevance.

    Each step picks argmax `lam * relevance - (1 - lam) * max cosine similarity to the items picked so
    far`; ties go to the earlier row (the input order), so the output is deterministic.

    >>> vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    >>> mmr_order(np.array([1.0, 0.9, 0.8]), vectors, 0.5, 3).tolist()
    [0, 2, 1]
    """
    picks = _mmr_picks(np.asarray(relevance, dtype=np.float64), vectors, lam, depth)
    return np.fromiter(picks, dtype=np.int64, count=len(relevance))


def _mmr_picks(relevance: np.ndarray, vectors: np.ndarray | None, lam: float, depth: int) -> Iterator[int]:
    """`mmr_order` as a stream: each pick is computed when it is asked for, so a caller that needs the
    first few positions pays for those only."""
    n = len(relevance)
    by_relevance = np.argsort(-relevance, kind="stable")
    if vectors is None or lam >= 1.0 or n < 2:
        yield from by_relevance.tolist()
        return
    unit = _unit_rows(vectors)
    weight = 1.0 - lam
    gain = lam * relevance
    # value = gain - weight * (max similarity to the picks), kept as the minimum over the picks of
    # gain - weight * similarity: the same numbers (rounding is monotone), fewer passes per step.
    # Before the first pick there is nothing to be similar to: the first step is pure relevance.
    value = gain.copy()
    similarity = np.empty(n)
    candidate = np.empty(n)
    taken = np.zeros(n, dtype=bool)
    for step in range(min(depth, n)):
        best = int(np.argmax(value))
        taken[best] = True
        yield best
        # In place: this loop is the per-request cost of re-ranking, one O(n) step per pick. The cosine
        # row of each pick only, not the (n, n) matrix, since most answers stop after a few picks.
        np.dot(unit, unit[best], out=similarity)
        np.multiply(similarity, weight, out=candidate)
        np.subtract(gain, candidate, out=candidate)
        if step == 0:
            value[:] = candidate
        else:
            np.fmin(value, candidate, out=value)  # fmin: a pick stays -inf even against a NaN
        value[best] = -np.inf
    yield from by_relevance[~taken[by_relevance]].tolist()


def cap_categories(
    order: np.ndarray, categories: np.ndarray, max_per_category: int, window: int
) -> np.ndarray:
    """Reorder so no category has more than `max_per_category` items in the first `window` positions.

    An item counts towards every category it belongs to and is held back if any of them is full; held
    items follow the window in their original order, so the list is never shortened (when too few items
    are left to fill the window, the cap gives way rather than the list).

    >>> cats = np.array([[1, 0], [1, 0], [1, 0], [0, 1]])
    >>> cap_categories(np.arange(4), cats, 2, 3).tolist()
    [0, 1, 3, 2]
    """
    capped = _capped(iter(np.asarray(order).tolist()), categories, max_per_category, window)
    return np.fromiter(capped, dtype=np.int64, count=len(order))


def _capped(
    order: Iterator[int], categories: np.ndarray, max_per_category: int, window: int
) -> Iterator[int]:
    """`cap_categories` as a stream, drawing on `order` only as far as the positions asked for need."""
    members = np.asarray(categories) > 0  # (n, n_categories)
    counts = np.zeros(members.shape[1], dtype=np.int64)
    held: list[int] = []
    kept = 0
    for row in order:
        if kept == window:  # the window is full: the held items, then everything else as it comes
            yield from held
            yield row
            yield from order
            return
        member = members[row]
        if (counts[member] >= max_per_category).any():
            held.append(row)
        else:
            kept += 1
            counts += member
            yield row
    yield from held


def apply_pins(
    item_ids: list[str], scores: list[float], pins: Sequence[Pin]
) -> tuple[list[str], list[float]]:
    """Place each pinned item at its position (appended when the list is shorter), moved if present.

    An inserted item that was not a candidate takes the score of the item it displaced, so every score
    stays a finite number; pins are applied from the lowest position up.

    >>> apply_pins(["a", "b", "c"], [3.0, 2.0, 1.0], [Pin(item_id="c", position=1)])
    (['c', 'a', 'b'], [1.0, 3.0, 2.0])
    """
    ids, out = list(item_ids), list(scores)
    for pin in sorted(pins, key=lambda p: (p.position, p.item_id)):
        if pin.item_id in ids:
            at = ids.index(pin.item_id)
            score = out.pop(at)
            ids.pop(at)
        else:
            score = out[min(pin.position, len(out)) - 1] if out else 0.0
        index = min(pin.position - 1, len(ids))
        ids.insert(index, pin.item_id)
        out.insert(index, score)
    return ids, out


def rerank(
    item_ids: Sequence[str],
    scores: np.ndarray,
    info: ItemInfo,
    config: RerankConfig,
    exclude: Iterable[str] = (),
    k: int | None = None,
    bonus: np.ndarray | None = None,
) -> tuple[list[str], list[float]]:
    """The candidates in the order to show them (see the module docstring for the order of the rules).

    Args:
        item_ids: Candidates in the ranker's order.
        scores: (n,) ranker scores, higher is better.
        info: Per-candidate embeddings, categories and age, row-aligned with `item_ids`.
        config: The rules and their strengths.
        exclude: Items never to show in this answer (e.g. shown to the user moments ago).
        k: How many to return; all remaining candidates when None.
        bonus: (n,) extra relevance per candidate, in scaled-relevance units (e.g. session match).

    Returns:
        Item ids and their ranker scores, best first; deterministic for equal inputs.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(item_ids)
    if scores.shape != (n,):
        raise RerankError(f"{n} item ids but scores of shape {scores.shape}")
    _check(n, info)
    if bonus is not None and np.shape(bonus) != (n,):
        raise RerankError(f"{n} item ids but a bonus of shape {np.shape(bonus)}")
    if not config.enabled:
        # The ranker's order, ties in input order; only the exclusions apply.
        keep = allowed(item_ids, exclude) if exclude else np.ones(n, dtype=bool)
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(-scores[rows], kind="stable")][:k]
        return [item_ids[int(r)] for r in rows], scores[rows].tolist()
    rows = np.flatnonzero(allowed(item_ids, set(config.blocklist).union(exclude)))
    kept_ids = [item_ids[int(r)] for r in rows]
    kept_scores = scores[rows]
    kept = info.take(rows)
    relevance = scale_scores(kept_scores)
    if kept.age_days is not None and config.freshness_weight > 0:
        relevance = relevance + freshness_bonus(
            kept.age_days, config.freshness_weight, config.freshness_half_life_days
        )
    if bonus is not None:
        relevance = relevance + np.nan_to_num(np.asarray(bonus, dtype=np.float64)[rows])
    order = _diverse_order(relevance, kept, config, k)
    ids = [kept_ids[r] for r in order]
    out = kept_scores[order].tolist()
    if config.pins:
        banned = set(config.blocklist).union(exclude)
        ids, out = apply_pins(ids, out, [p for p in config.pins if p.item_id not in banned])
    return ids[:k], out[:k]


def _diverse_order(relevance: np.ndarray, info: ItemInfo, config: RerankConfig, k: int | None) -> list[int]:
    """MMR, then the category caps: row indices in the order to show them, the first `k` only when `k`
    is set and no pin can move a lower row up (then only the picks those positions need are made)."""
    vectors = info.embeddings if info.embeddings is not None else info.categories
    order = _mmr_picks(relevance, vectors, config.mmr_lambda, config.depth)
    if info.categories is not None and config.max_per_category is not None:
        order = _capped(order, info.categories, config.max_per_category, config.cap_window)
    return list(order if k is None or config.pins else islice(order, k))


class RecentlyShown:
    """The items of each user's last few answers, in a bounded LRU over users (one per ingress replica).

    Replicas do not share it: a user whose requests land on two replicas may see a repeat; it bounds
    memory to `max_users * n_responses` lists.

    >>> recent = RecentlyShown(n_responses=2, max_users=10)
    >>> for shown in (["a"], ["b"], ["c"]):
    ...     recent.record("u", shown)
    >>> sorted(recent.items("u"))
    ['b', 'c']
    """

    def __init__(self, n_responses: int, max_users: int) -> None:
        self.n_responses = n_responses
        self.max_users = max_users
        self._users: OrderedDict[str, list[tuple[str, ...]]] = OrderedDict()

    def record(self, user_id: str, item_ids: Sequence[str]) -> None:
        if self.n_responses == 0:
            return
        history = self._users.pop(user_id, [])
        history.append(tuple(item_ids))
        self._users[user_id] = history[-self.n_responses :]
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    def items(self, user_id: str) -> frozenset[str]:
        history = self._users.get(user_id)
        if history is None:
            return frozenset()
        self._users.move_to_end(user_id)
        return frozenset(item for shown in history for item in shown)


def genre_matrix(values: Iterable[object], n: int, width: int) -> np.ndarray:
    """A column of per-item vectors (lists, arrays, None) as an (n, width) float matrix; gaps are zeros.

    >>> genre_matrix([[1, 0], None, [0, 1]], 3, 2).tolist()
    [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    cells = list(values)
    rows = [
        row
        for row, value in enumerate(cells)
        if isinstance(value, (list, tuple, np.ndarray)) and len(value) == width
    ]
    out = np.zeros((n, width), dtype=np.float64)
    if not rows:
        return out
    present = cells if len(rows) == len(cells) else [cells[row] for row in rows]
    try:  # every present row a flat vector: one conversion instead of a loop over rows
        block = np.array(present, dtype=np.float64)
    except (ValueError, TypeError):
        block = None
    if block is not None and block.shape == (len(rows), width):
        out[rows] = block
    else:
        for row, value in zip(rows, present, strict=True):
            out[row] = np.asarray(value, dtype=np.float64)
    # NaN -> 0 once for the matrix, not once per row.
    return np.nan_to_num(out, copy=False)


class ItemVectors:
    """Item embeddings looked up by id (the retrieval model's item side), unit-normalised once.

    >>> vectors = ItemVectors(["a", "b"], np.array([[3.0, 4.0], [0.0, 2.0]]))
    >>> vectors.lookup(["b", "zz"]).tolist()
    [[0.0, 1.0], [0.0, 0.0]]
    >>> vectors.lookup(["b", "a"], rows=np.array([1, 0])).tolist()
    [[0.0, 1.0], [0.6, 0.8]]
    """

    def __init__(self, item_ids: Sequence[str], embeddings: np.ndarray) -> None:
        if len(item_ids) != len(embeddings):
            raise RerankError(f"{len(item_ids)} item ids but {len(embeddings)} embeddings")
        row = {item: j for j, item in enumerate(item_ids)}  # a repeated id: its last row
        # One hash lookup per id in pandas' table, not a Python call each: a catalogue of 1M ids
        # makes every lookup a cache miss, and a request looks up all its candidates.
        self._ids = pd.Index(list(row), dtype=object)
        self._rows = np.fromiter(row.values(), dtype=np.int64, count=len(row))
        self._catalog = np.array(item_ids, dtype=object)  # row j's id
        # A zero row at the end stands for unknown items: similar to nothing.
        self._matrix = np.vstack([_unit_rows(embeddings), np.zeros((1, embeddings.shape[1]))])

    def lookup(self, item_ids: Sequence[str], rows: np.ndarray | None = None) -> np.ndarray:
        """(n, dim) unit vectors; zeros for ids without an embedding.

        `rows`, the ids' rows of the catalogue these vectors were built from (retrieval's own), spare
        the hash lookups when they hold: they are checked to name these very ids, and ignored otherwise
        (another model version's catalogue, say).
        """
        if rows is not None and self._names(item_ids, rows):
            hinted: np.ndarray = self._matrix[rows]
            return hinted
        found = self._ids.get_indexer(pd.Index(item_ids, dtype=object))
        matched: np.ndarray = self._matrix[np.where(found >= 0, self._rows[found], len(self._matrix) - 1)]
        return matched

    def _names(self, item_ids: Sequence[str], rows: np.ndarray) -> bool:
        """Whether catalogue `rows` hold exactly `item_ids`, in order."""
        rows = np.asarray(rows)
        if rows.shape != (len(item_ids),) or rows.dtype.kind not in "iu":
            return False
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self._catalog)):
            return False
        return bool((self._catalog[rows] == np.array(item_ids, dtype=object)).all())
