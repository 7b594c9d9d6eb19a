"""Two-arm A/B tests: one result type for every test, so a report or a guardrail reads them all alike.

Conventions, for every test here: arm order is (control, treatment); the estimate is treatment minus
control; the relative lift is treatment / control - 1; intervals are two-sided at level 1 - alpha.
Inputs are per-unit observations (one value per user, the randomisation unit), never per-event rows
of users who appear many times: the tests assume independent units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats


class ExperimentError(ValueError):
    """An experiment analysis asked for with impossible input (empty arms, rates outside [0, 1], ...)."""


@dataclass(frozen=True)
class TestResult:
    """The outcome of one two-arm test.

    Attributes:
        test: Which test produced it (``two_proportion_z``, ``welch_t``, ``mann_whitney_u``, ...).
        estimate: The effect: treatment minus control on the test's scale (see ``control_value``).
        ci_low: Lower end of the interval for ``estimate``.
        ci_high: Upper end of the interval for ``estimate``.
        p_value: Two-sided p-value of "no effect".
        n_control: Units in the control arm.
        n_treatment: Units in the treatment arm.
        control_value: The control arm's statistic (rate, mean, ratio); NaN where the test has none.
        treatment_value: The treatment arm's statistic.
        relative_lift: ``treatment_value / control_value - 1``; None where undefined.
        relative_ci_low: Lower end of the interval for ``relative_lift``; None where not computed.
        relative_ci_high: Upper end of the interval for ``relative_lift``.
        alpha: The significance level the intervals were built for.
    """

    __test__ = False  # a dataclass named Test* is not a pytest test class

    test: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_control: int
    n_treatment: int
    control_value: float
    treatment_value: float
    relative_lift: float | None = None
    relative_ci_low: float | None = None
    relative_ci_high: float | None = None
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        """Whether the p-value is below alpha (the interval then excludes zero for the z and t tests)."""
        return self.p_value < self.alpha


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha must be in (0, 1), got {alpha}")


def _sample(values: ArrayLike, name: str, minimum: int = 2) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size < minimum:
        raise ExperimentError(f"{name} needs at least {minimum} observations, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ExperimentError(f"{name} holds NaN or infinite values")
    return array


def two_proportion_ztest(
    successes_control: int,
    n_control: int,
    successes_treatment: int,
    n_treatment: int,
    alpha: float = 0.05,
) -> TestResult:
    """Compares two rates (CTR, conversion): pooled z-test, Wald interval, log-ratio interval for the lift.

    The test statistic pools both arms under the null of equal rates; the interval of the difference uses
    each arm's own variance (the null is not assumed there). The lift interval comes from the delta method
    on log(p_t / p_c), which stays inside (-1, inf) as a lift must. Needs at least a few successes and
    failures per arm for the normal approximation to hold (rule of thumb: 10 each).

    Example:
        >>> r = two_proportion_ztest(100, 1000, 130, 1000)
        >>> round(r.estimate, 3), round(r.p_value, 4)
        (0.03, 0.0355)
    """
    _check_alpha(alpha)
    for name, k, n in (
        ("control", successes_control, n_control),
        ("treatment", successes_treatment, n_treatment),
    ):
        if n < 1:
            raise ExperimentError(f"{name} arm needs at least one unit, got n={n}")
        if not 0 <= k <= n:
            raise ExperimentError(f"{name} successes must be in [0, n={n}], got {k}")
    p_c = successes_control / n_control
    p_t = successes_treatment / n_treatment
    pooled = (successes_control + successes_treatment) / (n_control + n_treatment)
    se_null = np.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_treatment))
    diff = p_t - p_c
    # Both arms all-success or all-failure: no evidence of any difference.
    p_value = 1.0 if se_null == 0 else float(2 * stats.norm.sf(abs(diff) / se_null))
    z = float(stats.norm.ppf(1 - alpha / 2))
    se_diff = float(np.sqrt(p_c * (1 - p_c) / n_control + p_t * (1 - p_t) / n_treatment))
    lift: float | None = None
    lift_low: float | None = None
    lift_high: float | None = None
    if p_c > 0:
        lift = p_t / p_c - 1
        if p_t > 0:
            se_log = np.sqrt((1 - p_c) / (n_control * p_c) + (1 - p_t) / (n_treatment * p_t))
            log_ratio = np.log(p_t / p_c)
            lift_low = float(np.exp(log_ratio - z * se_log) - 1)
            lift_high = float(np.exp(log_ratio + z * se_log) - 1)
    return TestResult(
        test="two_proportion_z",
        estimate=diff,
        ci_low=diff - z * se_diff,
        ci_high=diff + z * se_diff,
        p_value=p_value,
        n_control=n_control,
        n_treatment=n_treatment,
        control_value=p_c,
        treatment_value=p_t,
        relative_lift=lift,
        relative_ci_low=lift_low,
        relative_ci_high=lift_high,
        alpha=alpha,
    )


def welch_ttest(control: ArrayLike, treatment: ArrayLike, alpha: float = 0.05) -> TestResult:
    """Compares two means without assuming equal variances (Welch; Welch-Satterthwaite degrees of freedom).

    The right default for per-user means (revenue, watch time): robust to unequal variances and arm sizes;
    with thousands of users per arm the mean is close to normal even for skewed metrics. The lift interval
    is the delta method on the ratio of means.

    Example:
        >>> r = welch_ttest([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
        >>> r.estimate, round(r.p_value, 3)
        (2.5, 0.152)
    """
    _check_alpha(alpha)
    c = _sample(control, "control")
    t = _sample(treatment, "treatment")
    var_c = float(c.var(ddof=1)) / c.size
    var_t = float(t.var(ddof=1)) / t.size
    diff = float(t.mean() - c.mean())
    se = float(np.sqrt(var_c + var_t))
    if se == 0:
        raise ExperimentError("both arms are constant: a t-test has nothing to compare")
    dof = (var_c + var_t) ** 2 / (var_c**2 / (c.size - 1) + var_t**2 / (t.size - 1))
    p_value = float(2 * stats.t.sf(abs(diff) / se, dof))
    q = float(stats.t.ppf(1 - alpha / 2, dof))
    mean_c = float(c.mean())
    mean_t = float(t.mean())
    lift: float | None = None
    lift_low: float | None = None
    lift_high: float | None = None
    if mean_c != 0:
        lift = mean_t / mean_c - 1
        # Delta method for r = m_t / m_c with independent arms: var(r) = r^2 (v_t / m_t^2 + v_c / m_c^2).
        se_ratio = float(np.sqrt(var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4))
        lift_low = lift - q * se_ratio
        lift_high = lift + q * se_ratio
    return TestResult(
        test="welch_t",
        estimate=diff,
        ci_low=diff - q * se,
        ci_high=diff + q * se,
        p_value=p_value,
        n_control=int(c.size),
        n_treatment=int(t.size),
        control_value=mean_c,
        treatment_value=mean_t,
        relative_lift=lift,
        relative_ci_low=lift_low,
        relative_ci_high=lift_high,
        alpha=alpha,
    )


def mann_whitney_u(control: ArrayLike, treatment: ArrayLike, alpha: float = 0.05) -> TestResult:
    """Rank test of whether treatment values tend to exceed control values (heavy tails, ordinal metrics).

    The estimate is the probability of superiority minus one half: P(T > C) + P(T = C) / 2 - 0.5, so 0 means
    no tendency either way (it tests stochastic order, not a difference of means or medians). The p-value
    is scipy's (normal approximation with tie and continuity corrections for large arms); the interval is
    Hanley and McNeil's normal interval for that probability.

    Example:
        >>> r = mann_whitney_u([1, 2, 3], [4, 5, 6])
        >>> r.estimate, r.treatment_value
        (0.5, 1.0)
    """
    _check_alpha(alpha)
    c = _sample(control, "control", minimum=1)
    t = _sample(treatment, "treatment", minimum=1)
    result = stats.mannwhitneyu(t, c, alternative="two-sided")
    superiority = float(result.statistic) / (c.size * t.size)  # U of the treatment arm / (n_t n_c)
    q1 = superiority / (2 - superiority)
    q2 = 2 * superiority**2 / (1 + superiority)
    variance = (
        superiority * (1 - superiority)
        + (t.size - 1) * (q1 - superiority**2)
        + (c.size - 1) * (q2 - superiority**2)
    ) / (c.size * t.size)
    half = float(stats.norm.ppf(1 - alpha / 2)) * float(np.sqrt(max(variance, 0.0)))
    estimate = superiority - 0.5
    return TestResult(
        test="mann_whitney_u",
        estimate=estimate,
        ci_low=max(estimate - half, -0.5),
        ci_high=min(estimate + half, 0.5),
        p_value=float(result.pvalue),
        n_control=int(c.size),
        n_treatment=int(t.size),
        control_value=0.5,
        treatment_value=superiority,
        alpha=alpha,
    )


def _ratio_sums(
    numerator: ArrayLike, denominator: ArrayLike, name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    num = _sample(numerator, f"{name} numerator")
    den = _sample(denominator, f"{name} denominator")
    if num.shape != den.shape:
        raise ExperimentError(f"{name} numerator and denominator differ in length: {num.size} vs {den.size}")
    if den.sum() <= 0:
        raise ExperimentError(f"{name} denominator sums to {den.sum()}: the ratio is undefined")
    return num, den


def _bootstrap_ratios(
    num: NDArray[np.float64], den: NDArray[np.float64], n_resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Ratio of sums over users resampled with replacement, in chunks that keep memory bounded."""
    out = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // num.size)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, num.size, size=(stop - start, num.size))  # (resamples, users)
        den_sum = den[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start:stop] = num[idx].sum(axis=1) / den_sum
    return out


def bootstrap_ratio_test(
    numerator_control: ArrayLike,
    denominator_control: ArrayLike,
    numerator_treatment: ArrayLike,
    denominator_treatment: ArrayLike,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> TestResult:
    """Percentile bootstrap for a ratio metric (clicks / impressions, revenue / sessions) per arm.

    The metric is the ratio of sums over users (total clicks / total impressions), not the mean of per-user
    ratios, and users (the randomisation unit) are resampled whole, which keeps the correlation between a
    user's numerator and denominator. The p-value is the two-sided percentile-bootstrap one: twice the
    smaller share of resampled differences on either side of zero. Seeded: the same inputs give the same
    interval.

    Example:
        >>> r = bootstrap_ratio_test([1, 0, 2], [2, 2, 4], [2, 1, 3], [2, 2, 4], n_resamples=200)
        >>> r.control_value, r.treatment_value, r.estimate
        (0.375, 0.75, 0.375)
    """
    _check_alpha(alpha)
    if n_resamples < 100:
        raise ExperimentError(
            f"n_resamples must be at least 100 for a percentile interval, got {n_resamples}"
        )
    num_c, den_c = _ratio_sums(numerator_control, denominator_control, "control")
    num_t, den_t = _ratio_sums(numerator_treatment, denominator_treatment, "treatment")
    ratio_c = float(num_c.sum() / den_c.sum())
    ratio_t = float(num_t.sum() / den_t.sum())
    rng = np.random.default_rng(seed)
    boot_c = _bootstrap_ratios(num_c, den_c, n_resamples, rng)
    boot_t = _bootstrap_ratios(num_t, den_t, n_resamples, rng)
    keep = np.isfinite(boot_c) & np.isfinite(boot_t)  # a resample can draw only zero denominators
    boot_c, boot_t = boot_c[keep], boot_t[keep]
    diffs = boot_t - boot_c
    quantiles = [alpha / 2, 1 - alpha / 2]
    low, high = (float(v) for v in np.quantile(diffs, quantiles))
    p_value = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    lift: float | None = None
    lift_low: float | None = None
    lift_high: float | None = None
    if ratio_c != 0 and np.all(boot_c != 0):
        lift = ratio_t / ratio_c - 1
        lift_low, lift_high = (float(v) for v in np.quantile(boot_t / boot_c - 1, quantiles))
    return TestResult(
        test="bootstrap_ratio",
        estimate=ratio_t - ratio_c,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        n_control=int(num_c.size),
        n_treatment=int(num_t.size),
        control_value=ratio_c,
        treatment_value=ratio_t,
        relative_lift=lift,
        relative_ci_low=lift_low,
        relative_ci_high=lift_high,
        alpha=alpha,
    )


@dataclass(frozen=True)
class SampleRatioCheck:
    """Whether the arms' sizes match the planned split (a mismatch means the assignment or logging is broken).

    Attributes:
        observed: Units seen per arm.
        expected: Units the planned split implies for the same total.
        statistic: Pearson's chi-square statistic.
        p_value: Chance of a split at least this uneven if assignment works.
        mismatch: Whether ``p_value`` is below the threshold: then no other result should be trusted.
    """

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float
    mismatch: bool


def sample_ratio_mismatch(
    observed: tuple[int, ...] | list[int], planned: tuple[float, ...] | list[float], threshold: float = 0.001
) -> SampleRatioCheck:
    """Chi-square goodness of fit of the arm sizes against the planned split.

    The threshold is strict (0.001 by default) because the check runs on every experiment, every day;
    a real mismatch is usually far below it.

    Example:
        >>> sample_ratio_mismatch([5000, 5000], [0.5, 0.5]).mismatch
        False
        >>> sample_ratio_mismatch([5200, 4800], [0.5, 0.5]).mismatch
        True
    """
    counts = np.asarray(observed, dtype=np.float64)
    shares = np.asarray(planned, dtype=np.float64)
    if counts.size < 2 or counts.shape != shares.shape:
        raise ExperimentError(
            f"need one planned share per arm and two arms or more, got {counts.size} counts, "
            f"{shares.size} shares"
        )
    if np.any(counts < 0) or counts.sum() == 0:
        raise ExperimentError(f"arm counts must be non-negative with a positive total, got {list(observed)}")
    if np.any(shares <= 0):
        raise ExperimentError(f"planned shares must be positive, got {list(planned)}")
    expected = counts.sum() * shares / shares.sum()
    result = stats.chisquare(counts, expected)
    p_value = float(result.pvalue)
    return SampleRatioCheck(
        observed=tuple(int(v) for v in counts),
        expected=tuple(float(v) for v in expected),
        statistic=float(result.statistic),
        p_value=p_value,
        mismatch=p_value < threshold,
    )
