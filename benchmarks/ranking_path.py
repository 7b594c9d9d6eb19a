"""The ranking stage's own CPU work for one request of 500 candidates, before and after vectorising it.

In process, no server, no store: a seeded candidate frame with every ranker_v2 column (genre vectors as
Python lists, some NumPy arrays, some None or NaN; NaN scalars; co-view lists), made the way serving
makes it, by encoding the item records with `recsys.features.packed` and decoding them. Timed, each
current function against its previous implementation (the `_old_*` copies below), interleaved rep by rep
so a noisy machine moves both alike:

- `packed decode`: 500 item records and the user's record -> the candidate frame
  (`decode_records` + `frame_columns` + `pd.DataFrame`, what `PackedReader` does after its read);
- `ranker matrix`: `build_ranker_matrix(..., "ranker_v2")`;
- `re-rank`: `item_info` (genre matrix, age) + `rerank` (MMR over genre vectors, caps) with the
  default `RerankConfig`;
- `co-view scores`: `coview_scores` over the candidates' co-view lists (part of the ranker matrix; both
  matrix builders call the current one, so `ranker matrix` compares the genre columns only);
- `stage total`: the three one after the other.

Each pair's outputs are checked equal first (the matrix bit for bit).

    .venv/bin/python benchmarks/ranking_path.py [--repeats 300] [--candidates 500]

Writes `benchmarks/results/ranking_path.json` and `.md`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from saving import run_meta, save

from recsys.features.coview import coview_scores
from recsys.features.packed import (
    PackedGroup,
    Records,
    _one_record,
    build_group,
    decode_records,
    encode_records,
    frame_columns,
)
from recsys.vocab import DEVICE_TYPES, GENRES
from serving.reranking import (
    ItemInfo,
    RerankConfig,
    RerankError,
    _check,
    _unit_rows,
    allowed,
    apply_pins,
    cap_categories,
    freshness_bonus,
    rerank,
    scale_scores,
)
from serving.stages import AGE_COLUMN, GENRE_COLUMN, item_info
from training.ranker_features import (
    RANKER_FEATURE_SERVICE,
    RANKER_V2_SERVICE,
    RankerFeatureError,
    _log1p,
    _log1p_scalar,
    _scalar,
    _v2_columns,
    build_ranker_matrix,
    ranker_feature_names,
)

SERVICE = RANKER_V2_SERVICE
N_CANDIDATES = 500
REPEATS = 300
# The ranker_v2 item columns and their Feast value types (feature_repo), in the service's order.
ITEM_TYPES: dict[str, str] = {
    "item_genre_vector": "FLOAT_LIST",
    "item_n_events": "INT64",
    "item_n_positive": "INT64",
    "item_n_events_365d": "INT64",
    "item_positive_rate": "FLOAT",
    "item_age_days": "FLOAT",
    "item_popularity_7d": "FLOAT",
    "item_age_hours": "FLOAT",
    "item_avg_completion": "FLOAT",
    "item_coview_items": "STRING_LIST",
    "item_coview_counts": "INT64_LIST",
}


# --- the previous implementations, kept callable as the baseline --------------------------------------


def _old_genre_vector(value: Any) -> np.ndarray:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.zeros(len(GENRES), dtype=np.float32)
    vector: np.ndarray = np.nan_to_num(np.asarray(value, dtype=np.float32).ravel())
    if len(vector) != len(GENRES):
        raise RankerFeatureError(f"genre vector has length {len(vector)}, expected {len(GENRES)}")
    return vector


def _old_build_ranker_matrix(
    user: Mapping[str, Any],
    items: pd.DataFrame,
    retrieval_scores: np.ndarray,
    service: str = RANKER_FEATURE_SERVICE,
) -> np.ndarray:
    names = ranker_feature_names(service)
    scores = np.asarray(retrieval_scores, dtype=np.float32).ravel()
    n = len(items)
    if len(scores) != n:
        raise RankerFeatureError(f"{len(scores)} retrieval scores for {n} candidate items")
    out = np.full((n, len(names)), np.nan, dtype=np.float32)
    if n == 0:
        return out
    col = {name: i for i, name in enumerate(names)}

    order = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=np.float32)
    rank[order] = np.arange(n, dtype=np.float32)
    out[:, col["retrieval_score"]] = scores
    out[:, col["retrieval_rank"]] = rank
    out[:, col["retrieval_score_gap"]] = scores - scores.max()

    n_events = _scalar(user.get("user_n_events"))
    n_positive = _scalar(user.get("user_n_positive"))
    out[:, col["user_log_n_events"]] = _log1p_scalar(n_events)
    out[:, col["user_log_n_positive"]] = _log1p_scalar(n_positive)
    out[:, col["user_positive_rate"]] = n_positive / n_events if n_events > 0 else np.nan
    out[:, col["user_log_n_events_30d"]] = _log1p_scalar(_scalar(user.get("user_n_events_30d")))
    out[:, col["user_days_since_first_event"]] = _scalar(user.get("user_days_since_first_event"))
    out[:, col["user_days_since_last_event"]] = _scalar(user.get("user_days_since_last_event"))

    def item_column(name: str) -> np.ndarray:
        if name not in items.columns:
            return np.full(n, np.nan, dtype=np.float32)
        values: np.ndarray = pd.to_numeric(items[name], errors="coerce").to_numpy(
            dtype=np.float32, na_value=np.nan
        )
        return values

    out[:, col["item_log_n_events"]] = _log1p(item_column("item_n_events"))
    out[:, col["item_log_n_positive"]] = _log1p(item_column("item_n_positive"))
    out[:, col["item_log_n_events_365d"]] = _log1p(item_column("item_n_events_365d"))
    out[:, col["item_positive_rate"]] = item_column("item_positive_rate")
    age = item_column("item_age_days")
    out[:, col["item_age_days"]] = np.where(age < 0, np.nan, age)

    affinity = _old_genre_vector(user.get("user_genre_affinity"))
    if "item_genre_vector" in items.columns:
        genres = np.stack([_old_genre_vector(v) for v in items["item_genre_vector"]])
    else:
        genres = np.zeros((n, len(GENRES)), dtype=np.float32)
    n_genres = genres.sum(axis=1)
    dot = genres @ affinity
    out[:, col["item_n_genres"]] = n_genres
    out[:, col["genre_affinity_dot"]] = dot
    out[:, col["genre_affinity_max"]] = np.where(genres > 0, affinity[None, :], 0.0).max(axis=1)
    out[:, col["genre_affinity_mean"]] = np.divide(
        dot, n_genres, out=np.zeros(n, dtype=np.float32), where=n_genres > 0
    )
    if service == RANKER_V2_SERVICE:
        _v2_columns(out, col, user, items, genres, item_column)
    return out


def _old_genre_matrix(values: Iterable[object], n: int, width: int) -> np.ndarray:
    values = list(values)
    try:
        dense = np.asarray(values, dtype=np.float64)
        if dense.shape == (n, width):
            return np.nan_to_num(dense)
    except (ValueError, TypeError):
        pass
    out = np.zeros((n, width), dtype=np.float64)
    for row, value in enumerate(values):
        if isinstance(value, (list, tuple, np.ndarray)) and len(value) == width:
            out[row] = np.nan_to_num(np.asarray(value, dtype=np.float64))
    return out


def _old_item_info(items: pd.DataFrame) -> ItemInfo:
    categories = (
        _old_genre_matrix(items[GENRE_COLUMN], len(items), len(GENRES))
        if GENRE_COLUMN in items.columns
        else None
    )
    age = (
        pd.to_numeric(items[AGE_COLUMN], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if AGE_COLUMN in items.columns
        else None
    )
    return ItemInfo(embeddings=None, categories=categories, age_days=age)


def _old_mmr_order(relevance: np.ndarray, vectors: np.ndarray | None, lam: float, depth: int) -> np.ndarray:
    relevance = np.asarray(relevance, dtype=np.float64)
    n = len(relevance)
    by_relevance = np.argsort(-relevance, kind="stable")
    if vectors is None or lam >= 1.0 or n < 2:
        return by_relevance
    unit = _unit_rows(vectors)
    similarity = unit @ unit.T
    weight = 1.0 - lam
    gain = lam * relevance
    value = gain.copy()
    max_sim = np.full(n, -np.inf)
    blocked = np.zeros(n)
    penalty = np.empty(n)
    picked = np.empty(min(depth, n), dtype=np.int64)
    for step in range(len(picked)):
        best = int(np.argmax(value))
        picked[step] = best
        blocked[best] = -np.inf
        np.maximum(max_sim, similarity[best], out=max_sim)
        np.multiply(max_sim, weight, out=penalty)
        np.subtract(gain, penalty, out=value)
        value += blocked
    free = np.isfinite(blocked)
    rest = by_relevance[free[by_relevance]]
    return np.concatenate([picked, rest])


def _old_rerank(
    item_ids: Sequence[str], scores: np.ndarray, info: ItemInfo, config: RerankConfig
) -> tuple[list[str], list[float]]:
    """`rerank` as it was (no exclusions, bonus or k: what the ranking stage passes here)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(item_ids)
    if scores.shape != (n,):
        raise RerankError(f"{n} item ids but scores of shape {scores.shape}")
    _check(n, info)
    rows = np.flatnonzero(allowed(item_ids, set(config.blocklist)))
    kept_ids = [item_ids[int(r)] for r in rows]
    kept_scores = scores[rows]
    kept = info.take(rows)
    relevance = scale_scores(kept_scores)
    if kept.age_days is not None and config.freshness_weight > 0:
        relevance = relevance + freshness_bonus(
            kept.age_days, config.freshness_weight, config.freshness_half_life_days
        )
    vectors = kept.embeddings if kept.embeddings is not None else kept.categories
    order = _old_mmr_order(relevance, vectors, config.mmr_lambda, config.depth)
    if kept.categories is not None and config.max_per_category is not None:
        order = cap_categories(order, kept.categories, config.max_per_category, config.cap_window)
    ids = [kept_ids[r] for r in order]
    out = kept_scores[order].tolist()
    if config.pins:
        ids, out = apply_pins(ids, out, [p for p in config.pins if p.item_id not in config.blocklist])
    return ids, out


def _old_coview_scores(
    recent_items: Sequence[str] | None, neighbours: Iterable[Any], counts: Iterable[Any]
) -> tuple[np.ndarray, np.ndarray]:
    def items_of(value: Any) -> list[Any] | None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        return list(value)

    pairs = list(zip(neighbours, counts, strict=True))
    score = np.zeros(len(pairs), dtype=np.float32)
    share = np.full(len(pairs), np.nan, dtype=np.float32)
    recent = items_of(recent_items)
    if recent is None:
        return np.full(len(pairs), np.nan, dtype=np.float32), share
    mine = set(recent)
    for row, (items, values) in enumerate(pairs):
        listed, weights = items_of(items), items_of(values)
        if not listed or weights is None:
            continue
        weight = np.asarray(weights, dtype=np.float64)
        hit = np.fromiter((item in mine for item in listed), dtype=bool, count=len(listed))
        score[row] = weight[hit].sum()
        total = weight.sum()
        share[row] = score[row] / total if total > 0 else np.nan
    return score, share


def _old_string_values(group: PackedGroup, records: Records) -> dict[int, list[Any]]:
    assert records.strings is not None
    fixed = records.fixed
    out: dict[int, list[Any]] = {j: [] for j in group.strings}
    counts = {j: fixed[f"n{j}"].tolist() for j in group.strings}
    nulls = {j: fixed["null"][:, j].tolist() for j in group.strings}
    for i, strings in enumerate(records.strings):
        at = 0
        for j in group.strings:
            n = counts[j][i]
            if nulls[j][i]:
                out[j].append(None)
            else:
                out[j].append(strings[at : at + n] if group.columns[j].is_list else strings[at])
            at += n
    return out


def _old_objects(values: list[Any]) -> np.ndarray:
    cells = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        cells[i] = value
    return cells


def _old_per_row(per_record: list[Any], rows: np.ndarray, null: np.ndarray, distinct: bool) -> np.ndarray:
    if distinct:
        cells = _old_objects(per_record)[np.where(null, 0, rows)]
        cells[null] = None
        return cells
    return _old_objects([None if r < 0 else per_record[r].copy() for r in np.where(null, -1, rows).tolist()])


def _old_frame_columns(group: PackedGroup, records: Records, rows: np.ndarray) -> dict[str, np.ndarray]:
    n = len(rows)
    if not len(records):
        return {column.name: np.full(n, None, dtype=object) for column in group.columns}
    if len(records) == 1 and not (rows < 0).any():
        return _one_record(group, records, n)
    unknown = rows < 0
    identity = n == len(records) and bool((rows == np.arange(n)).all())
    taken = records.fixed if identity else records.fixed[np.where(unknown, 0, rows)]
    used = rows[~unknown]
    distinct = identity or bool((np.diff(used) > 0).all()) or len(np.unique(used)) == len(used)
    nulls = taken["null"].astype(bool)
    if not identity:
        nulls[unknown] = True
    strings = _old_string_values(group, records) if group.strings else {}
    out: dict[str, np.ndarray] = {}
    for j, column in enumerate(group.columns):
        null = nulls[:, j]
        if null.all():
            out[column.name] = np.full(n, None, dtype=object)
        elif column.is_string:
            per_record = strings[j]
            if column.is_list:
                out[column.name] = _old_per_row(per_record, rows, null, distinct)
            else:
                cells = _old_objects(per_record)[np.where(null, 0, rows)]
                cells[null] = None
                out[column.name] = cells
        elif column.is_list:
            lengths = records.fixed[f"n{j}"]
            cells = records.fixed[f"c{j}"]
            nested = (column.objects[cells] if column.vocabulary else cells).tolist()
            if not (lengths == column.length).all():
                nested = [row[:k] for row, k in zip(nested, lengths.tolist(), strict=True)]
            out[column.name] = _old_per_row(nested, rows, null, distinct)
        elif column.value_type == "BOOL":
            values = taken[f"c{j}"]
            if null.any():
                flags = values.astype(object)
                flags[null] = None
                out[column.name] = flags
            else:
                out[column.name] = values.astype(bool)
        else:
            values = taken[f"c{j}"]
            if null.any():
                numbers = values.astype(np.float64)
                numbers[null] = np.nan
                out[column.name] = numbers
            else:
                out[column.name] = values.astype(np.int64 if values.dtype.kind == "i" else np.float64)
    return out


# --- the request ---------------------------------------------------------------------------------------


def _f32(value: float) -> float:
    """A Python float that a FLOAT feature holds exactly (what Feast gives back)."""
    return float(np.float32(value))


def _multi_hot(rng: np.random.Generator) -> list[float]:
    vector = [0.0] * len(GENRES)
    for j in rng.choice(len(GENRES), size=int(rng.integers(1, 4)), replace=False):
        vector[int(j)] = 1.0
    return vector


def item_rows(rng: np.random.Generator, n: int) -> list[tuple[Any, ...]]:
    """Python values per candidate, in `ITEM_TYPES` order; about 3% of items have no genres, 8% no
    completion rate, 20% no co-views, as a catalogue with new items does."""
    rows = []
    for _ in range(n):
        k = int(rng.integers(1, 11)) if rng.random() > 0.2 else 0
        rows.append(
            (
                _multi_hot(rng) if rng.random() > 0.03 else None,
                int(rng.integers(0, 5000)),
                int(rng.integers(0, 500)),
                int(rng.integers(0, 2000)),
                _f32(rng.random()),
                _f32(rng.random() * 9000) if rng.random() > 0.02 else None,
                _f32(rng.random() * 50),
                _f32(rng.random() * 200_000),
                _f32(rng.random()) if rng.random() > 0.08 else None,
                [str(i) for i in rng.integers(0, 9000, k)] if k else None,
                [int(c) for c in rng.integers(1, 60, k)] if k else None,
            )
        )
    return rows


def user_row(rng: np.random.Generator) -> dict[str, Any]:
    """One user's ranker_v2 features (a missing session length, as for a user without sessions)."""

    def shares() -> list[float]:
        values = rng.random(len(GENRES)).astype(np.float32)
        normalised: list[float] = (values / values.sum()).tolist()
        return normalised

    return {
        "user_genre_affinity": shares(),
        "user_n_events": 120,
        "user_n_positive": 31,
        "user_n_events_30d": 14,
        "user_days_since_first_event": 412.0,
        "user_days_since_last_event": 2.5,
        "user_genre_affinity_30d": shares(),
        "user_account_age_days": 500.0,
        "user_avg_session_minutes_7d": None,
        "user_preferred_device": DEVICE_TYPES[0],
        "user_n_events_7d": 3,
        "user_n_sessions_7d": 1,
        "user_n_sessions_30d": 6,
        "user_n_active_days_30d": 5,
        "user_category_affinity": np.float32(rng.random(len(GENRES))).tolist(),
        "user_recency_affinity": shares(),
        "user_recent_items": [str(i) for i in rng.integers(0, 9000, 30)],
    }


def _mixed_genres(items: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The decoded frame with 10% of its genre cells as float32 arrays (as an offline frame holds them),
    a NaN cell (a missing list after a merge) and a NaN inside one vector: what the transform must take."""
    cells = list(items[GENRE_COLUMN])
    for row in np.flatnonzero(rng.random(len(cells)) < 0.1).tolist():
        if cells[row] is not None:
            cells[row] = np.asarray(cells[row], dtype=np.float32)
    cells[1] = float("nan")
    if isinstance(cells[2], list):
        cells[2] = [float("nan"), *cells[2][1:]]
    out = items.copy()
    out[GENRE_COLUMN] = np.fromiter(cells, dtype=object, count=len(cells))
    return out


def _timed(pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], repeats: int) -> dict[str, Any]:
    """Old and new of each pair, alternating rep by rep; milliseconds."""
    times: dict[str, dict[str, list[float]]] = {name: {"old": [], "new": []} for name in pairs}
    for name, (old, new) in pairs.items():
        for _ in range(10):  # warm-up
            old()
            new()
        for rep in range(repeats):
            for which, call in (("old", old), ("new", new)) if rep % 2 else (("new", new), ("old", old)):
                started = time.perf_counter()
                call()
                times[name][which].append((time.perf_counter() - started) * 1000.0)
    out: dict[str, Any] = {}
    for name, both in times.items():
        figures: dict[str, Any] = {
            which: {
                "median_ms": round(statistics.median(ms), 4),
                "p99_ms": round(float(np.percentile(ms, 99)), 4),
            }
            for which, ms in both.items()
        }
        figures["speedup"] = round(figures["old"]["median_ms"] / figures["new"]["median_ms"], 2)
        out[name] = figures
    return out


def measure(n: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    names, types = list(ITEM_TYPES), list(ITEM_TYPES.values())
    rows = item_rows(rng, n)
    group = build_group("item_id", names, types, rows)
    blobs = encode_records(group, rows)
    ids = [str(i) for i in range(n)]
    identity = np.arange(n)

    def decode(columns: Callable[[PackedGroup, Records, np.ndarray], dict[str, np.ndarray]]) -> pd.DataFrame:
        records = decode_records(group, blobs)
        return pd.DataFrame({"item_id": ids, **columns(group, records, identity)}, copy=False)

    decoded_old, decoded_new = decode(_old_frame_columns), decode(frame_columns)
    pd.testing.assert_frame_equal(decoded_old, decoded_new)

    items = _mixed_genres(decoded_new, rng)
    user = user_row(rng)
    scores = np.sort(rng.normal(size=n).astype(np.float32))[::-1].copy()
    matrix_old = _old_build_ranker_matrix(user, items, scores, SERVICE)
    matrix_new = build_ranker_matrix(user, items, scores, SERVICE)
    assert matrix_old.tobytes() == matrix_new.tobytes(), "the ranker matrix changed"

    config = RerankConfig()
    ranked = np.random.default_rng(seed + 1).normal(size=n)  # the ranker's scores

    def rerank_old() -> tuple[list[str], list[float]]:
        return _old_rerank(ids, ranked, _old_item_info(items), config)

    def rerank_new() -> tuple[list[str], list[float]]:
        return rerank(ids, ranked, item_info(items, ids, None), config)

    assert rerank_old() == rerank_new(), "re-ranking changed"

    recent = user["user_recent_items"]
    neighbours, counts = items["item_coview_items"], items["item_coview_counts"]
    for got, want in zip(
        coview_scores(recent, neighbours, counts), _old_coview_scores(recent, neighbours, counts), strict=True
    ):
        assert got.tobytes() == want.tobytes(), "co-view scores changed"

    def stage_old() -> Any:
        frame = decode(_old_frame_columns)
        _old_build_ranker_matrix(user, frame, scores, SERVICE)
        return _old_rerank(ids, ranked, _old_item_info(frame), config)

    def stage_new() -> Any:
        frame = decode(frame_columns)
        build_ranker_matrix(user, frame, scores, SERVICE)
        return rerank(ids, ranked, item_info(frame, ids, None), config)

    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "packed decode": (lambda: decode(_old_frame_columns), lambda: decode(frame_columns)),
        "ranker matrix": (
            lambda: _old_build_ranker_matrix(user, items, scores, SERVICE),
            lambda: build_ranker_matrix(user, items, scores, SERVICE),
        ),
        "re-rank": (rerank_old, rerank_new),
        # Part of the ranker matrix; both matrix builders above call the current co-view scoring.
        "co-view scores": (
            lambda: _old_coview_scores(recent, neighbours, counts),
            lambda: coview_scores(recent, neighbours, counts),
        ),
        "stage total": (stage_old, stage_new),
    }
    return {"candidates": n, "repeats": repeats, "service": SERVICE, "results": _timed(pairs, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=N_CANDIDATES)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    command = "python benchmarks/ranking_path.py " + " ".join(sys.argv[1:])
    figures = {**run_meta(command.strip()), **measure(args.candidates, args.repeats)}
    lines = [
        f"# Ranking stage CPU per request ({args.candidates} candidates, {SERVICE})",
        "",
        f"`{figures['command']}` ({figures['when']}, {figures['cores']} cores); old and new alternate rep "
        f"by rep, {args.repeats} reps each.",
        "",
        "| step | old median / p99 ms | new median / p99 ms | speed-up (medians) |",
        "|---|---|---|---|",
    ]
    for name, result in figures["results"].items():
        old, new = result["old"], result["new"]
        lines.append(
            f"| {name} | {old['median_ms']:.3f} / {old['p99_ms']:.3f} | "
            f"{new['median_ms']:.3f} / {new['p99_ms']:.3f} | {result['speedup']:.2f}x |"
        )
    print("\n".join(lines))
    save("ranking_path", figures, "\n".join(lines))


if __name__ == "__main__":
    main()
