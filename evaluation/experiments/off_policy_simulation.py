"""Off-policy evaluation checked against the truth: estimate a policy from exploration logs, then run it.

The decision is the item shown in one slot (position 1, e.g. a featured tile), chosen among the top-M
candidates of the production (logging) policy. The logging policy explores epsilon-greedily: its own
best candidate with probability 1 - epsilon + epsilon / M, any other with epsilon / M, and serving
records that propensity with each decision. IPS and SNIPS reweight the logged clicks to the target
policy (greedy over the same candidates); the target is then served online to fresh draws of the same
users, and its observed click rate is compared with the estimates' intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from scipy import stats

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.off_policy import OffPolicyEstimate, ips, snips
from evaluation.experiments.policies import Policy, slates
from evaluation.experiments.simulation import Platform


@dataclass(frozen=True)
class OnlineValue:
    """The target policy's click rate served online, with a normal interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class OffPolicyCheck:
    """Estimates from the logs beside the online result."""

    logging_value: float  # the logging policy's own click rate in the log
    estimates: dict[str, OffPolicyEstimate]
    online: OnlineValue
    epsilon: float
    n_candidates: int

    def agrees(self, name: str) -> bool:
        """Whether the online value lies inside the named estimate's interval."""
        estimate = self.estimates[name]
        return estimate.ci_low <= self.online.value <= estimate.ci_high


def _candidates(platform: Platform, logging: Policy, users: np.ndarray, m: int) -> np.ndarray:
    return slates(logging, users, m)  # (users, m) item columns, the logging policy's best first


def _target_choice(target: Policy, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index (0..M-1) of the candidate the target policy puts first."""
    scores = np.take_along_axis(target.scores(users), candidates, axis=1)
    return np.asarray(scores.argmax(axis=1))


def check_off_policy(
    platform: Platform,
    logging: Policy,
    target: Policy,
    users: np.ndarray,
    rounds: int,
    seed: int,
    epsilon: float = 0.5,
    n_candidates: int = 10,
    clip: float = 10.0,
    alpha: float = 0.05,
) -> OffPolicyCheck:
    """Logs ``rounds`` exploring decisions per user, estimates the target, then serves it as many times."""
    if not 0 < epsilon <= 1 or n_candidates < 2:
        raise ExperimentError("epsilon must be in (0, 1] and there must be at least two candidates")
    rng = np.random.default_rng([seed, 29])
    candidates = _candidates(platform, logging, users, n_candidates)
    choice = _target_choice(target, users, candidates)
    rows = np.arange(len(users))
    actions, propensities, rewards, matches = [], [], [], []
    for r in range(rounds):
        explore = rng.random(len(users)) < epsilon
        action = np.where(explore, rng.integers(0, n_candidates, len(users)), 0)
        propensity = epsilon / n_candidates + (1 - epsilon) * (action == 0)
        moment = platform.epoch + timedelta(hours=r)
        shown = platform.show(users, candidates[rows, action][:, None], moment, seed=seed * 7919 + r)
        actions.append(action)
        propensities.append(propensity)
        rewards.append(shown.clicked[:, 0].astype(np.float64))
        matches.append((action == choice).astype(np.float64))
    propensity = np.concatenate(propensities)
    reward = np.concatenate(rewards)
    target_probability = np.concatenate(matches)  # the greedy target takes its choice with probability 1
    estimates = {
        "ips": ips(propensity, reward, target_probability, alpha=alpha),
        "snips": snips(propensity, reward, target_probability, alpha=alpha),
        f"ips_clip{clip:g}": ips(propensity, reward, target_probability, clip=clip, alpha=alpha),
    }
    served = []
    for r in range(rounds):
        moment = platform.epoch + timedelta(days=30, hours=r)
        shown = platform.show(users, candidates[rows, choice][:, None], moment, seed=seed * 104729 + r)
        served.append(shown.clicked[:, 0])
    online = np.concatenate(served).astype(np.float64)
    z = float(stats.norm.ppf(1 - alpha / 2))
    se = float(online.std(ddof=1) / np.sqrt(online.size))
    mean = float(online.mean())
    return OffPolicyCheck(
        float(reward.mean()),
        estimates,
        OnlineValue(mean, mean - z * se, mean + z * se, int(online.size)),
        epsilon,
        n_candidates,
    )
