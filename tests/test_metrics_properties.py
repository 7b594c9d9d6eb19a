"""Properties every ranking metric must keep, on generated rankings (Hypothesis)."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from evaluation.metrics import (  # noqa: E402
    RANKING_METRICS,
    average_precision_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    reciprocal_rank_at_k,
)

ITEMS = [f"i{n}" for n in range(12)]
rankings = st.lists(st.sampled_from(ITEMS), unique=True, max_size=12)
relevant_sets = st.sets(st.sampled_from(ITEMS), min_size=1, max_size=6)
ks = st.integers(min_value=1, max_value=15)
fast = settings(max_examples=60, deadline=None, database=None)


@fast
@given(rankings, relevant_sets, ks)
def test_every_metric_lies_in_unit_interval(ranked: list[str], relevant: set[str], k: int) -> None:
    m = ranking_metrics({"u": ranked}, {"u": relevant}, [k])
    for name in RANKING_METRICS:
        assert 0.0 <= m[f"{name}@{k}"] <= 1.0 + 1e-12, name


@fast
@given(relevant_sets, st.lists(st.sampled_from(ITEMS), unique=True, max_size=12), ks)
def test_ideal_ranking_scores_one(relevant: set[str], tail: list[str], k: int) -> None:
    # relevant items first, anything else after: NDCG, MRR and hit are 1; recall and AP are 1 once K
    # reaches every relevant item
    ranked = sorted(relevant) + [item for item in tail if item not in relevant]
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(1.0)
    assert reciprocal_rank_at_k(ranked, relevant, k) == 1.0
    if k >= len(relevant):
        assert recall_at_k(ranked, relevant, k) == pytest.approx(1.0)
        assert average_precision_at_k(ranked, relevant, k) == pytest.approx(1.0)
    else:
        assert precision_at_k(ranked, relevant, k) == 1.0


@fast
@given(st.dictionaries(st.sampled_from(ITEMS), st.floats(0.5, 4.0), min_size=1, max_size=6), ks)
def test_graded_ideal_ranking_scores_one(grades: dict[str, float], k: int) -> None:
    ranked = sorted(grades, key=lambda item: -grades[item])
    assert ndcg_at_k(ranked, grades, k) == pytest.approx(1.0)
    assert ndcg_at_k(ranked, grades, k, gain="exponential") == pytest.approx(1.0)


@fast
@given(rankings, relevant_sets, ks, st.randoms(use_true_random=False))
def test_order_within_top_k_does_not_change_set_metrics(
    ranked: list[str], relevant: set[str], k: int, rnd: object
) -> None:
    head, tail = ranked[:k], ranked[k:]
    shuffled = list(head)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert precision_at_k(shuffled + tail, relevant, k) == precision_at_k(ranked, relevant, k)
    assert recall_at_k(shuffled + tail, relevant, k) == recall_at_k(ranked, relevant, k)


@fast
@given(rankings, relevant_sets, ks)
def test_metrics_grow_with_k(ranked: list[str], relevant: set[str], k: int) -> None:
    m = ranking_metrics({"u": ranked}, {"u": relevant}, [k, k + 1])
    for name in ("recall", "mrr", "map", "hit_rate"):
        assert m[f"{name}@{k + 1}"] >= m[f"{name}@{k}"] - 1e-12, name


@fast
@given(
    st.dictionaries(st.text("abc", min_size=1, max_size=3), st.tuples(rankings, relevant_sets), min_size=1)
)
def test_batch_is_the_mean_of_single_users(users: dict[str, tuple[list[str], set[str]]]) -> None:
    # user order and batching must not matter: the batch equals the mean of one-user batches
    batch = ranking_metrics({u: r for u, (r, _) in users.items()}, {u: s for u, (_, s) in users.items()}, [3])
    singles = [ranking_metrics({"u": r}, {"u": s}, [3]) for r, s in users.values()]
    for key, value in batch.items():
        assert value == pytest.approx(sum(one[key] for one in singles) / len(singles))


@fast
@given(rankings, relevant_sets, st.sampled_from(ITEMS), ks)
def test_moving_a_relevant_item_up_never_lowers_ndcg(
    ranked: list[str], relevant: set[str], item: str, k: int
) -> None:
    if item not in ranked or item not in relevant:
        return
    pos = ranked.index(item)
    if pos == 0 or ranked[pos - 1] in relevant:
        return
    swapped = list(ranked)
    swapped[pos - 1], swapped[pos] = swapped[pos], swapped[pos - 1]
    assert ndcg_at_k(swapped, relevant, k) >= ndcg_at_k(ranked, relevant, k) - 1e-12
    assert average_precision_at_k(swapped, relevant, k) >= average_precision_at_k(ranked, relevant, k) - 1e-12
