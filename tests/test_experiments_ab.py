"""A/B tests, power and guardrails: hand-computed fixtures, statsmodels/scipy cross-checks, simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest, samplesize_proportions_2indep_onetail
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from evaluation.experiments.ab_tests import (
    ExperimentError,
    bootstrap_ratio_test,
    mann_whitney_u,
    sample_ratio_mismatch,
    two_proportion_ztest,
    welch_ttest,
)
from evaluation.experiments.guardrails import Guardrail, check_guardrails
from evaluation.experiments.power import detectable_effect, power_two_proportions, sample_size_per_arm


def test_ztest_hand_computed() -> None:
    # control 50/500 = 0.10, treatment 75/500 = 0.15; pooled 125/1000 = 0.125
    # SE_null = sqrt(0.125 * 0.875 * (2/500)) = sqrt(0.0004375) = 0.0209165; z = 0.05 / 0.0209165 = 2.39046
    # p = 2 * (1 - Phi(2.39046)) = 0.016828
    # SE_diff = sqrt(0.1*0.9/500 + 0.15*0.85/500) = sqrt(0.000435) = 0.0208567; CI = 0.05 -+ 1.959964 * SE
    r = two_proportion_ztest(50, 500, 75, 500)
    assert r.estimate == pytest.approx(0.05)
    assert r.p_value == pytest.approx(0.016828, abs=2e-6)
    assert r.ci_low == pytest.approx(0.05 - 1.959964 * 0.0208567, abs=1e-6)
    assert r.ci_high == pytest.approx(0.05 + 1.959964 * 0.0208567, abs=1e-6)
    # lift 0.5; SE of log ratio = sqrt(0.9/(500*0.1) + 0.85/(500*0.15)) = sqrt(0.0293333) = 0.171270
    assert r.relative_lift == pytest.approx(0.5)
    assert r.relative_ci_low == pytest.approx(1.5 * math.exp(-1.959964 * 0.171270) - 1, abs=1e-5)
    assert r.relative_ci_high == pytest.approx(1.5 * math.exp(1.959964 * 0.171270) - 1, abs=1e-5)
    assert (r.n_control, r.n_treatment, r.test) == (500, 500, "two_proportion_z")
    assert r.significant


@pytest.mark.parametrize(
    ("kc", "nc", "kt", "nt"), [(120, 2000, 151, 2100), (33, 400, 30, 380), (0, 50, 3, 60)]
)
def test_ztest_matches_statsmodels(kc: int, nc: int, kt: int, nt: int) -> None:
    _, p = proportions_ztest([kt, kc], [nt, nc])
    r = two_proportion_ztest(kc, nc, kt, nt)
    assert r.p_value == pytest.approx(p, rel=1e-9)


def test_ztest_rejects_bad_counts() -> None:
    with pytest.raises(ExperimentError, match="successes"):
        two_proportion_ztest(11, 10, 5, 10)
    with pytest.raises(ExperimentError, match="at least one unit"):
        two_proportion_ztest(0, 0, 5, 10)


def test_aa_false_positive_rate_is_alpha() -> None:
    rng = np.random.default_rng(7)
    reps, n, rate, alpha = 2000, 5000, 0.05, 0.05
    clicks = rng.binomial(n, rate, size=(reps, 2))
    rejections = sum(two_proportion_ztest(int(c), n, int(t), n, alpha).p_value < alpha for c, t in clicks)
    low, high = stats.binomtest(int(alpha * reps), reps).proportion_ci(0.999)  # interval around alpha
    assert low * reps <= rejections <= high * reps


def test_welch_matches_statsmodels() -> None:
    rng = np.random.default_rng(3)
    control = rng.lognormal(1.0, 0.8, size=300)
    treatment = rng.lognormal(1.1, 1.0, size=450)
    r = welch_ttest(control, treatment)
    _, p, _ = ttest_ind(treatment, control, usevar="unequal")
    assert r.p_value == pytest.approx(p, rel=1e-9)
    low, high = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).tconfint_diff(usevar="unequal")
    assert (r.ci_low, r.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert r.p_value == pytest.approx(stats.ttest_ind(treatment, control, equal_var=False).pvalue, rel=1e-9)


def test_welch_hand_computed() -> None:
    # means 2.5 and 5.0; variances 5/3 and 20/3; SE = sqrt(5/12 + 20/12) = sqrt(25/12) = 1.443376
    # t = 2.5 / 1.443376 = 1.732051
    # dof = (25/12)^2 / ((5/12)^2/3 + (20/12)^2/3) = 4.340278 / 0.983796 = 4.411765
    r = welch_ttest([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert r.estimate == 2.5
    assert r.p_value == pytest.approx(2 * stats.t.sf(1.732051, 4.411765), rel=1e-5)
    with pytest.raises(ExperimentError, match="constant"):
        welch_ttest([1.0, 1.0], [1.0, 1.0])


def test_mann_whitney_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    control = rng.exponential(1.0, 200)
    treatment = rng.exponential(1.3, 180)
    r = mann_whitney_u(control, treatment)
    reference = stats.mannwhitneyu(treatment, control, alternative="two-sided")
    assert r.p_value == pytest.approx(reference.pvalue)
    # probability of superiority counted pair by pair
    superiority = np.mean(treatment[:, None] > control[None, :]) + 0.5 * np.mean(
        treatment[:, None] == control
    )
    assert r.treatment_value == pytest.approx(superiority)
    assert r.ci_low < r.estimate < r.ci_high


def test_bootstrap_ratio_of_sums_not_mean_of_ratios() -> None:
    # control: clicks (1, 9) over impressions (10, 10) -> 10/20 = 0.5
    # treatment: clicks (1, 1) over impressions (1, 9) -> 2/10 = 0.2 (mean of ratios would be 0.556)
    r = bootstrap_ratio_test([1, 9], [10, 10], [1, 1], [1, 9], n_resamples=200)
    assert (r.control_value, r.treatment_value) == pytest.approx((0.5, 0.2))
    assert r.estimate == pytest.approx(-0.3)
    assert r.relative_lift == pytest.approx(-0.6)


def test_bootstrap_seeded_and_covers_difference() -> None:
    rng = np.random.default_rng(11)
    imps_c, imps_t = rng.poisson(20, 800) + 1, rng.poisson(20, 800) + 1
    clicks_c, clicks_t = rng.binomial(imps_c, 0.10), rng.binomial(imps_t, 0.12)
    first = bootstrap_ratio_test(clicks_c, imps_c, clicks_t, imps_t, seed=1)
    again = bootstrap_ratio_test(clicks_c, imps_c, clicks_t, imps_t, seed=1)
    assert first == again
    assert first.ci_low < 0.02 < first.ci_high
    assert first.ci_low > 0 and first.p_value < 0.05
    lift, lift_low, lift_high = first.relative_lift, first.relative_ci_low, first.relative_ci_high
    assert lift is not None and lift_low is not None and lift_high is not None
    assert lift_low < lift < lift_high
    with pytest.raises(ExperimentError, match="differ in length"):
        bootstrap_ratio_test([1, 2], [1, 2, 3], [1, 2], [1, 2])


def test_sample_ratio_mismatch() -> None:
    # 5100 vs 4900 against 50/50: chi2 = 2 * 100^2 / 5000 = 4.0, p = 0.0455 -> no mismatch at 0.001
    check = sample_ratio_mismatch([5100, 4900], [0.5, 0.5])
    assert check.statistic == pytest.approx(4.0)
    assert check.p_value == pytest.approx(0.0455003, abs=1e-6)
    assert not check.mismatch
    # a 10/90 plan: 1000 vs 9000 is exact
    assert sample_ratio_mismatch([1000, 9000], [0.1, 0.9]).p_value == pytest.approx(1.0)
    assert sample_ratio_mismatch([1200, 8800], [0.1, 0.9]).mismatch
    with pytest.raises(ExperimentError, match="one planned share per arm"):
        sample_ratio_mismatch([1, 2, 3], [0.5, 0.5])


def test_sample_size_matches_statsmodels_and_simulation() -> None:
    for baseline, lift in [(0.10, 0.20), (0.03, 0.05), (0.30, -0.1)]:
        expected = samplesize_proportions_2indep_onetail(baseline * lift, baseline, 0.8, alpha=0.05)
        assert sample_size_per_arm(baseline, lift) == math.ceil(expected)
    n = sample_size_per_arm(0.10, 0.20)
    assert power_two_proportions(n, 0.10, 0.12) == pytest.approx(0.8, abs=1e-3)
    assert detectable_effect(n, 0.10) == pytest.approx(0.20, abs=1e-3)
    assert detectable_effect(n, 0.10, direction=-1) < 0
    # simulated power: 1000 experiments at n per arm reject about 80% of the time
    rng = np.random.default_rng(2)
    kc, kt = rng.binomial(n, 0.10, 1000), rng.binomial(n, 0.12, 1000)
    pooled = (kc + kt) / (2 * n)
    z = (kt - kc) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    rate = np.mean(np.abs(z) > stats.norm.ppf(0.975))
    assert 0.75 < rate < 0.85
    with pytest.raises(ExperimentError, match="different rate"):
        sample_size_per_arm(0.5, 1.5)


def test_guardrails_pass_fail_with_reasons() -> None:
    bad_ctr = two_proportion_ztest(1000, 10000, 900, 10000)  # lift -10%
    fine_ctr = two_proportion_ztest(1000, 10000, 1000, 10000)
    rails = [
        Guardrail("ctr", max_relative_drop=0.02),
        Guardrail("p99_ms", max_value=180.0),
        Guardrail("error_rate", max_value=0.001),
    ]
    report = check_guardrails({"ctr": bad_ctr, "p99_ms": 190.0}, rails)
    assert not report.passed
    assert [o.passed for o in report.outcomes] == [False, False, False]
    assert report.reasons[1] == "p99_ms: 190 exceeds the maximum 180"
    assert report.reasons[2] == "error_rate: no result"
    good = check_guardrails({"ctr": fine_ctr, "p99_ms": 150.0, "error_rate": 0.0005}, rails)
    assert good.passed and good.reasons == ()
    # significant_only: -5% on small arms is not evidence of a 2% drop
    noisy = two_proportion_ztest(100, 1000, 95, 1000)
    assert check_guardrails(
        {"ctr": noisy}, [Guardrail("ctr", max_relative_drop=0.02, significant_only=True)]
    ).passed
    with pytest.raises(ExperimentError, match="sets no bound"):
        Guardrail("ctr")
