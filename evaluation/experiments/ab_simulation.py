"""A/B and A/A tests run on the simulated platform, planned with `power` and read with `ab_tests`.

One A/B run: a random sample of the population arrives over ``days`` (one slate per user), each user
is bucketed with `assignment.assign`, sees the slate of their arm's policy, and the per-user outcomes
are analysed: slate CTR (did the user click anything: a Bernoulli per user, the metric the power
analysis plans for), clicks and watch time per user, item CTR and skip rate as ratio metrics, and the
guardrails. Repeating the run with fresh salts and seeds measures what the analysis promises: the
power at the planned size, and the false positive rate when both arms serve the same policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from scipy import stats

from evaluation.experiments.ab_tests import (
    SampleRatioCheck,
    TestResult,
    bootstrap_ratio_test,
    mann_whitney_u,
    sample_ratio_mismatch,
    two_proportion_ztest,
    welch_ttest,
)
from evaluation.experiments.assignment import Experiment, Variant, assign
from evaluation.experiments.guardrails import Guardrail, GuardrailReport, check_guardrails
from evaluation.experiments.policies import Policy, slates
from evaluation.experiments.power import power_two_proportions, sample_size_per_arm
from evaluation.experiments.simulation import Platform, SlateOutcomes

DEFAULT_GUARDRAILS: tuple[Guardrail, ...] = (
    Guardrail("item_ctr", max_relative_drop=0.02),
    Guardrail("skip_rate", max_relative_rise=0.10),
)


@dataclass(frozen=True)
class AbRun:
    """One simulated A/B test: the arms' outcomes, each user's arrival hour, and the analysis."""

    control: SlateOutcomes
    treatment: SlateOutcomes
    hours_control: np.ndarray
    hours_treatment: np.ndarray
    results: dict[str, TestResult]
    srm: SampleRatioCheck
    guardrails: GuardrailReport


@dataclass(frozen=True)
class Rate:
    """A share of repeated runs with its Wilson interval."""

    hits: int
    runs: int
    low: float
    high: float

    @property
    def value(self) -> float:
        """hits / runs."""
        return self.hits / self.runs


def rate(hits: int, runs: int, alpha: float = 0.05) -> Rate:
    """``hits`` of ``runs`` with a Wilson interval at level 1 - alpha."""
    interval = stats.binomtest(hits, runs).proportion_ci(1 - alpha, method="wilson")
    return Rate(hits, runs, float(interval.low), float(interval.high))


def analyse(
    control: SlateOutcomes,
    treatment: SlateOutcomes,
    alpha: float = 0.05,
    full: bool = True,
    guardrails: tuple[Guardrail, ...] = DEFAULT_GUARDRAILS,
) -> tuple[dict[str, TestResult], GuardrailReport]:
    """Every metric's test, per user; ``full=False`` runs only the primary z-test (for repeats)."""
    results = {
        "slate_ctr": two_proportion_ztest(
            int(control.any_click.sum()),
            len(control.user),
            int(treatment.any_click.sum()),
            len(treatment.user),
            alpha,
        )
    }
    if full:
        k = control.items.shape[1]
        ones_c, ones_t = np.full(len(control.user), k), np.full(len(treatment.user), k)
        results["clicks_per_user"] = welch_ttest(control.clicks, treatment.clicks, alpha)
        results["watch_s_per_user"] = welch_ttest(control.watch_s, treatment.watch_s, alpha)
        results["watch_s_rank"] = mann_whitney_u(control.watch_s, treatment.watch_s, alpha)
        results["item_ctr"] = bootstrap_ratio_test(
            control.clicks, ones_c, treatment.clicks, ones_t, alpha=alpha, seed=1
        )
        if control.views.sum() > 0 and treatment.views.sum() > 0:
            results["skip_rate"] = bootstrap_ratio_test(
                control.skips, control.views, treatment.skips, treatment.views, alpha=alpha, seed=2
            )
    report = check_guardrails(results, guardrails if full else ())
    return results, report


def run_ab(
    platform: Platform,
    control: Policy,
    treatment: Policy,
    users: np.ndarray,
    k: int,
    seed: int,
    days: float = 14.0,
    alpha: float = 0.05,
    salt: str = "",
    full: bool = True,
) -> AbRun:
    """Buckets ``users`` 50/50 with `assign`, shows each arm's slates, analyses per user."""
    experiment = Experiment(
        "ab", (Variant("control", control.name, 0.5), Variant("treatment", treatment.name, 0.5)), salt
    )
    arm = np.array([assign(f"u{u}", experiment) == "treatment" for u in users])
    rng = np.random.default_rng([seed, 11])
    hours = rng.random(len(users)) * days * 24
    outcomes = []
    for policy, rows in ((control, np.flatnonzero(~arm)), (treatment, np.flatnonzero(arm))):
        moments = [platform.epoch + timedelta(hours=float(h)) for h in hours[rows]]
        shown = slates(policy, users[rows], k)
        outcomes.append(platform.show(users[rows], shown, moments, seed=int(rng.integers(1 << 31))))
    results, report = analyse(outcomes[0], outcomes[1], alpha, full)
    srm = sample_ratio_mismatch([len(outcomes[0].user), len(outcomes[1].user)], [0.5, 0.5])
    return AbRun(outcomes[0], outcomes[1], hours[~arm], hours[arm], results, srm, report)


def cumulative_effect(
    run: AbRun, checkpoints: int = 14
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(hours, relative lift, low, high) of slate CTR using the users arrived by each checkpoint."""
    end = float(max(run.hours_control.max(), run.hours_treatment.max()))
    hours = np.linspace(end / checkpoints, end, checkpoints)
    lift, low, high = (np.full(checkpoints, np.nan) for _ in range(3))
    for n, cut in enumerate(hours):
        c = run.control.any_click[run.hours_control <= cut]
        t = run.treatment.any_click[run.hours_treatment <= cut]
        if len(c) < 2 or len(t) < 2 or c.sum() == 0:
            continue
        result = two_proportion_ztest(int(c.sum()), len(c), int(t.sum()), len(t))
        lift[n] = result.relative_lift if result.relative_lift is not None else np.nan
        low[n] = result.relative_ci_low if result.relative_ci_low is not None else np.nan
        high[n] = result.relative_ci_high if result.relative_ci_high is not None else np.nan
    return hours, lift, low, high


@dataclass(frozen=True)
class PowerCheck:
    """A planned A/B test and how its repeats came out."""

    baseline_rate: float  # control's slate CTR in the pilot
    min_relative_effect: float
    planned_power: float
    n_per_arm: int
    detected: Rate  # repeats that rejected in the treatment's favour
    observed_lift: float  # relative lift pooled over every repeat (close to the true effect)
    power_at_observed: float  # theoretical power at n_per_arm for the pooled effect
    first: AbRun  # the first repeat, fully analysed, for the report


def check_power(
    platform: Platform,
    control: Policy,
    treatment: Policy,
    k: int,
    min_relative_effect: float,
    repeats: int,
    seed: int,
    alpha: float = 0.05,
    power: float = 0.8,
    pilot_users: int = 2000,
) -> PowerCheck:
    """Pilot -> sample size from `power` -> ``repeats`` A/B runs at that size, each on fresh users."""
    rng = np.random.default_rng([seed, 13])
    pilot = rng.choice(platform.n_users, min(pilot_users, platform.n_users), replace=False)
    baseline = float(platform.show(pilot, slates(control, pilot, k), platform.epoch, seed).any_click.mean())
    n = sample_size_per_arm(baseline, min_relative_effect, alpha, power)
    if 2 * n > platform.n_users:
        raise ValueError(f"the plan needs {2 * n} users but the simulated population has {platform.n_users}")
    hits, clicks_c, users_c, clicks_t, users_t = 0, 0, 0, 0, 0
    first: AbRun | None = None
    for r in range(repeats):
        users = rng.choice(platform.n_users, 2 * n, replace=False)
        salt = f"power-{seed}-{r}"
        run = run_ab(
            platform, control, treatment, users, k, seed + 1000 * r, alpha=alpha, salt=salt, full=r == 0
        )
        z = run.results["slate_ctr"]
        hits += bool(z.significant and z.estimate * min_relative_effect > 0)
        clicks_c += int(run.control.any_click.sum())
        users_c += len(run.control.user)
        clicks_t += int(run.treatment.any_click.sum())
        users_t += len(run.treatment.user)
        first = first or run
    assert first is not None
    p_c, p_t = clicks_c / users_c, clicks_t / users_t
    return PowerCheck(
        baseline,
        min_relative_effect,
        power,
        n,
        rate(hits, repeats),
        p_t / p_c - 1,
        power_two_proportions(n, p_c, p_t, alpha) if 0 < p_t < 1 else float("nan"),
        first,
    )


@dataclass(frozen=True)
class AaCheck:
    """Repeated A/A tests: how often the z-test rejected though both arms served the same policy."""

    n_per_arm: int
    alpha: float
    false_positives: Rate
    p_values: np.ndarray


def check_aa(
    platform: Platform, policy: Policy, k: int, n_per_arm: int, repeats: int, seed: int, alpha: float = 0.05
) -> AaCheck:
    """``repeats`` A/A runs, each with a new salt, a new sample of users and new response draws."""
    rng = np.random.default_rng([seed, 17])
    p_values = np.empty(repeats)
    for r in range(repeats):
        users = rng.choice(platform.n_users, min(2 * n_per_arm, platform.n_users), replace=False)
        salt = f"aa-{seed}-{r}"
        run = run_ab(platform, policy, policy, users, k, seed + 1000 * r, alpha=alpha, salt=salt, full=False)
        p_values[r] = run.results["slate_ctr"].p_value
    return AaCheck(n_per_arm, alpha, rate(int((p_values < alpha).sum()), repeats), p_values)
