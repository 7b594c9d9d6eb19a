"""IPS and SNIPS: hand-computed fixtures, clipping, and unbiasedness on a synthetic bandit of known value."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.off_policy import importance_weights, ips, snips

# Logged: 4 decisions. Weights = target / propensity = (2, 0, 2, 2); rewards (1, 0, 1, 0).
PROPENSITY = [0.5, 0.5, 0.25, 0.25]
REWARD = [1.0, 0.0, 1.0, 0.0]
TARGET = [1.0, 0.0, 0.5, 0.5]


def test_ips_hand_computed() -> None:
    est = ips(PROPENSITY, REWARD, TARGET)
    # terms w*r = (2, 0, 2, 0): mean 1.0, sample sd sqrt(4/3) = 1.154701, SE = 0.577350
    assert est.value == pytest.approx(1.0)
    assert est.std_error == pytest.approx(np.sqrt(4 / 3) / 2)
    assert est.ci_low == pytest.approx(1.0 - 1.959964 * 0.577350, abs=1e-5)
    # ESS = (sum w)^2 / sum w^2 = 36 / 12 = 3
    assert est.effective_sample_size == pytest.approx(3.0)
    assert est.n_clipped == 0


def test_snips_hand_computed() -> None:
    est = snips(PROPENSITY, REWARD, TARGET)
    # V = 4 / 6 = 2/3; mean(w^2 (r - V)^2) = (4 * 1/9 + 0 + 4 * 1/9 + 4 * 4/9) / 4 = (24/9) / 4 = 2/3
    # SE = sqrt((2/3) / 4) / mean(w) = 0.408248 / 1.5 = 0.272166
    assert est.value == pytest.approx(2 / 3)
    assert est.std_error == pytest.approx(np.sqrt(2 / 3 / 4) / 1.5)


def test_clipping_caps_weights() -> None:
    est = ips(PROPENSITY, REWARD, TARGET, clip=1.5)
    # weights (1.5, 0, 1.5, 1.5): terms (1.5, 0, 1.5, 0) -> 0.75
    assert est.value == pytest.approx(0.75)
    assert est.n_clipped == 3 and est.clip == 1.5


def test_matrix_target_with_actions() -> None:
    target = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    weights = importance_weights(PROPENSITY, target, action=np.array([0, 0, 1, 0]))
    assert weights.tolist() == [2.0, 0.0, 2.0, 2.0]


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ExperimentError, match="zero propensity"):
        ips([0.0, 0.5], [1.0, 0.0], [0.5, 0.5])
    with pytest.raises(ExperimentError, match="one finite reward"):
        ips([0.5, 0.5], [1.0], [0.5, 0.5])
    with pytest.raises(ExperimentError, match="logged action"):
        ips([0.5, 0.5], [1.0, 0.0], np.ones((2, 2)) / 2)


def test_unbiased_on_a_synthetic_bandit() -> None:
    rng = np.random.default_rng(0)
    n_actions, n_logs, n_seeds = 5, 2000, 200
    mean_reward = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    logging = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    target = np.array([0.05, 0.05, 0.1, 0.3, 0.5])
    true_value = float(target @ mean_reward)  # 0.405
    covered = {"ips": 0, "snips": 0}
    estimates = []
    for _ in range(n_seeds):
        actions = rng.choice(n_actions, size=n_logs, p=logging)
        rewards = (rng.random(n_logs) < mean_reward[actions]).astype(float)
        for estimator in (ips, snips):
            est = estimator(logging[actions], rewards, target[actions])
            covered[est.estimator] += est.ci_low <= true_value <= est.ci_high
            if est.estimator == "ips":
                estimates.append(est.value)
    # the mean of the estimates is within 3 standard errors of the truth
    spread = np.std(estimates, ddof=1) / np.sqrt(n_seeds)
    assert abs(np.mean(estimates) - true_value) < 3 * spread
    # 95% intervals cover the truth in 88-99% of 200 runs
    assert 176 <= covered["ips"] <= 199
    assert 176 <= covered["snips"] <= 199
    # heavy clipping biases the estimate towards the logging policy's value (0.2)
    actions = rng.choice(n_actions, size=20000, p=logging)
    rewards = (rng.random(20000) < mean_reward[actions]).astype(float)
    clipped = ips(logging[actions], rewards, target[actions], clip=1.0)
    assert clipped.value < true_value - 0.05
