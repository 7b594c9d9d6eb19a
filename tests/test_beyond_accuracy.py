"""Beyond-accuracy metrics against hand-computed values, and their properties (Hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.beyond_accuracy import (
    catalogue_coverage,
    category_diversity,
    exposure_counts,
    exposure_gini,
    gini_index,
    head_items,
    intra_list_diversity,
    list_metrics,
    long_tail_share,
    novelty,
    top_share,
)
from evaluation.metrics import MetricError

CATALOGUE = ["a", "b", "c", "d", "e"]
LISTS = [["a", "b"], ["a", "c"], ["a", "b"]]  # exposure a 3, b 2, c 1, d 0, e 0


def test_coverage_and_exposure_by_hand() -> None:
    assert exposure_counts(LISTS, CATALOGUE).tolist() == [3, 2, 1, 0, 0]
    assert catalogue_coverage(LISTS, CATALOGUE) == pytest.approx(3 / 5)


def test_gini_by_hand() -> None:
    # sorted 0 0 1 2 3, n 5, sum 6: sum (2i - 6) x_i = (0)1 + (2)2 + (4)3 = 16 -> 16 / (5 * 6)
    assert exposure_gini(LISTS, CATALOGUE) == pytest.approx(16 / 30)
    assert gini_index(np.array([5, 5, 5])) == pytest.approx(0.0)
    assert gini_index(np.array([0, 0, 0, 7])) == pytest.approx(3 / 4)


def test_top_share_by_hand() -> None:
    # 1% of 5 items rounds up to 1 item: "a" holds 3 of 6 exposures
    assert top_share(LISTS, CATALOGUE) == pytest.approx(0.5)
    # 40% -> 2 items: a + b = 5 of 6
    assert top_share(LISTS, CATALOGUE, fraction=0.4) == pytest.approx(5 / 6)


def test_long_tail_share_by_hand() -> None:
    counts = {"a": 50, "b": 30, "c": 15, "d": 5}
    # 20% of 100 interactions: "a" alone (50) reaches it; 80%: a + b (80)
    assert head_items(counts, 0.2) == {"a"}
    assert head_items(counts, 0.8) == {"a", "b"}
    # 6 slots, 3 of them "a": tail share 3/6 with head {a}; 1/6 ("c") with head {a, b}
    assert long_tail_share(LISTS, counts, 0.2) == pytest.approx(0.5)
    assert long_tail_share(LISTS, counts, 0.8) == pytest.approx(1 / 6)


def test_novelty_by_hand() -> None:
    item_users = {"a": 9, "b": 4, "c": 0}
    # n_users 9: p(a) = 10/10, p(b) = 5/10, p(c) = 1/10; slots a a a b b c
    expected = (3 * 0 + 2 * 1 + math.log2(10)) / 6
    assert novelty(LISTS, item_users, n_users=9) == pytest.approx(expected)


def test_intra_list_diversity_by_hand() -> None:
    ids = ["a", "b", "c"]
    vectors = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # cos(a, b) = 1/sqrt2, cos(a, c) = 0, cos(b, c) = 1/sqrt2
    list_1 = ((1 - 1 / math.sqrt(2)) + 1 + (1 - 1 / math.sqrt(2))) / 3
    # ["a"] has one item and is left out; ["a", "c"]: distance 1
    assert intra_list_diversity([["a", "b", "c"], ["a"], ["a", "c"]], ids, vectors) == pytest.approx(
        (list_1 + 1) / 2
    )


def test_category_diversity_by_hand() -> None:
    cats = {"a": {"drama"}, "b": {"drama", "comedy"}, "c": set(), "d": set()}
    # a-b: 1 - 1/2; a-c: 1; b-c: 1 -> list 1 = 2.5 / 3; c-d: both empty, alike -> 0
    assert category_diversity([["a", "b", "c"], ["c", "d"]], cats) == pytest.approx((2.5 / 3 + 0) / 2)


def test_list_metrics_cut_each_list_at_k() -> None:
    cats = {item: {"x"} for item in CATALOGUE}
    m = list_metrics(LISTS, [1, 2], CATALOGUE, cats, {"a": 1}, n_users=1)
    assert m["coverage@1"] == pytest.approx(1 / 5)  # only "a" in the first slot
    assert m["coverage@2"] == pytest.approx(3 / 5)
    assert math.isnan(m["category_diversity@1"])  # one-item lists have no pairs
    assert m["category_diversity@2"] == 0.0  # every item shares the one category
    assert m["gini@1"] == pytest.approx(gini_index(np.array([3, 0, 0, 0, 0])))


def test_bad_input_is_refused() -> None:
    with pytest.raises(MetricError, match="not in the catalogue"):
        catalogue_coverage([["z"]], CATALOGUE)
    with pytest.raises(MetricError, match="no recommendation lists"):
        exposure_gini([], CATALOGUE)
    with pytest.raises(MetricError, match="all-zero"):
        gini_index(np.zeros(3))
    with pytest.raises(MetricError, match="no categories"):
        category_diversity([["a", "q"]], {"a": {"x"}})
    with pytest.raises(MetricError, match="zero embedding"):
        intra_list_diversity([["a", "b"]], ["a", "b"], np.array([[0.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(MetricError, match="n_users"):
        novelty([["a"]], {"a": 5}, n_users=3)
    with pytest.raises(MetricError, match="head_share"):
        head_items({"a": 1}, 0.0)
