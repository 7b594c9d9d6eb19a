"""Team-draft interleaving: compare two rankers on the same users by merging their lists into one.

Each impression shows one merged list; every item is credited to the ranker ("team") that placed it, and a
click is a vote for that team. Both rankers face the same user at the same moment, so interleaving needs
far fewer impressions than an A/B test to tell which ranker users prefer, though it says nothing about
the size of an effect on business metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from evaluation.experiments.ab_tests import ExperimentError, TestResult

Team = Literal["A", "B"]


@dataclass(frozen=True)
class Interleaving:
    """One merged list: ``items[i]`` was placed by ranker ``teams[i]``."""

    items: tuple[str, ...]
    teams: tuple[Team, ...]


def _check_unique(ranking: Sequence[str], name: str) -> None:
    if len(set(ranking)) != len(ranking):
        raise ExperimentError(f"ranking {name} lists an item twice")


def team_draft_interleave(
    ranking_a: Sequence[str], ranking_b: Sequence[str], k: int, rng: np.random.Generator
) -> Interleaving:
    """Merges two rankings into one of length up to ``k``, team-draft style.

    Like picking teams in a playground: the team with fewer picks so far picks next (a seeded coin decides
    ties); it takes its highest-ranked item not yet shown. An item both rankers want goes to whichever
    picks it first, and is shown once. When one ranker runs out, the other fills the rest.

    Example:
        >>> r = team_draft_interleave(["a", "b", "c"], ["b", "d", "a"], 4, np.random.default_rng(0))
        >>> sorted(r.items), len(r.teams)
        (['a', 'b', 'c', 'd'], 4)
    """
    if k < 1:
        raise ExperimentError(f"k must be at least 1, got {k}")
    _check_unique(ranking_a, "A")
    _check_unique(ranking_b, "B")
    rankings: dict[Team, Sequence[str]] = {"A": ranking_a, "B": ranking_b}
    cursor: dict[Team, int] = {"A": 0, "B": 0}
    picks: dict[Team, int] = {"A": 0, "B": 0}
    shown: set[str] = set()
    items: list[str] = []
    teams: list[Team] = []

    def next_item(team: Team) -> str | None:
        ranking = rankings[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in shown:
            cursor[team] += 1
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(items) < k:
        if picks["A"] != picks["B"]:
            team: Team = "A" if picks["A"] < picks["B"] else "B"
        else:
            team = "A" if rng.random() < 0.5 else "B"
        item = next_item(team)
        if item is None:  # this ranker is exhausted: the other one fills in
            team = "B" if team == "A" else "A"
            item = next_item(team)
            if item is None:
                break
        items.append(item)
        teams.append(team)
        shown.add(item)
        picks[team] += 1
    return Interleaving(tuple(items), tuple(teams))


def attribute_clicks(interleaving: Interleaving, clicked: Iterable[str]) -> tuple[int, int]:
    """Clicks credited to (A, B) on one impression; a clicked item not in the list is an error.

    Example:
        >>> attribute_clicks(Interleaving(("x", "y", "z"), ("A", "B", "A")), ["x", "z"])
        (2, 0)
    """
    team_of = dict(zip(interleaving.items, interleaving.teams, strict=True))
    credit = {"A": 0, "B": 0}
    for item in set(clicked):
        if item not in team_of:
            raise ExperimentError(f"clicked item {item!r} was not shown in this impression")
        credit[team_of[item]] += 1
    return credit["A"], credit["B"]


def preference(clicks_a: int, clicks_b: int) -> Literal["A", "B", "tie"]:
    """The impression's vote: the team with more clicks, or a tie (no clicks, or equal clicks)."""
    if clicks_a > clicks_b:
        return "A"
    if clicks_b > clicks_a:
        return "B"
    return "tie"


def preference_test(per_impression: Iterable[tuple[int, int]], alpha: float = 0.05) -> TestResult:
    """Sign test over impressions: does one ranker win more impressions than the other?

    Ties are left out (they carry no preference); under the null each decided impression is a fair coin,
    so the p-value is the exact two-sided binomial one. Reading it as an A/B result, ranker A plays
    control and B treatment: the estimate is B's share of decided impressions minus one half (positive
    means users prefer B), ``n_control``/``n_treatment`` are the impressions won by A and B, and the
    interval is the exact (Clopper-Pearson) one, shifted by one half.

    Example:
        >>> r = preference_test([(0, 1)] * 15 + [(1, 0)] * 5 + [(0, 0)] * 30)
        >>> r.estimate, round(r.p_value, 4)
        (0.25, 0.0414)
    """
    if not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha must be in (0, 1), got {alpha}")
    wins_a = wins_b = 0
    for clicks_a, clicks_b in per_impression:
        vote = preference(clicks_a, clicks_b)
        wins_a += vote == "A"
        wins_b += vote == "B"
    decided = wins_a + wins_b
    if decided == 0:
        raise ExperimentError("no impression preferred either ranker: nothing to test")
    result = stats.binomtest(wins_b, decided, 0.5, alternative="two-sided")
    interval = result.proportion_ci(confidence_level=1 - alpha, method="exact")
    share = wins_b / decided
    return TestResult(
        test="interleaving_sign",
        estimate=share - 0.5,
        ci_low=float(interval.low) - 0.5,
        ci_high=float(interval.high) - 0.5,
        p_value=float(result.pvalue),
        n_control=wins_a,
        n_treatment=wins_b,
        control_value=wins_a / decided,
        treatment_value=share,
        alpha=alpha,
    )
