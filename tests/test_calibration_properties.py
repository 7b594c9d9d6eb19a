"""Properties of AUC and ECE on generated predictions (Hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from evaluation.calibration import expected_calibration_error, roc_auc  # noqa: E402

probabilities = st.floats(0.0, 1.0, allow_nan=False)
examples = st.lists(st.tuples(st.integers(0, 1), probabilities), min_size=2, max_size=40)
fast = settings(max_examples=60, deadline=None, database=None)


@fast
@given(examples)
def test_auc_is_a_probability_and_flips_with_the_scores(pairs: list[tuple[int, float]]) -> None:
    labels = np.array([y for y, _ in pairs])
    assume(0 < labels.sum() < len(labels))
    scores = np.array([p for _, p in pairs])
    auc = roc_auc(labels, scores)
    assert 0.0 <= auc <= 1.0
    # negating the scores reverses every pair: AUC -> 1 - AUC (ties stay one half)
    assert roc_auc(labels, -scores) == pytest.approx(1.0 - auc)
    # scaling by a power of two is exact in floating point: same order, same AUC
    assert roc_auc(labels, 4 * scores) == pytest.approx(auc)


@fast
@given(examples, st.randoms(use_true_random=False))
def test_auc_and_ece_ignore_example_order(pairs: list[tuple[int, float]], rnd: object) -> None:
    shuffled = list(pairs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    y, p = zip(*pairs, strict=True)
    ys, ps = zip(*shuffled, strict=True)
    assert expected_calibration_error(ys, ps) == pytest.approx(expected_calibration_error(y, p))
    if 0 < sum(y) < len(y):
        assert roc_auc(ys, ps) == pytest.approx(roc_auc(y, p))


@fast
@given(examples, st.integers(1, 20))
def test_ece_lies_in_unit_interval(pairs: list[tuple[int, float]], n_bins: int) -> None:
    y, p = zip(*pairs, strict=True)
    assert 0.0 <= expected_calibration_error(y, p, n_bins) <= 1.0
