"""Settings of the simulated experiments (`recsys experiment ...`): one frozen model in the pipeline."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExperimentsConfig(BaseModel):
    """Population, policies and plan of the experiments run on the simulator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Simulated users available to experiments (replaces simulator.n_users for these runs).
    population: int = Field(default=12_000, ge=200)
    # Random exploration slates per user logged before the experiment; the policies are fitted on them.
    log_slates_per_user: int = Field(default=8, ge=1)
    slate_size: int = Field(default=10, ge=2, le=50)
    # The deliberately worse model: popularity, or the learned model with noise added to its scores.
    worse: Literal["popularity", "degraded"] = "degraded"
    degrade_noise: float = Field(default=0.5, gt=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    power: float = Field(default=0.8, gt=0, lt=1)
    # Smallest relative change of slate CTR the A/B test is planned to detect.
    min_relative_effect: float = Field(default=0.05, gt=0)
    power_repeats: int = Field(default=100, ge=1)
    aa_repeats: int = Field(default=200, ge=1)
    aa_users_per_arm: int = Field(default=1000, ge=10)
    interleaving_sizes: tuple[int, ...] = (25, 50, 100, 200, 400, 800, 1600, 3200)
    interleaving_repeats: int = Field(default=50, ge=1)
    # Off-policy: epsilon-greedy logging over the production policy's top candidates, one slot.
    ope_epsilon: float = Field(default=0.5, gt=0, le=1)
    ope_candidates: int = Field(default=10, ge=2)
    ope_rounds: int = Field(default=2, ge=1)
    ope_clip: float = Field(default=10.0, gt=0)
    # Canary on accelerated time: users arriving per simulated hour, hours per health check.
    canary_users_per_hour: int = Field(default=1000, ge=10)
    canary_tick_hours: float = Field(default=1.0, gt=0)
    canary_max_days: float = Field(default=14.0, gt=0)
    # Impressions on each side before the CTR trigger is judged (noise below this trips it falsely).
    canary_min_impressions: int = Field(default=5000, ge=1)
    seed: int = 0
