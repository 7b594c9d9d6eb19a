"""Guardrails: metrics an experiment must not hurt, checked against thresholds fixed before it starts.

A guardrail is not the metric the experiment tries to move; it is one that must stay in bounds (latency,
error rate, CTR for a ranking change aimed at diversity). Each check is a plain comparison with a reason a
person can read, so a launch decision can quote it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evaluation.experiments.ab_tests import ExperimentError, TestResult


@dataclass(frozen=True)
class Guardrail:
    """Bounds on one metric. Leave a bound None to skip it; at least one must be set.

    Attributes:
        metric: Name of the metric in the results mapping.
        max_relative_drop: Fails when the treatment's relative lift is below ``-max_relative_drop``
            (0.02: "CTR must not fall by more than 2%"). Needs a `TestResult`.
        max_relative_rise: Fails when the relative lift is above it (for lower-is-better metrics).
        max_value: Fails when the treatment's value is above it (p99 latency in ms, error rate).
        min_value: Fails when the treatment's value is below it.
        significant_only: Relative bounds fail only when the interval of the lift lies entirely past the
            bound (evidence of harm), not on the point estimate alone. Off by default: a guardrail errs on
            the side of stopping.
    """

    metric: str
    max_relative_drop: float | None = None
    max_relative_rise: float | None = None
    max_value: float | None = None
    min_value: float | None = None
    significant_only: bool = False

    def __post_init__(self) -> None:
        bounds = (self.max_relative_drop, self.max_relative_rise, self.max_value, self.min_value)
        if all(b is None for b in bounds):
            raise ExperimentError(f"guardrail {self.metric!r} sets no bound")
        for name, bound in (
            ("max_relative_drop", self.max_relative_drop),
            ("max_relative_rise", self.max_relative_rise),
        ):
            if bound is not None and bound < 0:
                raise ExperimentError(f"guardrail {self.metric!r}: {name} must be >= 0, got {bound}")


@dataclass(frozen=True)
class GuardrailOutcome:
    """One guardrail's verdict: ``passed`` and the reasons it failed (empty when it passed)."""

    metric: str
    passed: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GuardrailReport:
    """Every guardrail's verdict; ``passed`` only when all passed."""

    outcomes: tuple[GuardrailOutcome, ...]

    @property
    def passed(self) -> bool:
        """Whether every guardrail passed."""
        return all(o.passed for o in self.outcomes)

    @property
    def reasons(self) -> tuple[str, ...]:
        """All failure reasons, in guardrail order."""
        return tuple(r for o in self.outcomes for r in o.reasons)


def _relative_reasons(rail: Guardrail, result: TestResult) -> list[str]:
    reasons: list[str] = []
    lift = result.relative_lift
    if lift is None:
        return [f"{rail.metric}: relative lift is undefined (control value {result.control_value})"]
    low = result.relative_ci_low if result.relative_ci_low is not None else lift
    high = result.relative_ci_high if result.relative_ci_high is not None else lift
    interval = f"lift {lift:+.2%} [{low:+.2%}, {high:+.2%}]"
    if rail.max_relative_drop is not None:
        worst = high if rail.significant_only else lift
        if worst < -rail.max_relative_drop:
            reasons.append(f"{rail.metric}: {interval} falls below -{rail.max_relative_drop:.2%}")
    if rail.max_relative_rise is not None:
        worst = low if rail.significant_only else lift
        if worst > rail.max_relative_rise:
            reasons.append(f"{rail.metric}: {interval} rises above +{rail.max_relative_rise:.2%}")
    return reasons


def check_guardrails(
    results: Mapping[str, TestResult | float], guardrails: Sequence[Guardrail]
) -> GuardrailReport:
    """Checks every guardrail against the results; a metric missing from ``results`` fails its guardrail.

    Args:
        results: Metric name -> a `TestResult` (relative and absolute bounds apply, absolute ones to the
            treatment's value) or a plain observed float (absolute bounds only, e.g. p99 latency).
        guardrails: The bounds, fixed before the experiment started.

    Example:
        >>> from evaluation.experiments.ab_tests import two_proportion_ztest
        >>> ctr = two_proportion_ztest(1000, 10000, 950, 10000)
        >>> report = check_guardrails({"ctr": ctr, "p99_ms": 150.0},
        ...     [Guardrail("ctr", max_relative_drop=0.02), Guardrail("p99_ms", max_value=180.0)])
        >>> report.passed, report.reasons
        (False, ('ctr: lift -5.00% [-12.69%, +3.36%] falls below -2.00%',))
    """
    outcomes: list[GuardrailOutcome] = []
    for rail in guardrails:
        reasons: list[str] = []
        if rail.metric not in results:
            reasons.append(f"{rail.metric}: no result")
        else:
            result = results[rail.metric]
            if isinstance(result, TestResult):
                value = result.treatment_value
                if rail.max_relative_drop is not None or rail.max_relative_rise is not None:
                    reasons.extend(_relative_reasons(rail, result))
            else:
                value = float(result)
                if rail.max_relative_drop is not None or rail.max_relative_rise is not None:
                    reasons.append(f"{rail.metric}: a relative bound needs a test result, got a bare value")
            if rail.max_value is not None and not value <= rail.max_value:
                reasons.append(f"{rail.metric}: {value:g} exceeds the maximum {rail.max_value:g}")
            if rail.min_value is not None and not value >= rail.min_value:
                reasons.append(f"{rail.metric}: {value:g} is below the minimum {rail.min_value:g}")
        outcomes.append(GuardrailOutcome(rail.metric, not reasons, tuple(reasons)))
    return GuardrailReport(tuple(outcomes))
