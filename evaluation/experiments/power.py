"""Power analysis for a two-proportion test: how many users an experiment needs, or what it can detect.

Uses the normal approximation with the pooled variance under the null and each arm's own variance under
the alternative (the same form as the z-test in `ab_tests`), equal arms, two-sided test.
"""

from __future__ import annotations

import math

from scipy import optimize, stats

from evaluation.experiments.ab_tests import ExperimentError


def _check(alpha: float, power: float, baseline_rate: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ExperimentError(f"power must be in (0, 1), got {power}")
    if not 0.0 < baseline_rate < 1.0:
        raise ExperimentError(f"baseline rate must be in (0, 1), got {baseline_rate}")


def power_two_proportions(
    n_per_arm: float, baseline_rate: float, treatment_rate: float, alpha: float = 0.05
) -> float:
    """Chance that the two-sided z-test rejects with ``n_per_arm`` users per arm at these true rates.

    Example:
        >>> round(power_two_proportions(3841, 0.10, 0.12), 2)
        0.8
    """
    if not 0.0 < treatment_rate < 1.0:
        raise ExperimentError(f"treatment rate must be in (0, 1), got {treatment_rate}")
    _check(alpha, 0.5, baseline_rate)
    p1, p2 = baseline_rate, treatment_rate
    p_bar = (p1 + p2) / 2
    z_alpha = float(stats.norm.ppf(1 - alpha / 2))
    sd_null = math.sqrt(2 * p_bar * (1 - p_bar))
    sd_alt = math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    # The far tail (rejecting in the wrong direction) is negligible and left out, as in the sample size.
    return float(stats.norm.cdf((abs(p2 - p1) * math.sqrt(n_per_arm) - z_alpha * sd_null) / sd_alt))


def sample_size_per_arm(
    baseline_rate: float, min_relative_effect: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users per arm to detect a relative change of the rate with the given power (rounded up).

    Why relative: product targets are stated as "+2% CTR", and the absolute effect they imply depends on
    the baseline; a 2% lift of a 3% CTR needs far more users than of a 30% one.

    Example:
        >>> sample_size_per_arm(0.10, 0.20)  # 10% -> 12%
        3841
    """
    _check(alpha, power, baseline_rate)
    p1 = baseline_rate
    p2 = baseline_rate * (1 + min_relative_effect)
    if min_relative_effect == 0 or not 0.0 < p2 < 1.0:
        raise ExperimentError(
            f"relative effect {min_relative_effect} of baseline {baseline_rate} "
            "must give a different rate in (0, 1)"
        )
    p_bar = (p1 + p2) / 2
    z_alpha = float(stats.norm.ppf(1 - alpha / 2))
    z_beta = float(stats.norm.ppf(power))
    numerator = z_alpha * math.sqrt(2 * p_bar * (1 - p_bar)) + z_beta * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2)
    )
    return math.ceil(numerator**2 / (p2 - p1) ** 2)


def detectable_effect(
    n_per_arm: int, baseline_rate: float, alpha: float = 0.05, power: float = 0.8, direction: int = 1
) -> float:
    """Smallest relative change of the rate that ``n_per_arm`` users per arm detect with the given power.

    Answers "is this experiment worth running with the traffic we have?". ``direction`` 1 looks for an
    increase, -1 for a decrease (the two differ a little: the variance depends on the rate).

    Example:
        >>> round(detectable_effect(3841, 0.10), 3)
        0.2
    """
    _check(alpha, power, baseline_rate)
    if n_per_arm < 2:
        raise ExperimentError(f"n_per_arm must be at least 2, got {n_per_arm}")
    if direction not in (1, -1):
        raise ExperimentError(f"direction must be 1 or -1, got {direction}")
    upper = (1 / baseline_rate - 1) if direction == 1 else 1.0
    upper *= 1 - 1e-9

    def gap(effect: float) -> float:
        rate = baseline_rate * (1 + direction * effect)
        return power_two_proportions(n_per_arm, baseline_rate, rate, alpha) - power

    if gap(upper) < 0:
        raise ExperimentError(f"{n_per_arm} users per arm cannot reach power {power} at any effect size")
    return direction * float(optimize.brentq(gap, 1e-12, upper, xtol=1e-10))


__all__ = ["detectable_effect", "power_two_proportions", "sample_size_per_arm"]
