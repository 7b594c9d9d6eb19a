"""Team-draft interleaving on the simulated platform, and how many users it needs to detect a difference.

Each user sees one merged slate of the two policies' top-k lists; clicks are credited to the policy that
placed the clicked item, and the sign test over users says which policy users prefer. Policy A plays
control, B treatment (positive estimates favour B).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.experiments.ab_simulation import Rate, rate
from evaluation.experiments.ab_tests import ExperimentError, TestResult
from evaluation.experiments.interleaving import attribute_clicks, preference_test, team_draft_interleave
from evaluation.experiments.policies import Policy, slates
from evaluation.experiments.simulation import Platform


def run_interleaving(
    platform: Platform, a: Policy, b: Policy, users: np.ndarray, k: int, seed: int, alpha: float = 0.05
) -> tuple[TestResult, list[tuple[int, int]]]:
    """The sign test over ``users`` and each user's (clicks credited to A, clicks credited to B)."""
    rng = np.random.default_rng([seed, 19])
    lists_a, lists_b = slates(a, users, k), slates(b, users, k)
    merged = [
        team_draft_interleave([str(c) for c in la], [str(c) for c in lb], k, rng)
        for la, lb in zip(lists_a, lists_b, strict=True)
    ]
    columns = np.array([[int(item) for item in m.items] for m in merged])
    shown = platform.show(users, columns, platform.epoch, seed=int(rng.integers(1 << 31)))
    credit = [
        attribute_clicks(m, [str(c) for c in row[hit]])
        for m, row, hit in zip(merged, columns, shown.clicked, strict=True)
    ]
    return preference_test(credit, alpha), credit


@dataclass(frozen=True)
class InterleavingPower:
    """Detection rate of interleaving at growing numbers of users, and the first size reaching the target."""

    sizes: tuple[int, ...]
    detected: tuple[Rate, ...]
    target_power: float
    users_needed: int | None  # None when no size in the grid reached the target


def interleaving_power(
    platform: Platform,
    a: Policy,
    b: Policy,
    k: int,
    sizes: tuple[int, ...],
    repeats: int,
    seed: int,
    alpha: float = 0.05,
    target_power: float = 0.8,
    expected_winner: int = 1,
) -> InterleavingPower:
    """Repeats interleaving at each size (fresh users each time) until the detection rate reaches the target.

    A repeat counts as a detection when the sign test rejects in favour of the expected winner
    (1: B, -1: A). Sizes are tried in increasing order; the search stops at the first one that reaches
    ``target_power``.
    """
    rng = np.random.default_rng([seed, 23])
    done_sizes: list[int] = []
    detected: list[Rate] = []
    needed: int | None = None
    for size in sorted(sizes):
        if size > platform.n_users:
            break
        hits = 0
        for r in range(repeats):
            users = rng.choice(platform.n_users, size, replace=False)
            try:
                result, _ = run_interleaving(platform, a, b, users, k, seed + 1000 * r + size, alpha)
            except ExperimentError:  # no user preferred either list: nothing detected
                continue
            hits += bool(result.significant and result.estimate * expected_winner > 0)
        done_sizes.append(size)
        detected.append(rate(hits, repeats))
        if hits / repeats >= target_power:
            needed = size
            break
    return InterleavingPower(tuple(done_sizes), tuple(detected), target_power, needed)
