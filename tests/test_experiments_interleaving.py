"""Team-draft interleaving: team attribution, no duplicates, and a ranker users prefer is detected."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.interleaving import (
    Interleaving,
    attribute_clicks,
    preference_test,
    team_draft_interleave,
)


def test_each_team_keeps_its_own_order_and_no_item_repeats() -> None:
    rng = np.random.default_rng(0)
    a = [f"i{j}" for j in range(20)]
    b = [f"i{j}" for j in rng.permutation(25)]
    for _ in range(200):
        merged = team_draft_interleave(a, b, 10, rng)
        assert len(merged.items) == 10 == len(set(merged.items))
        for team, ranking in (("A", a), ("B", b)):
            picked = [item for item, t in zip(merged.items, merged.teams, strict=True) if t == team]
            positions = [ranking.index(item) for item in picked]
            assert positions == sorted(positions)  # a team picks in its own rank order
        # picks stay balanced: at every prefix the teams differ by at most one
        balance = np.cumsum([1 if t == "A" else -1 for t in merged.teams])
        assert np.all(np.abs(balance) <= 1)


def test_identical_rankings_give_the_same_list_and_coin_decides_credit() -> None:
    ranking = ["a", "b", "c", "d"]
    merged = team_draft_interleave(ranking, ranking, 4, np.random.default_rng(1))
    assert merged.items == tuple(ranking)


def test_exhausted_ranker_is_filled_by_the_other() -> None:
    merged = team_draft_interleave(["x"], ["a", "b", "c"], 4, np.random.default_rng(3))
    assert sorted(merged.items) == ["a", "b", "c", "x"]
    assert merged.teams.count("A") == 1


def test_duplicates_and_bad_k_are_errors() -> None:
    with pytest.raises(ExperimentError, match="twice"):
        team_draft_interleave(["a", "a"], ["b"], 2, np.random.default_rng(0))
    with pytest.raises(ExperimentError, match="k must"):
        team_draft_interleave(["a"], ["b"], 0, np.random.default_rng(0))


def test_click_attribution() -> None:
    shown = Interleaving(("x", "y", "z", "w"), ("A", "B", "B", "A"))
    assert attribute_clicks(shown, ["y", "z", "x"]) == (1, 2)
    assert attribute_clicks(shown, []) == (0, 0)
    with pytest.raises(ExperimentError, match="not shown"):
        attribute_clicks(shown, ["q"])


def test_sign_test_hand_computed() -> None:
    # 9 impressions prefer B, 1 prefers A, 5 ties: P(X >= 9 | 10, 1/2) = 11/1024, two-sided 22/1024
    r = preference_test([(0, 1)] * 9 + [(2, 0)] + [(1, 1)] * 5)
    assert (r.n_control, r.n_treatment) == (1, 9)
    assert r.estimate == pytest.approx(0.4)
    assert r.p_value == pytest.approx(22 / 1024)
    with pytest.raises(ExperimentError, match="no impression"):
        preference_test([(0, 0), (1, 1)])


def test_a_ranker_users_prefer_is_detected_and_equal_ones_are_not() -> None:
    rng = np.random.default_rng(42)
    items = [f"i{j}" for j in range(50)]
    relevance = {item: 0.5 * 0.85**j for j, item in enumerate(items)}  # users click top items of `good`
    good = items[:10]
    bad = list(rng.permutation(items)[:10])

    def simulate(a: list[str], b: list[str], n: int) -> list[tuple[int, int]]:
        outcomes = []
        for _ in range(n):
            merged = team_draft_interleave(a, b, 10, rng)
            clicked = [item for item in merged.items if rng.random() < relevance[item]]
            outcomes.append(attribute_clicks(merged, clicked))
        return outcomes

    better_b = preference_test(simulate(bad, good, 300))
    assert better_b.estimate > 0 and better_b.p_value < 1e-6
    better_a = preference_test(simulate(good, bad, 300))
    assert better_a.estimate < 0 and better_a.p_value < 1e-6
    same = preference_test(simulate(good, good, 300))
    assert same.p_value > 0.01
