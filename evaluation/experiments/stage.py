"""`recsys experiment ...`: run one acceptance scenario on the simulator, write its result and HTML report.

Every scenario starts the same way: a simulated platform of ``experiments.population`` users, a random
exploration log, and the policies fitted on it (the learned `Taste` model is "good"; popularity or a
degraded copy of it is "worse"). Results go to ``<state_dir>/experiments/runs/<kind>/`` as
``result.json`` and ``report.html``; the canary also drives ``<state_dir>/experiments/experiments.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evaluation.experiments import report
from evaluation.experiments.ab_simulation import check_aa, check_power, cumulative_effect
from evaluation.experiments.canary import HOUR, Thresholds
from evaluation.experiments.canary_runner import ServiceProfile, run_simulated_canary
from evaluation.experiments.interleaving_simulation import interleaving_power
from evaluation.experiments.off_policy_simulation import check_off_policy
from evaluation.experiments.policies import Degraded, Policy, Popularity, Taste
from evaluation.experiments.settings import ExperimentsConfig
from evaluation.experiments.simulation import Platform, exploration_log
from recsys.config import PipelineConfig
from recsys.simulator.settings import SimulatorConfig
from recsys.state import StateDir

Kind = Literal["ab", "aa", "interleave", "ips", "canary"]
CanaryModel = Literal["good", "bad", "slow"]


@dataclass(frozen=True)
class Setup:
    """The platform and the fitted policies every scenario uses."""

    platform: Platform
    good: Policy
    worse: Policy
    popularity: Policy
    settings: ExperimentsConfig


def prepare(simulator: SimulatorConfig, settings: ExperimentsConfig) -> Setup:
    """Platform, exploration log and fitted policies (seeded: the same settings give the same policies)."""
    config = SimulatorConfig.model_validate({**simulator.model_dump(), "n_users": settings.population})
    platform = Platform(config)
    users = np.arange(settings.population)
    log = exploration_log(platform, users, settings.log_slates_per_user, settings.slate_size, settings.seed)
    popularity = Popularity.fit(log, len(platform.items))
    good = Taste.fit(log, platform.genres, settings.population)
    worse: Policy = popularity
    if settings.worse == "degraded":
        worse = Degraded(good, settings.degrade_noise, settings.seed)
    return Setup(platform, good, worse, popularity, settings)


def _rate_text(r: Any) -> str:
    return f"{r.hits}/{r.runs} = {r.value:.3f} [{r.low:.3f}, {r.high:.3f}]"


def scenario_ab(setup: Setup) -> tuple[dict[str, Any], list[report.Section]]:
    """Power-planned A/B of worse (control) vs good (treatment), repeated to measure the achieved power."""
    s = setup.settings
    check = check_power(
        setup.platform,
        setup.worse,
        setup.good,
        s.slate_size,
        s.min_relative_effect,
        s.power_repeats,
        s.seed,
        s.alpha,
        s.power,
    )
    run = check.first
    summary = {
        "baseline_slate_ctr": check.baseline_rate,
        "min_relative_effect": check.min_relative_effect,
        "planned_power": check.planned_power,
        "planned_users_per_arm": check.n_per_arm,
        "repeats": check.detected.runs,
        "detection_rate": asdict(check.detected),
        "observed_lift": check.observed_lift,
        "power_at_observed_lift": check.power_at_observed,
        "first_run": {name: asdict(r) for name, r in run.results.items()},
        "srm_p_value": run.srm.p_value,
        "guardrails_passed": run.guardrails.passed,
        "guardrail_reasons": list(run.guardrails.reasons),
    }
    plan = [
        ("control / treatment", f"{setup.worse.name} / {setup.good.name}"),
        ("pilot slate CTR (control)", f"{check.baseline_rate:.4f}"),
        ("plan", f"MDE {check.min_relative_effect:+.1%} relative, alpha {s.alpha}, power {s.power}"),
        ("users per arm (planned)", f"{check.n_per_arm}"),
        ("detected in repeats", _rate_text(check.detected)),
        (
            "pooled lift / theoretical power at it",
            f"{check.observed_lift:+.2%} / {check.power_at_observed:.3f}",
        ),
        ("sample ratio check p", f"{run.srm.p_value:.3g}"),
        ("guardrails", "passed" if run.guardrails.passed else "; ".join(run.guardrails.reasons)),
    ]
    metrics = ["slate_ctr", "item_ctr", "watch_s_per_user", "skip_rate"]
    sections = [
        report.Section("Plan and power", plan),
        report.Section(
            "First run: every metric",
            report.result_rows(run.results),
            [report.arms_figure(run.results, metrics), report.cumulative_figure(*cumulative_effect(run))],
        ),
    ]
    return summary, sections


def scenario_aa(setup: Setup) -> tuple[dict[str, Any], list[report.Section]]:
    """Repeated A/A tests of the good policy against itself: the false positive rate."""
    s = setup.settings
    check = check_aa(
        setup.platform, setup.good, s.slate_size, s.aa_users_per_arm, s.aa_repeats, s.seed, s.alpha
    )
    summary = {
        "users_per_arm": check.n_per_arm,
        "alpha": check.alpha,
        "false_positive_rate": asdict(check.false_positives),
    }
    rows = [
        ("users per arm", str(check.n_per_arm)),
        ("alpha", str(check.alpha)),
        ("false positives", _rate_text(check.false_positives)),
    ]
    return summary, [report.Section("A/A", rows, [report.p_value_figure(check.p_values, check.alpha)])]


def scenario_interleave(setup: Setup) -> tuple[dict[str, Any], list[report.Section]]:
    """Users team-draft interleaving needs to detect worse vs good, beside the A/B plan's users."""
    s = setup.settings
    found = interleaving_power(
        setup.platform,
        setup.worse,
        setup.good,
        s.slate_size,
        s.interleaving_sizes,
        s.interleaving_repeats,
        s.seed,
        s.alpha,
        s.power,
    )
    from evaluation.experiments.power import sample_size_per_arm

    pilot = check_power(
        setup.platform, setup.worse, setup.good, s.slate_size, s.min_relative_effect, 1, s.seed
    )
    ab_users = 2 * sample_size_per_arm(pilot.baseline_rate, s.min_relative_effect, s.alpha, s.power)
    summary = {
        "sizes": list(found.sizes),
        "detection_rates": [asdict(r) for r in found.detected],
        "interleaving_users_needed": found.users_needed,
        "ab_planned_users": ab_users,
    }
    rows = [(f"{n} users", _rate_text(r)) for n, r in zip(found.sizes, found.detected, strict=True)]
    rows += [
        ("users needed (interleaving)", str(found.users_needed)),
        ("users planned (A/B, both arms)", str(ab_users)),
    ]
    curve = [(r.value, r.low, r.high) for r in found.detected]
    figure = report.power_curve_figure(found.sizes, curve, "team-draft interleaving")
    return summary, [report.Section("Interleaving", rows, [figure])]


def scenario_ips(setup: Setup) -> tuple[dict[str, Any], list[report.Section]]:
    """IPS/SNIPS of the good policy from epsilon-greedy logs of popularity, against its online result."""
    s = setup.settings
    users = np.arange(setup.platform.n_users)
    check = check_off_policy(
        setup.platform,
        setup.popularity,
        setup.good,
        users,
        s.ope_rounds,
        s.seed,
        s.ope_epsilon,
        s.ope_candidates,
        s.ope_clip,
        s.alpha,
    )
    summary = {
        "logging_value": check.logging_value,
        "online": asdict(check.online),
        "estimates": {k: asdict(v) for k, v in check.estimates.items()},
        "agrees": {k: check.agrees(k) for k in check.estimates},
    }
    online = check.online
    rows = [
        ("logging policy (popularity, epsilon-greedy) value", f"{check.logging_value:.4f}"),
        ("target online", f"{online.value:.4f} [{online.ci_low:.4f}, {online.ci_high:.4f}]"),
    ]
    for name, e in check.estimates.items():
        text = f"{e.value:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}], ESS {e.effective_sample_size:.0f}"
        rows.append((name, f"{text}, online inside: {check.agrees(name)}"))
    named = {k: (v.value, v.ci_low, v.ci_high) for k, v in check.estimates.items()}
    named["online"] = (check.online.value, check.online.ci_low, check.online.ci_high)
    return summary, [report.Section("Off-policy estimates", rows, [report.estimates_figure(named)])]


def scenario_canary(
    setup: Setup, experiments_file: Path, model: CanaryModel = "good", approve_manual: bool = True
) -> tuple[dict[str, Any], list[report.Section]]:
    """Canary of the good (or a bad, or a slow) model against popularity on accelerated time."""
    s = setup.settings
    canary: Policy = setup.good if model != "bad" else Degraded(setup.good, 4 * s.degrade_noise, s.seed)
    service = ServiceProfile(p50_ms=90.0) if model == "slow" else ServiceProfile()
    run = run_simulated_canary(
        setup.platform,
        setup.popularity,
        canary,
        experiments_file,
        s.seed,
        approver=lambda state: approve_manual,
        thresholds=Thresholds(min_impressions=s.canary_min_impressions),
        users_per_hour=s.canary_users_per_hour,
        tick_hours=s.canary_tick_hours,
        max_hours=s.canary_max_days * 24,
        k=s.slate_size,
        canary_service=service,
    )
    history = [(t / HOUR, stage, reason) for t, stage, reason in run.state.history]
    summary = {
        "model": model,
        "status": run.state.status,
        "final_traffic": run.state.traffic,
        "history": history,
        "thresholds": asdict(run.state.thresholds),
    }
    rows = [
        ("canary model", model),
        ("final status", run.state.status),
        ("final share", f"{run.state.traffic:.0%}"),
    ]
    rows += [
        (f"{h:.0f} h", f"stage {stage} ({run.state.stages[stage].traffic:.0%}): {why}")
        for h, stage, why in history
    ]
    hours = np.array([t.hour for t in run.ticks])
    traffic = np.array([t.traffic for t in run.ticks])
    figure = report.traffic_figure(hours, traffic, [(h, why) for h, _, why in history[1:]])
    return summary, [report.Section("Canary rollout", rows, [figure])]


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def run_experiment(
    cfg: PipelineConfig, kind: Kind, canary_model: CanaryModel = "good", approve_manual: bool = True
) -> dict[str, Any]:
    """Runs one scenario; writes ``result.json`` and ``report.html``; returns the summary."""
    state = StateDir(cfg.state_dir)
    setup = prepare(cfg.simulator, cfg.experiments)
    if kind == "canary":
        summary, sections = scenario_canary(setup, state.experiments_file, canary_model, approve_manual)
    else:
        summary, sections = {
            "ab": scenario_ab,
            "aa": scenario_aa,
            "interleave": scenario_interleave,
            "ips": scenario_ips,
        }[kind](setup)
    out = state.experiments_file.parent / "runs" / (kind if kind != "canary" else f"canary-{canary_model}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(_jsonable(summary), indent=2))
    (out / "report.html").write_text(report.render(f"Simulated experiment: {kind}", sections))
    return {
        "kind": kind,
        "out": str(out),
        **{k: v for k, v in summary.items() if not isinstance(v, dict | list)},
    }
