"""Exploration over the ranked list, with the propensity of every shown item (for off-policy evaluation).

New and long-tail items only earn engagement data if they are shown sometimes. Two policies fill the `k`
slots one at a time from the ranked list:

- `epsilon`: with probability `1 - epsilon` the best remaining item, otherwise one of the remaining
  items drawn uniformly (the best included), so the best one has `1 - epsilon + epsilon / m`;
- `softmax`: an item drawn with probability proportional to `exp(relevance / temperature)`, where
  relevance is the item's position-based score in [0, 1] (rank 1 -> 1, last -> 0), so raw score scales
  of different rankers do not change how much is explored.

The propensity logged for a shown item is the probability that this item filled this slot given the
items above it (the factor IPS and SNIPS need per slot). With exploration off each propensity is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ExplorationConfig(BaseModel):
    """Off by default: a deterministic list is easier to reason about until an experiment needs data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["off", "epsilon", "softmax"] = "off"
    epsilon: float = Field(default=0.05, ge=0.0, le=1.0)
    temperature: float = Field(default=0.1, gt=0.0)
    # Only the first `pool` ranked items can be explored into the list.
    pool: int = Field(default=50, ge=1)


def explore(
    item_ids: Sequence[str],
    scores: Sequence[float],
    k: int,
    config: ExplorationConfig,
    rng: np.random.Generator,
) -> tuple[list[str], list[float], list[float]]:
    """The `k` items to show, their scores and propensities, drawn from the ranked list (best first).

    >>> explore(["a", "b", "c"], [3.0, 2.0, 1.0], 2, ExplorationConfig(), np.random.default_rng(0))
    (['a', 'b'], [3.0, 2.0], [1.0, 1.0])
    >>> ids, _, p = explore(["a", "b"], [2.0, 1.0], 1, ExplorationConfig(policy="epsilon", epsilon=0.2),
    ...                     np.random.default_rng(0))
    >>> (ids, p) in ((["a"], [0.9]), (["b"], [0.1]))
    True
    """
    n = min(len(item_ids), max(config.pool, k))
    if len(scores) != len(item_ids):
        raise ValueError(f"{len(item_ids)} item ids but {len(scores)} scores")
    if config.policy == "off" or n <= 1:
        take = min(k, len(item_ids))
        return list(item_ids[:take]), [float(s) for s in scores[:take]], [1.0] * take
    remaining = list(range(n))  # ranked order, best first
    relevance = 1.0 - np.arange(n) / max(n - 1, 1)
    chosen: list[int] = []
    propensities: list[float] = []
    for _ in range(min(k, n)):
        m = len(remaining)
        if config.policy == "epsilon":
            probs = np.full(m, config.epsilon / m)
            probs[0] += 1.0 - config.epsilon
        else:
            logits = relevance[remaining] / config.temperature
            weights = np.exp(logits - logits.max())
            probs = weights / weights.sum()
        pick = int(rng.choice(m, p=probs))
        chosen.append(remaining.pop(pick))
        propensities.append(float(probs[pick]))
    return [item_ids[i] for i in chosen], [float(scores[i]) for i in chosen], propensities
