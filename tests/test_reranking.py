"""Re-ranking rules on hand-made candidate lists: each rule alone, then composed by `rerank`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.reranking import (
    ItemInfo,
    ItemVectors,
    Pin,
    RecentlyShown,
    RerankConfig,
    RerankError,
    cap_categories,
    freshness_bonus,
    mmr_order,
    rerank,
    scale_scores,
)

# Only the rule under test is on: no freshness, no caps.
PLAIN = RerankConfig(mmr_lambda=1.0, max_per_category=None, freshness_weight=0.0, no_repeat_responses=0)

IDS = ["a", "b", "c", "d"]
SCORES = np.array([1.0, 0.95, 0.9, 0.0])
# b is a near-duplicate of a; c points elsewhere; d is unrelated to both.
EMBEDDINGS = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.0, -1.0]])


def test_mmr_prefers_a_diverse_item_over_a_near_duplicate_at_half_lambda() -> None:
    # Scaled relevance [1, .95, .9, 0]. After a: b scores .5*.95 - .5*0.99995 < 0, c scores .5*.9 = .45.
    config = PLAIN.model_copy(update={"mmr_lambda": 0.5})
    ids, scores = rerank(IDS, SCORES, ItemInfo(embeddings=EMBEDDINGS), config)
    assert ids[:2] == ["a", "c"]
    assert scores[:2] == [1.0, 0.9]  # the ranker's scores travel with their items


def test_mmr_at_lambda_one_keeps_relevance_order() -> None:
    ids, _ = rerank(IDS, SCORES, ItemInfo(embeddings=EMBEDDINGS), PLAIN)
    assert ids == ["a", "b", "c", "d"]


def test_mmr_falls_back_to_genre_vectors_without_embeddings() -> None:
    genres = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    config = PLAIN.model_copy(update={"mmr_lambda": 0.5})
    ids, _ = rerank(IDS, SCORES, ItemInfo(categories=genres), config)
    assert ids[:2] == ["a", "c"]


def test_mmr_order_depth_leaves_the_tail_in_relevance_order() -> None:
    order = mmr_order(np.array([1.0, 0.95, 0.9, 0.1]), EMBEDDINGS, 0.5, depth=2)
    assert order.tolist() == [0, 2, 1, 3]


def test_category_cap_of_two_holds_in_the_window() -> None:
    genres = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 1], [0, 1]])
    scores = np.linspace(1.0, 0.5, 6)
    config = PLAIN.model_copy(update={"max_per_category": 2, "cap_window": 4})
    ids, _ = rerank(list("abcdef"), scores, ItemInfo(categories=genres), config)
    assert ids == ["a", "b", "e", "f", "c", "d"]  # c, d held back: genre 0 was full
    top = genres[[ord(i) - ord("a") for i in ids[:4]]]
    assert (top.sum(axis=0) <= 2).all()


def test_category_cap_gives_way_rather_than_shortening_the_list() -> None:
    genres = np.ones((3, 1))
    assert cap_categories(np.arange(3), genres, 1, 3).tolist() == [0, 1, 2]


def test_freshness_boost_reorders_equal_scores_by_age() -> None:
    info = ItemInfo(age_days=np.array([1000.0, 0.0]))
    fresh = PLAIN.model_copy(update={"freshness_weight": 0.1, "freshness_half_life_days": 30.0})
    assert rerank(["old", "new"], np.array([0.5, 0.5]), info, fresh)[0] == ["new", "old"]
    assert rerank(["old", "new"], np.array([0.5, 0.5]), info, PLAIN)[0] == ["old", "new"]


def test_freshness_bonus_halves_every_half_life() -> None:
    bonus = freshness_bonus(np.array([0.0, 30.0, 60.0, -1.0]), 0.4, 30.0)
    np.testing.assert_allclose(bonus, [0.4, 0.2, 0.1, 0.0])


def test_scale_scores_of_a_constant_list_is_all_ones() -> None:
    assert scale_scores(np.array([3.0, 3.0])).tolist() == [1.0, 1.0]


def test_excluded_and_blocklisted_items_never_appear() -> None:
    config = PLAIN.model_copy(update={"blocklist": frozenset({"b"}), "pins": (Pin(item_id="c", position=1),)})
    ids, scores = rerank(IDS, SCORES, ItemInfo(embeddings=EMBEDDINGS), config, exclude={"c"})
    assert ids == ["a", "d"] and scores == [1.0, 0.0]  # c was pinned, but exclusion wins


def test_pinned_item_lands_at_its_position() -> None:
    config = PLAIN.model_copy(update={"pins": (Pin(item_id="d", position=2), Pin(item_id="new", position=1))})
    ids, scores = rerank(IDS, SCORES, ItemInfo(), config)
    assert ids == ["new", "d", "a", "b", "c"]
    assert scores == [1.0, 0.0, 1.0, 0.95, 0.9]  # an inserted item takes the displaced item's score
    beyond = PLAIN.model_copy(update={"pins": (Pin(item_id="a", position=99),)})
    assert rerank(IDS, SCORES, ItemInfo(), beyond)[0] == ["b", "c", "d", "a"]


def test_k_is_honoured() -> None:
    full = rerank(IDS, SCORES, ItemInfo(embeddings=EMBEDDINGS), RerankConfig())
    assert len(full[0]) == 4
    for k in (0, 1, 3, 10):
        ids, scores = rerank(IDS, SCORES, ItemInfo(embeddings=EMBEDDINGS), RerankConfig(), k=k)
        assert ids == full[0][:k] and len(scores) == min(k, 4)


def test_disabled_config_only_removes_exclusions() -> None:
    config = RerankConfig(enabled=False, blocklist=frozenset({"a"}))
    assert rerank(IDS, SCORES, ItemInfo(), config, exclude={"b"}, k=1) == (["a"], [1.0])
    assert rerank(IDS, SCORES, ItemInfo(), config, exclude={"a"}, k=1) == (["b"], [0.95])


def test_disabled_config_returns_the_rankers_order_not_the_input_order() -> None:
    config = RerankConfig(enabled=False)
    scores_in = np.array([0.1, 0.9, 0.5, 0.9])
    ids, scores = rerank(["x", "y", "z", "w"], scores_in, ItemInfo(), config, exclude={"z"}, k=3)
    assert ids == ["y", "w", "x"] and scores == [0.9, 0.9, 0.1]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(0, 40),
    lam=st.floats(0.0, 1.0),
    cap=st.none() | st.integers(1, 3),
    k=st.none() | st.integers(0, 50),
)
def test_rerank_is_a_deterministic_subset_without_repeats(
    seed: int, n: int, lam: float, cap: int | None, k: int | None
) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"i{j}" for j in range(n)]
    scores = rng.integers(0, 3, n).astype(float)  # many ties
    info = ItemInfo(
        embeddings=rng.normal(size=(n, 4)),
        categories=(rng.random((n, 3)) < 0.4).astype(float),
        age_days=rng.choice([-1.0, 0.0, 10.0, 500.0], n),
    )
    banned = {i for i in ids if rng.random() < 0.2}
    config = RerankConfig(mmr_lambda=lam, max_per_category=cap, cap_window=5, blocklist=frozenset({"i0"}))
    out_ids, out_scores = rerank(ids, scores, info, config, exclude=banned, k=k)
    assert (out_ids, out_scores) == rerank(ids, scores, info, config, exclude=banned, k=k)
    allowed = [i for i in ids if i not in banned | {"i0"}]
    assert len(set(out_ids)) == len(out_ids) == (len(allowed) if k is None else min(k, len(allowed)))
    assert set(out_ids) <= set(allowed)
    assert out_scores == [scores[int(i[1:])] for i in out_ids]


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(0, 60),
    k=st.integers(0, 30),
    depth=st.integers(1, 70),
    cap=st.none() | st.integers(1, 2),
    window=st.integers(1, 30),
    n_pins=st.integers(0, 3),
    by_genre=st.booleans(),
)
def test_the_first_k_positions_are_those_of_the_whole_list(
    seed: int, n: int, k: int, depth: int, cap: int | None, window: int, n_pins: int, by_genre: bool
) -> None:
    # With k, MMR stops once the first k positions are settled; it must settle them as picking every
    # row would, whatever the caps held back (few categories, so long scans) and the pins moved.
    rng = np.random.default_rng(seed)
    ids = [f"i{j}" for j in range(n)]
    scores = rng.integers(0, 5, n).astype(float)
    genres = (rng.random((n, 2)) < 0.6).astype(float)
    info = ItemInfo(embeddings=None if by_genre else rng.normal(size=(n, 3)), categories=genres)
    pins = tuple(
        Pin(item_id=f"i{int(rng.integers(0, 80))}", position=int(rng.integers(1, 40))) for _ in range(n_pins)
    )
    config = RerankConfig(
        mmr_lambda=0.5, depth=depth, max_per_category=cap, cap_window=window, pins=pins, freshness_weight=0.0
    )
    whole = rerank(ids, scores, info, config)
    assert rerank(ids, scores, info, config, k=k) == (whole[0][:k], whole[1][:k])


def test_with_k_a_cap_scan_past_k_still_sees_the_picks_in_mmr_order() -> None:
    # a and b (genre 0) lead; c (genre 1) duplicates a's embedding, d (genre 1) points elsewhere. Full
    # MMR at half lambda picks a, b, then d over its near-duplicate c: [a, b, d, c, e]. One per genre in
    # a window of two shows a then d. With k=2 the caps' scan must go past two picks, and the third
    # must be MMR's (d), not the next by relevance (c).
    ids = ["a", "b", "c", "d", "e"]
    scores = np.array([1.0, 0.95, 0.9, 0.5, 0.0])
    embeddings = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    genres = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0], [1.0, 0]])
    info = ItemInfo(embeddings=embeddings, categories=genres)
    config = RerankConfig(mmr_lambda=0.5, max_per_category=1, cap_window=2, freshness_weight=0.0)
    assert rerank(ids, scores, info, config)[0][:2] == ["a", "d"]
    assert rerank(ids, scores, info, config, k=2) == (["a", "d"], [1.0, 0.5])


def test_misaligned_inputs_are_rejected() -> None:
    with pytest.raises(RerankError, match="3 item ids but scores of shape"):
        rerank(["a", "b", "c"], np.zeros(2), ItemInfo(), RerankConfig())
    with pytest.raises(RerankError, match=r"embeddings must have shape \(2, d\)"):
        rerank(["a", "b"], np.zeros(2), ItemInfo(embeddings=np.zeros((3, 4))), RerankConfig())
    with pytest.raises(RerankError, match=r"age_days must have shape \(2,\)"):
        rerank(["a", "b"], np.zeros(2), ItemInfo(age_days=np.zeros(3)), RerankConfig())


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        RerankConfig(lambda_=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        RerankConfig(mmr_lambda=1.5)
    assert RerankConfig.model_validate({"pins": [{"item_id": "x", "position": 3}]}).pins[0].position == 3


def test_recently_shown_keeps_the_last_responses_of_the_most_recent_users() -> None:
    recent = RecentlyShown(n_responses=2, max_users=2)
    recent.record("u1", ["a", "b"])
    recent.record("u1", ["c"])
    recent.record("u1", ["d"])
    assert recent.items("u1") == {"c", "d"}
    recent.record("u2", ["x"])
    assert recent.items("u1") == {"c", "d"}  # u1 is now the most recently used
    recent.record("u3", ["y"])  # evicts u2, the least recently used
    assert recent.items("u2") == frozenset() and recent.items("u3") == {"y"}
    off = RecentlyShown(n_responses=0, max_users=2)
    off.record("u1", ["a"])
    assert off.items("u1") == frozenset()


def test_item_vectors_reject_misaligned_ids() -> None:
    with pytest.raises(RerankError, match="2 item ids but 1 embeddings"):
        ItemVectors(["a", "b"], np.ones((1, 3)))
    vectors = ItemVectors(["a"], np.array([[0.0, 0.0]]))
    assert vectors.lookup(["a"]).tolist() == [[0.0, 0.0]]  # a zero vector stays zero, not NaN


def test_item_vectors_look_up_in_request_order_with_unknowns_and_repeats() -> None:
    vectors = ItemVectors(["a", "b", "a"], np.array([[1.0, 0.0], [0.0, 3.0], [0.0, -2.0]]))
    found = vectors.lookup(["b", "zz", "a", "b", ""])
    # a repeated catalogue id keeps its last row; unknown ids get the zero row; order is the request's
    assert found.tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, -1.0], [0.0, 1.0], [0.0, 0.0]]
    assert vectors.lookup([]).shape == (0, 2)


def test_item_vectors_take_catalogue_rows_only_where_they_name_the_ids() -> None:
    vectors = ItemVectors(["a", "b", "c"], np.array([[1.0, 0.0], [0.0, 3.0], [0.0, -2.0]]))
    assert vectors.lookup(["c", "a"], rows=np.array([2, 0])).tolist() == [[0.0, -1.0], [1.0, 0.0]]
    by_id = vectors.lookup(["c", "a", "zz"]).tolist()
    # Rows of another catalogue, out of range, of another length or not integers: the ids decide.
    for rows in ([0, 2, 1], [2, 0, 3], [2, 0, -1], [2, 0], [2.0, 0.0, 1.0]):
        assert vectors.lookup(["c", "a", "zz"], rows=np.array(rows)).tolist() == by_id
    assert vectors.lookup([], rows=np.zeros(0, dtype=np.int64)).shape == (0, 2)
