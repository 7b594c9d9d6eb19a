"""The retriever contract, run against every baseline, and behaviour tests of each baseline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from training.baselines import (
    CategoryPopularity,
    GlobalPopularity,
    ImplicitALS,
    ItemKNN,
    TrendingPopularity,
    default_baselines,
)
from training.retriever import Retriever, RetrieverError, ScoringRetriever, seen_items, top_n

T0 = pd.Timestamp("2024-01-01", tz="UTC")
CATEGORIES = {"A": {"drama"}, "B": {"drama"}, "C": {"comedy"}, "D": {"comedy"}, "E": {"horror"}}


def events(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    """Event rows (user, item, type, day); each user-day is one session."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "event_ts": [T0 + pd.Timedelta(days=r[3]) for r in rows],
            "session_id": [f"{r[0]}-{r[3]}" for r in rows],
        }
    )


def toy() -> pd.DataFrame:
    """Everyone who liked A liked B; B is the most liked item; u5 liked only A, so B is the answer for u5."""
    rows = [(u, i, "like", 10) for u in ("u1", "u2", "u3", "u4") for i in ("A", "B")]
    rows += [("u5", "A", "like", 10), ("u6", "C", "like", 1), ("u6", "D", "like", 1), ("u7", "C", "like", 1)]
    rows += [("u7", "E", "skip", 1), ("u8", "D", "view", 1)]
    return events(rows)


FACTORIES: dict[str, Callable[[], ScoringRetriever]] = {
    "global": GlobalPopularity,
    "trending": TrendingPopularity,
    "category": lambda: CategoryPopularity(CATEGORIES),
    "knn": lambda: ItemKNN(n_neighbours=2),
    "covisitation": lambda: ItemKNN(basket="session", similarity="count"),
    # Two factors for five items: too few to memorise u5, so A's taste (shared with B) must carry over.
    "als": lambda: ImplicitALS(factors=2, iterations=15),
    "als-exact": lambda: ImplicitALS(factors=2, iterations=15, cg_steps=None),
}


@pytest.fixture(params=sorted(FACTORIES))
def fitted(request: pytest.FixtureRequest) -> ScoringRetriever:
    return FACTORIES[request.param]().fit(toy())


def test_contract_protocol(fitted: ScoringRetriever) -> None:
    assert isinstance(fitted, Retriever)


def test_contract_lists(fitted: ScoringRetriever) -> None:
    seen = seen_items(toy())
    users = ["u1", "u5", "u6", "u8", "stranger"]
    lists = fitted.recommend(users, 2, seen)
    assert len(lists) == len(users)
    for user, items in zip(users, lists, strict=True):
        assert len(items) == 2 and len(set(items)) == 2
        assert set(items) <= set(fitted.catalogue) == {"A", "B", "C", "D", "E"}
        assert not set(items) & seen.get(user, set())


def test_contract_obvious_item(fitted: ScoringRetriever) -> None:
    assert fitted.recommend(["u5"], 1, seen_items(toy())) == [["B"]]


def test_contract_deterministic(fitted: ScoringRetriever) -> None:
    seen = seen_items(toy())
    users = ["u1", "u5", "u6", "u7", "u8", "stranger"]
    first = fitted.recommend(users, 5, seen)
    assert first == fitted.recommend(users, 5, seen)
    assert first == type(fitted).fit(fitted, toy()).recommend(users, 5, seen)


def test_contract_unknown_user_gets_fallback_popularity(fitted: ScoringRetriever) -> None:
    # Global likes: A 5, B 4, C 2, D 1, E 0; the trending window (last 7 days) holds only A and B.
    (items,) = fitted.recommend(["stranger"], 5, {})
    if isinstance(fitted, TrendingPopularity):
        assert items[:2] == ["A", "B"]
    assert items == ["A", "B", "C", "D", "E"]


def test_contract_short_catalogue_and_errors(fitted: ScoringRetriever) -> None:
    assert fitted.recommend(["u1"], 10, {"u1": {"A", "B", "C"}}) == [["D", "E"]]
    assert fitted.recommend(["u1"], 3, {"u1": {"A", "B", "C", "D", "E"}}) == [[]]
    with pytest.raises(RetrieverError, match="n must be at least 1"):
        fitted.recommend(["u1"], 0, {})


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract_not_fitted_and_missing_columns(name: str) -> None:
    with pytest.raises(RetrieverError, match="must be fitted"):
        FACTORIES[name]().recommend(["u1"], 1, {})
    with pytest.raises(RetrieverError, match="'event_type'"):
        FACTORIES[name]().fit(toy().drop(columns="event_type"))


def test_top_n_breaks_ties_by_rank_and_skips_banned() -> None:
    scores = np.array([2.0, 5.0, 5.0, 5.0, 1.0])
    assert top_n(scores, np.array([4, 3, 0, 1, 2]), 3, np.array([3])).tolist() == [2, 1, 0]
    assert top_n(scores, np.arange(5), 9, np.array([], dtype=np.int64)).tolist() == [1, 2, 3, 0, 4]


def test_trending_counts_only_the_window() -> None:
    # Z: 3 old likes; Y: 2 likes in the last 7 days; X: 1 recent like.
    old = [("a", "Z", "like", 0), ("b", "Z", "like", 0), ("c", "Z", "like", 0)]
    frame = events([*old, ("a", "Y", "like", 25), ("b", "Y", "like", 28), ("c", "X", "like", 30)])
    model = TrendingPopularity(days=7).fit(frame)
    assert model.catalogue == ["X", "Y", "Z"]
    assert model.trending.tolist() == [1.0, 2.0, 0.0]  # reference time day 30: Y at 25 and 28, X at 30
    assert model.recommend(["new"], 3, {}) == [["Y", "X", "Z"]]
    assert GlobalPopularity().fit(frame).recommend(["new"], 3, {}) == [["Z", "Y", "X"]]
    earlier = TrendingPopularity(days=2, reference_time=T0 + pd.Timedelta(days=26)).fit(frame)
    assert earlier.recommend(["new"], 1, {}) == [["Y"]]
    with pytest.raises(RetrieverError, match="days must be positive"):
        TrendingPopularity(days=0)


def test_category_popularity_uses_the_most_liked_category() -> None:
    model = CategoryPopularity(CATEGORIES).fit(toy())
    # u7 liked only C (comedy): D (comedy, 1 like) comes before the more popular drama items.
    assert model.recommend(["u7"], 3, seen_items(toy())) == [["D", "A", "B"]]
    assert model.categories == ["comedy", "drama", "horror"]
    with pytest.raises(RetrieverError, match="no category"):
        CategoryPopularity({}).fit(toy())


def test_item_knn_cosine_by_hand() -> None:
    model = ItemKNN(n_neighbours=5).fit(toy())
    sim = model.neighbours.toarray()
    a, b, c, d = (model.catalogue.index(i) for i in "ABCD")
    # A liked by 5 users, B by 4, all 4 also liked A: cos = 4 / sqrt(5 * 4).
    assert sim[a, b] == pytest.approx(4 / np.sqrt(20))
    assert sim[c, d] == pytest.approx(1 / np.sqrt(2))  # C: u6, u7; D: u6 (u8 only viewed D)
    assert sim[a, a] == 0 and sim[a, c] == 0
    pruned = ItemKNN(n_neighbours=1).fit(toy()).neighbours
    assert (np.diff(pruned.indptr) <= 1).all()


def test_session_covisitation_counts() -> None:
    frame = events(
        [("u", "A", "like", 0), ("u", "B", "like", 0), ("u", "C", "like", 5), ("v", "A", "like", 3)]
    )
    model = ItemKNN(basket="session", similarity="count").fit(frame)
    sim = pd.DataFrame(model.neighbours.toarray(), index=model.catalogue, columns=model.catalogue)
    assert sim.loc["A", "B"] == 1 and sim.loc["A", "C"] == 0  # same user, other session: no co-visit
    assert model.recommend(["v"], 1, {"v": {"A"}}) == [["B"]]
    with pytest.raises(RetrieverError, match="'session_id'"):
        ItemKNN(basket="session").fit(frame.drop(columns="session_id"))


def test_als_cg_approaches_exact_and_separates_blocks() -> None:
    # Two taste blocks: users 0-9 like items a*, users 10-19 like items b*; each user misses one item.
    rng = np.random.default_rng(0)
    rows = []
    for u in range(20):
        block = "a" if u < 10 else "b"
        items = [f"{block}{j}" for j in range(6) if j != u % 6]
        rows += [(f"u{u}", item, "like", int(rng.integers(0, 5))) for item in items]
    frame = events(rows)
    exact = ImplicitALS(factors=4, iterations=10, cg_steps=None).fit(frame)
    cg = ImplicitALS(factors=4, iterations=10, cg_steps=8).fit(frame)
    scores_exact = exact.user_factors @ exact.item_factors.T
    scores_cg = cg.user_factors @ cg.item_factors.T
    assert np.abs(scores_exact - scores_cg).max() < 0.05
    seen = seen_items(frame)
    for model in (exact, cg):
        assert model.recommend(["u0", "u13"], 1, seen) == [["a0"], ["b1"]]
    with pytest.raises(RetrieverError, match="cg_steps"):
        ImplicitALS(cg_steps=0)


def test_default_baselines_names() -> None:
    models = default_baselines(CATEGORIES)
    assert list(models) == [
        "popularity",
        "trending-7d",
        "category-popularity",
        "item-knn",
        "session-covisitation",
        "implicit-als",
    ]
    assert all(isinstance(m, Retriever) for m in models.values())
