"""Properties of the beyond-accuracy metrics on generated lists (Hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from evaluation.beyond_accuracy import (  # noqa: E402
    catalogue_coverage,
    category_diversity,
    exposure_gini,
    gini_index,
    intra_list_diversity,
    list_metrics,
    long_tail_share,
    novelty,
    top_share,
)

CATALOGUE = [f"i{n}" for n in range(10)]
one_list = st.lists(st.sampled_from(CATALOGUE), unique=True, min_size=1, max_size=6)
lists = st.lists(one_list, min_size=1, max_size=8)
fast = settings(max_examples=50, deadline=None, database=None)


@fast
@given(lists, st.randoms(use_true_random=False))
def test_bounds_and_list_order_invariance(recs: list[list[str]], rnd: object) -> None:
    shuffled = list(recs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    n = len(CATALOGUE)
    for metric in (catalogue_coverage, exposure_gini, top_share):
        value = metric(recs, CATALOGUE)
        assert value == pytest.approx(metric(shuffled, CATALOGUE))
        assert 0.0 <= value <= 1.0
    assert exposure_gini(recs, CATALOGUE) <= (n - 1) / n + 1e-12
    counts = {item: i + 1 for i, item in enumerate(CATALOGUE)}
    assert 0.0 <= long_tail_share(recs, counts) <= 1.0
    assert 0.0 <= novelty(recs, counts, n_users=len(CATALOGUE)) <= np.log2(n + 1)


@fast
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=20))
def test_gini_is_scale_and_order_free(values: list[float]) -> None:
    x = np.array(values)
    if x.sum() <= 1e-9:
        return
    g = gini_index(x)
    assert 0.0 <= g <= 1.0
    assert gini_index(3 * x) == pytest.approx(g, abs=1e-9)
    assert gini_index(x[::-1]) == pytest.approx(g, abs=1e-9)


def test_gini_of_equal_values_is_exactly_zero() -> None:
    # the sum of (2i - n - 1) x over equal values rounds to -2.7e-17 for this value (found by Hypothesis)
    assert gini_index(np.full(5, 42.66788193615015)) == 0.0


@fast
@given(lists, st.dictionaries(st.sampled_from(CATALOGUE), st.sets(st.sampled_from("xyz")), min_size=10))
def test_category_diversity_bounds(recs: list[list[str]], cats: dict[str, set[str]]) -> None:
    if not any(len(r) > 1 for r in recs):
        return
    assert 0.0 <= category_diversity(recs, cats) <= 1.0


@fast
@given(lists, st.integers(0, 2**32 - 1))
def test_embedding_diversity_bounds_and_identical_items(recs: list[list[str]], seed: int) -> None:
    if not any(len(r) > 1 for r in recs):
        return
    vectors = np.random.default_rng(seed).normal(size=(len(CATALOGUE), 4))
    assert 0.0 <= intra_list_diversity(recs, CATALOGUE, vectors) <= 2.0
    same = np.ones((len(CATALOGUE), 4))  # every item the same direction: nothing to tell them apart
    assert intra_list_diversity(recs, CATALOGUE, same) == pytest.approx(0.0, abs=1e-12)


@fast
@given(lists, st.dictionaries(st.sampled_from(CATALOGUE), st.sets(st.sampled_from("xyz")), min_size=10))
def test_list_metrics_agree_with_the_single_metrics(recs: list[list[str]], cats: dict[str, set[str]]) -> None:
    # list_metrics reuses one distance matrix per list across K: it must equal cutting, then measuring
    out = list_metrics(recs, [1, 2, 4], CATALOGUE, cats, {CATALOGUE[0]: 2}, n_users=3)
    for k in (1, 2, 4):
        cut = [r[:k] for r in recs]
        if any(len(r) > 1 for r in cut):
            assert out[f"category_diversity@{k}"] == pytest.approx(category_diversity(cut, cats))
        else:
            assert np.isnan(out[f"category_diversity@{k}"])
        assert out[f"coverage@{k}"] == pytest.approx(catalogue_coverage(cut, CATALOGUE))
        assert out[f"novelty@{k}"] == pytest.approx(novelty(cut, {CATALOGUE[0]: 2}, n_users=3))
        assert out[f"gini@{k}"] == pytest.approx(exposure_gini(cut, CATALOGUE))
