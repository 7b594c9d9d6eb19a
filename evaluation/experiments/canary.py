"""Canary rollout as a pure state machine: `step(state, observation, now) -> state`, any clock.

Time is plain seconds from any clock (wall, simulated), so a rollout can be replayed or simulated.
Thresholds are copied into the state at start, so changing defaults mid-rollout changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from evaluation.experiments.ab_tests import ExperimentError

HOUR = 3600.0
Status = Literal["running", "awaiting_approval", "rolled_back", "completed"]
# Statuses a rollout never leaves.
FINISHED: tuple[Status, ...] = ("completed", "rolled_back")


@dataclass(frozen=True)
class Stage:
    """Traffic share, how long to hold it, and whether entering it needs a person's approval."""

    traffic: float
    hold_s: float
    manual: bool = False


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage(0.01, 24 * HOUR),
    Stage(0.05, 24 * HOUR),
    Stage(0.10, 48 * HOUR, manual=True),
    Stage(0.25, 48 * HOUR),
    Stage(0.50, 24 * HOUR),
    Stage(1.00, 0.0),
)


@dataclass(frozen=True)
class Thresholds:
    """Rollback triggers: CTR relative drop vs control, p99 latency, error rate; CTR and errors need data."""

    max_ctr_relative_drop: float = 0.02
    max_p99_ms: float = 180.0
    max_error_rate: float = 0.001
    min_impressions: int = 1000
    # One error in a few hundred requests already reads as > 0.1%: judge errors on enough requests.
    min_requests: int = 2000


@dataclass(frozen=True)
class Observation:
    """Canary and control health since the stage began."""

    ctr_canary: float
    ctr_control: float
    impressions_canary: int
    impressions_control: int
    p99_ms: float
    error_rate: float
    requests_canary: int | None = None  # None: unknown, the error rate is judged whatever the volume


@dataclass(frozen=True)
class CanaryState:
    """Where the rollout is; ``history`` records every transition as (time, stage index, reason)."""

    stage: int
    status: Status
    stage_started: float
    thresholds: Thresholds
    stages: tuple[Stage, ...]
    last_time: float
    approved: bool = False
    history: tuple[tuple[float, int, str], ...] = field(default=())

    @property
    def traffic(self) -> float:
        """Share of traffic on the canary now (0 after a rollback)."""
        return 0.0 if self.status == "rolled_back" else self.stages[self.stage].traffic


def start(
    now: float, thresholds: Thresholds | None = None, stages: tuple[Stage, ...] = DEFAULT_STAGES
) -> CanaryState:
    """Starts at the first stage with thresholds frozen for the whole rollout."""
    if not stages or stages[0].manual:
        raise ExperimentError("a rollout needs stages, and its first stage cannot wait for approval")
    return CanaryState(
        0, "running", now, thresholds or Thresholds(), stages, now, history=((now, 0, "start"),)
    )


def triggers(observation: Observation, thresholds: Thresholds) -> list[str]:
    """Reasons to roll back now (empty when healthy)."""
    reasons = []
    enough = (
        min(observation.impressions_canary, observation.impressions_control) >= thresholds.min_impressions
    )
    floor = observation.ctr_control * (1 - thresholds.max_ctr_relative_drop)
    if enough and observation.ctr_canary < floor:
        reasons.append(
            f"CTR {observation.ctr_canary:.4f} below {floor:.4f} (control {observation.ctr_control:.4f})"
        )
    if observation.p99_ms > thresholds.max_p99_ms:
        reasons.append(f"p99 {observation.p99_ms:g} ms above {thresholds.max_p99_ms:g} ms")
    enough_requests = (
        observation.requests_canary is None or observation.requests_canary >= thresholds.min_requests
    )
    if enough_requests and observation.error_rate > thresholds.max_error_rate:
        reasons.append(f"error rate {observation.error_rate:.4%} above {thresholds.max_error_rate:.4%}")
    return reasons


def approve(state: CanaryState) -> CanaryState:
    """A person approves entering the next (manual) stage; `step` then advances."""
    if state.status != "awaiting_approval":
        raise ExperimentError(f"nothing to approve: the rollout is {state.status}")
    return replace(state, approved=True)


def step(state: CanaryState, observation: Observation | None, now: float) -> CanaryState:
    """Advances, waits or rolls back. No observation means no evidence: the rollout waits."""
    if now < state.last_time:
        raise ExperimentError(f"time went backwards: {now} after {state.last_time}")
    if state.status in ("rolled_back", "completed"):
        return replace(state, last_time=now)
    if observation is not None:
        reasons = triggers(observation, state.thresholds)
        if reasons:
            return replace(
                state,
                status="rolled_back",
                last_time=now,
                history=(*state.history, (now, state.stage, "rollback: " + "; ".join(reasons))),
            )
    held = now - state.stage_started >= state.stages[state.stage].hold_s
    if observation is None or not held:
        return replace(state, last_time=now)
    following = state.stage + 1
    if state.stages[following].manual and not state.approved:
        return replace(state, status="awaiting_approval", last_time=now)
    status: Status = "completed" if following == len(state.stages) - 1 else "running"
    return replace(
        state,
        stage=following,
        status=status,
        stage_started=now,
        last_time=now,
        approved=False,
        history=(*state.history, (now, following, "approved" if state.stages[following].manual else "auto")),
    )
