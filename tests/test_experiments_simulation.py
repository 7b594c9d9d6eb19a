"""Experiments on the simulated platform: A/B power, A/A, interleaving, off-policy, canary, report.

One small platform (seeded) and its fitted policies are shared by every test in the module.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from evaluation.experiments import report
from evaluation.experiments.ab_simulation import check_aa, check_power, cumulative_effect, run_ab
from evaluation.experiments.assignment import load_experiments
from evaluation.experiments.canary import HOUR, Stage, Thresholds
from evaluation.experiments.canary_runner import ServiceProfile, run_simulated_canary
from evaluation.experiments.interleaving_simulation import run_interleaving
from evaluation.experiments.off_policy_simulation import check_off_policy
from evaluation.experiments.policies import Degraded, examination, slates
from evaluation.experiments.settings import ExperimentsConfig
from evaluation.experiments.stage import Setup, prepare
from recsys.simulator.settings import SimulatorConfig

SHORT_STAGES = (
    Stage(0.05, 12 * HOUR),
    Stage(0.25, 12 * HOUR),
    Stage(0.50, 12 * HOUR, manual=True),
    Stage(1.00, 0.0),
)


@pytest.fixture(scope="module")
def setup() -> Setup:
    settings = ExperimentsConfig(population=2500, log_slates_per_user=6, degrade_noise=2.0, seed=0)
    return prepare(SimulatorConfig(n_items=1500), settings)


def test_policies_learn_from_the_log(setup: Setup) -> None:
    platform = setup.platform
    users = np.arange(2000)
    ctr = {}
    for policy in (setup.good, setup.worse, setup.popularity):
        shown = platform.show(users, slates(policy, users, 10), platform.epoch, seed=5)
        ctr[policy.name] = shown.clicked.mean()
    # the learned model beats popularity, and the deliberately degraded copy is far worse than both
    assert ctr["taste"] > ctr["popularity"] > ctr["degraded"]
    assert ctr["taste"] > 1.5 * ctr["degraded"]


def test_position_bias_is_recovered_from_random_slates() -> None:
    platform_config = SimulatorConfig(n_users=1500, n_items=1000, position_bias_exponent=0.8)
    from evaluation.experiments.simulation import Platform, exploration_log

    platform = Platform(platform_config)
    log = exploration_log(platform, np.arange(1500), 4, 5, seed=1)
    estimated = examination(log)
    truth = np.arange(1, 6) ** -0.8
    assert np.allclose(estimated, truth, atol=0.08)


def test_ab_detects_the_difference_at_the_planned_size(setup: Setup) -> None:
    check = check_power(setup.platform, setup.worse, setup.good, 10, 0.15, repeats=8, seed=1)
    assert 50 < check.n_per_arm < 600
    assert check.detected.hits == 8  # the true effect is far above the planned minimum
    assert check.observed_lift > 0.15
    first = check.first
    assert first.results["slate_ctr"].significant and first.results["watch_s_per_user"].significant
    assert not first.srm.mismatch
    hours, lift, low, high = cumulative_effect(first, checkpoints=4)
    assert len(hours) == 4 and np.all(low[-1:] < lift[-1:]) and np.all(lift[-1:] < high[-1:])


def test_aa_false_positive_rate_is_near_alpha(setup: Setup) -> None:
    check = check_aa(setup.platform, setup.good, 10, n_per_arm=200, repeats=60, seed=3)
    # 60 tests at alpha 0.05: 0..8 rejections holds 99.6% of the binomial(60, 0.05) mass
    assert check.false_positives.hits <= 8
    assert check.false_positives.low < 0.05 < check.false_positives.high
    assert np.all((check.p_values >= 0) & (check.p_values <= 1))


def test_buckets_follow_assign_and_arms_are_balanced(setup: Setup) -> None:
    run = run_ab(
        setup.platform, setup.good, setup.good, np.arange(1000), 6, seed=4, salt="balance", full=False
    )
    assert len(run.control.user) + len(run.treatment.user) == 1000
    assert abs(len(run.control.user) - 500) < 60


def test_interleaving_prefers_the_good_policy_with_few_users(setup: Setup) -> None:
    result, credit = run_interleaving(setup.platform, setup.worse, setup.good, np.arange(150), 10, seed=6)
    assert len(credit) == 150
    assert result.significant and result.estimate > 0  # B (good) wins


def test_off_policy_estimates_agree_with_the_online_result(setup: Setup) -> None:
    check = check_off_policy(setup.platform, setup.popularity, setup.good, np.arange(2500), rounds=2, seed=7)
    assert check.agrees("ips") and check.agrees("snips")
    # the target is better than the logging policy, and the estimate says so
    assert check.estimates["snips"].ci_low > check.logging_value


def test_canary_good_reaches_full_traffic(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    approvals: list[int] = []

    def approver(state: object) -> bool:
        approvals.append(1)
        return True

    run = run_simulated_canary(
        setup.platform,
        setup.popularity,
        setup.good,
        path,
        seed=8,
        approver=approver,
        thresholds=Thresholds(min_impressions=1500),
        stages=SHORT_STAGES,
        users_per_hour=300,
        tick_hours=3,
    )
    assert run.state.status == "completed" and run.state.traffic == 1.0
    assert approvals, "the manual stage asked the approver"
    stored = load_experiments(path)["canary"]
    assert {v.name: v.traffic for v in stored.variants} == {"control": 0.0, "canary": 1.0}
    assert stored.rollout is not None and stored.rollout.thresholds.min_impressions == 1500
    assert stored.rollout.status == "completed"


def test_canary_bad_model_is_rolled_back_at_the_first_stage(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    bad = Degraded(setup.good, 6.0, seed=1)
    run = run_simulated_canary(
        setup.platform,
        setup.popularity,
        bad,
        path,
        seed=9,
        thresholds=Thresholds(min_impressions=1500),
        stages=SHORT_STAGES,
        users_per_hour=300,
        tick_hours=3,
    )
    assert run.state.status == "rolled_back" and run.state.stage == 0
    assert "CTR" in run.state.history[-1][2]
    stored = load_experiments(path)["canary"]
    assert {v.name: v.traffic for v in stored.variants} == {"control": 1.0, "canary": 0.0}


def test_canary_slow_model_is_rolled_back_by_p99(setup: Setup, tmp_path: Path) -> None:
    run = run_simulated_canary(
        setup.platform,
        setup.popularity,
        setup.good,
        tmp_path / "e.json",
        seed=10,
        stages=SHORT_STAGES,
        users_per_hour=300,
        tick_hours=3,
        canary_service=ServiceProfile(p50_ms=100.0),
    )
    assert run.state.status == "rolled_back" and "p99" in run.state.history[-1][2]


def test_canary_without_approval_waits_at_the_manual_stage(setup: Setup, tmp_path: Path) -> None:
    run = run_simulated_canary(
        setup.platform,
        setup.popularity,
        setup.good,
        tmp_path / "e.json",
        seed=8,
        approver=lambda state: False,
        thresholds=Thresholds(min_impressions=1500),
        stages=SHORT_STAGES,
        users_per_hour=300,
        tick_hours=3,
        max_hours=60,
    )
    assert run.state.status == "awaiting_approval" and run.state.traffic == 0.25


def test_report_embeds_png_images(setup: Setup) -> None:
    run = run_ab(setup.platform, setup.worse, setup.good, np.arange(800), 10, seed=11)
    figures = [
        report.arms_figure(run.results, ["slate_ctr", "item_ctr"]),
        report.cumulative_figure(*cumulative_effect(run)),
    ]
    page = report.render("A/B <test>", [report.Section("Result", report.result_rows(run.results), figures)])
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "A/B &lt;test&gt;" in page and "slate_ctr" in page
    assert "<script" not in page and 'src="http' not in page
    json.dumps(report.result_rows(run.results))
