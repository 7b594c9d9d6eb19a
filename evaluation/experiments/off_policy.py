"""Off-policy evaluation: what a new policy would have earned, estimated from logs of the current one.

Each logged row holds the action the logging policy took, its probability under the logging policy (the
propensity), the reward observed, and the probability the target policy gives the same action. Reweighting
each reward by target / logging probability turns the logged average into an estimate of the target's
value, provided the logging policy gave every action the target might take a positive probability and the
propensities were recorded at serving time (not re-estimated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from evaluation.experiments.ab_tests import ExperimentError


@dataclass(frozen=True)
class OffPolicyEstimate:
    """An estimate of the target policy's mean reward per decision.

    Attributes:
        estimator: ``ips`` or ``snips``.
        value: The estimate.
        std_error: Its standard error (sample variance for IPS, delta method for SNIPS).
        ci_low: Lower end of the normal interval at level 1 - alpha.
        ci_high: Upper end.
        n: Logged decisions used.
        clip: The cap applied to importance weights (inf when none).
        n_clipped: Weights the cap lowered; many means the estimate is biased towards the logging policy.
        effective_sample_size: (sum w)^2 / sum w^2: how many on-policy samples the logs are worth.
    """

    estimator: str
    value: float
    std_error: float
    ci_low: float
    ci_high: float
    n: int
    clip: float
    n_clipped: int
    effective_sample_size: float


def importance_weights(
    propensity: ArrayLike,
    target_probability: ArrayLike,
    action: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Unclipped weights target / logging probability of each logged action.

    ``target_probability`` is either one probability per row (of the logged action) or a matrix
    (rows x actions) of the target policy's distribution, from which ``action`` picks the logged column.
    """
    mu = np.asarray(propensity, dtype=np.float64).ravel()
    pi = np.asarray(target_probability, dtype=np.float64)
    if pi.ndim == 2:
        if action is None:
            raise ExperimentError("a target probability matrix needs the logged action of each row")
        acts = np.asarray(action).ravel()
        if acts.shape != mu.shape or pi.shape[0] != mu.size:
            raise ExperimentError(f"{mu.size} propensities, {acts.size} actions, {pi.shape[0]} target rows")
        if not np.issubdtype(acts.dtype, np.integer) or acts.min() < 0 or acts.max() >= pi.shape[1]:
            raise ExperimentError(f"actions must be integer column indices in [0, {pi.shape[1]})")
        pi = pi[np.arange(mu.size), acts]
    pi = pi.ravel()
    if pi.shape != mu.shape:
        raise ExperimentError(f"{mu.size} propensities but {pi.size} target probabilities")
    if mu.size == 0:
        raise ExperimentError("no logged decisions")
    if not np.all((mu > 0) & (mu <= 1)):
        raise ExperimentError("propensities must be in (0, 1]: a zero propensity cannot be reweighted")
    if not np.all((pi >= 0) & (pi <= 1)):
        raise ExperimentError("target probabilities must be in [0, 1]")
    weights: NDArray[np.float64] = pi / mu
    return weights


def _prepare(
    propensity: ArrayLike,
    reward: ArrayLike,
    target_probability: ArrayLike,
    action: ArrayLike | None,
    clip: float | None,
    alpha: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], float, int]:
    if not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha must be in (0, 1), got {alpha}")
    cap = np.inf if clip is None else float(clip)
    if cap <= 0:
        raise ExperimentError(f"clip must be positive, got {clip}")
    raw = importance_weights(propensity, target_probability, action)
    r = np.asarray(reward, dtype=np.float64).ravel()
    if r.shape != raw.shape or not np.all(np.isfinite(r)):
        raise ExperimentError(f"need one finite reward per logged decision, got {r.size} for {raw.size}")
    if raw.size < 2:
        raise ExperimentError("need at least two logged decisions for a standard error")
    return np.minimum(raw, cap), r, cap, int(np.sum(raw > cap))


def _estimate(
    name: str, value: float, se: float, w: NDArray[np.float64], cap: float, n_clipped: int, alpha: float
) -> OffPolicyEstimate:
    z = float(stats.norm.ppf(1 - alpha / 2))
    ess = float(w.sum() ** 2 / np.sum(w**2)) if np.any(w > 0) else 0.0
    return OffPolicyEstimate(
        name, value, se, value - z * se, value + z * se, int(w.size), cap, n_clipped, ess
    )


def ips(
    propensity: ArrayLike,
    reward: ArrayLike,
    target_probability: ArrayLike,
    action: ArrayLike | None = None,
    clip: float | None = None,
    alpha: float = 0.05,
) -> OffPolicyEstimate:
    """Inverse propensity scoring: mean of weight x reward. Unbiased without clipping, but high-variance.

    Clipping the weights at ``clip`` trades a bias towards the logging policy for a smaller variance.

    Example:
        >>> round(ips([0.5, 0.5, 0.25, 0.25], [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.5, 0.5]).value, 4)
        1.0
    """
    w, r, cap, n_clipped = _prepare(propensity, reward, target_probability, action, clip, alpha)
    terms = w * r
    value = float(terms.mean())
    se = float(terms.std(ddof=1) / np.sqrt(terms.size))
    return _estimate("ips", value, se, w, cap, n_clipped, alpha)


def snips(
    propensity: ArrayLike,
    reward: ArrayLike,
    target_probability: ArrayLike,
    action: ArrayLike | None = None,
    clip: float | None = None,
    alpha: float = 0.05,
) -> OffPolicyEstimate:
    """Self-normalised IPS: sum(w r) / sum(w). Slightly biased, much lower variance, and bounded by the
    range of the rewards, so a few huge weights cannot push it to absurd values.

    Example:
        >>> round(snips([0.5, 0.5, 0.25, 0.25], [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.5, 0.5]).value, 4)
        0.6667
    """
    w, r, cap, n_clipped = _prepare(propensity, reward, target_probability, action, clip, alpha)
    total = float(w.sum())
    if total == 0:
        raise ExperimentError("every importance weight is zero: the target never takes a logged action")
    value = float(np.sum(w * r) / total)
    # Delta method for a ratio of means: var = mean(w^2 (r - V)^2) / (n mean(w)^2).
    mean_w = total / w.size
    se = float(np.sqrt(np.mean(w**2 * (r - value) ** 2) / w.size) / mean_w)
    return _estimate("snips", value, se, w, cap, n_clipped, alpha)
