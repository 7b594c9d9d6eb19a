"""Drives a canary rollout: the `canary` state machine, the experiments file serving follows, and a clock.

`CanaryDriver` is clock-agnostic: call `tick(observation, now)` on every health check (wall seconds in
production, simulated seconds here); it steps the state machine, asks the approver at a manual stage,
and rewrites the experiment's traffic shares whenever the stage changes, with the rollout's frozen
thresholds stored beside them (`save_experiments` by default; `live_canary.py` publishes through the
serving admin endpoint instead). `run_simulated_canary` feeds it from the simulated
platform on accelerated time: each tick, the users who arrive are bucketed from the file as serving
would bucket them, see their arm's slates, and the canary's clicks, latency and errors since the stage
began make the observation. The simulator models users, not servers, so latency and errors are drawn
from a `ServiceProfile` per arm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.assignment import (
    Experiment,
    Rollout,
    Variant,
    assign,
    load_experiments,
    save_experiments,
)
from evaluation.experiments.canary import (
    DEFAULT_STAGES,
    FINISHED,
    HOUR,
    CanaryState,
    Observation,
    Stage,
    Thresholds,
    approve,
    start,
    step,
)
from evaluation.experiments.policies import Policy, slates
from evaluation.experiments.simulation import Platform

Approver = Callable[[CanaryState], bool]
# Puts the experiments in force: by default they are written to the file; a live canary sends them to
# the serving admin endpoint, which loads the variants' models before switching (`live_canary.py`).
Publisher = Callable[[dict[str, Experiment]], None]


@dataclass(frozen=True)
class ServiceProfile:
    """Synthetic serving health of a model: log-normal latency and a constant error rate."""

    p50_ms: float = 60.0
    sigma: float = 0.4  # p99 = p50 * exp(2.326 sigma): 150 ms at the defaults
    error_rate: float = 0.0002

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(latency in ms, failed?) of n requests."""
        return self.p50_ms * np.exp(self.sigma * rng.standard_normal(n)), rng.random(n) < self.error_rate


class CanaryDriver:
    """Owns one experiment in the experiments file while its canary rolls out.

    Args:
        path: The experiments file serving reads (`recsys.state.StateDir.experiments_file`).
        name: Experiment name; other experiments in the file are left as they are.
        control_model: Model (alias or version) of the control variant.
        canary_model: Model of the canary variant.
        now: Start time on the driver's clock, in seconds.
        approver: Asked whether to enter a manual stage; answering False keeps the rollout waiting.
        publish: Puts the experiments (the file's, with this one updated) in force; None writes the file.
        state: Where the rollout stands (a resumed one, `resume`); None starts one at its first stage.
    """

    def __init__(
        self,
        path: Path,
        name: str,
        control_model: str,
        canary_model: str,
        now: float,
        approver: Approver,
        thresholds: Thresholds | None = None,
        stages: tuple[Stage, ...] = DEFAULT_STAGES,
        publish: Publisher | None = None,
        state: CanaryState | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.approver = approver
        self._publish = publish or (lambda experiments: save_experiments(path, experiments))
        self.state = state or start(now, thresholds, stages)
        self._models = (control_model, canary_model)
        self._write(now)

    @property
    def models(self) -> tuple[str, str]:
        """(control model, canary model): registry aliases or versions."""
        return self._models

    @classmethod
    def resume(
        cls,
        path: Path,
        name: str,
        now: float,
        approver: Approver,
        publish: Publisher | None = None,
        canary_model: str | None = None,
    ) -> CanaryDriver:
        """Take over the rollout stored under `name` where the last driver left it.

        Its models, stages and thresholds are the stored ones (fixed when it started, whatever the
        configuration says now). A running stage's hold starts again at `now`: what happened while no
        driver watched was never checked against the triggers, so it cannot count towards the hold. A
        rollout that was awaiting approval had held its stage: it still waits only for the approval.

        Raises:
            ExperimentError: no such experiment, one without a rollout, a rollout already finished, or
                one rolling out another model than `canary_model` (when given); nothing is written then.
        """
        stored = load_experiments(path).get(name)
        if stored is None or stored.rollout is None:
            raise ExperimentError(f"no canary rollout named {name!r} in {path} to resume")
        rollout = stored.rollout
        if rollout.status in FINISHED:
            raise ExperimentError(f"canary rollout {name!r} already {rollout.status.replace('_', ' ')}")
        arms = {v.name: v.model for v in stored.variants}
        control = next((v.name for v in stored.variants if v.name != rollout.canary), None)
        if rollout.canary not in arms or control is None or rollout.stage >= len(rollout.stages):
            raise ExperimentError(f"canary rollout {name!r} in {path} is inconsistent: cannot resume it")
        stored_canary = arms[rollout.canary]
        if canary_model and canary_model != stored_canary:
            raise ExperimentError(f"rollout {name!r} rolls out {stored_canary!r}, not {canary_model!r}")
        waiting = rollout.status == "awaiting_approval"
        state = CanaryState(
            rollout.stage,
            "awaiting_approval" if waiting else "running",
            # A rollout awaiting approval had held its stage already; a running one holds it again.
            now - rollout.stages[rollout.stage].hold_s if waiting else now,
            rollout.thresholds,
            rollout.stages,
            now,
            history=((rollout.started_at, 0, "start"), (now, rollout.stage, "resumed")),
        )
        return cls(path, name, arms[control], stored_canary, now, approver, publish=publish, state=state)

    def _write(self, now: float) -> None:
        share = self.state.traffic
        record = Rollout(
            canary="canary",
            thresholds=self.state.thresholds,
            stages=self.state.stages,
            stage=self.state.stage,
            status=self.state.status,
            started_at=self.state.history[0][0],
            updated_at=now,
        )
        experiment = Experiment(
            self.name,
            (Variant("control", self._models[0], 1.0 - share), Variant("canary", self._models[1], share)),
            rollout=record,
        )
        experiments = load_experiments(self.path)
        experiments[self.name] = experiment
        self._publish(experiments)

    def tick(self, observation: Observation | None, now: float) -> bool:
        """One health check; returns whether the stage or status changed (the observation window restarts)."""
        before = (self.state.stage, self.state.status)
        state = self.state
        if state.status == "awaiting_approval" and self.approver(state):
            state = approve(state)
        self.state = step(state, observation, now)
        changed = (self.state.stage, self.state.status) != before
        if changed:
            self._write(now)
        return changed


@dataclass(frozen=True)
class CanaryTick:
    """The rollout at the end of one simulated tick."""

    hour: float
    traffic: float  # the canary's share after this tick
    status: str
    ctr_canary: float
    ctr_control: float
    p99_ms: float


@dataclass(frozen=True)
class CanaryRun:
    """A simulated rollout: the final state (its history holds every transition) and every tick."""

    state: CanaryState
    ticks: tuple[CanaryTick, ...]


def run_simulated_canary(
    platform: Platform,
    control: Policy,
    canary: Policy,
    path: Path,
    seed: int,
    name: str = "canary",
    approver: Approver = lambda state: True,
    thresholds: Thresholds | None = None,
    stages: tuple[Stage, ...] = DEFAULT_STAGES,
    users_per_hour: int = 1000,
    tick_hours: float = 1.0,
    max_hours: float = 24 * 14,
    k: int = 10,
    control_service: ServiceProfile = ServiceProfile(),
    canary_service: ServiceProfile = ServiceProfile(),
) -> CanaryRun:
    """Rolls ``canary`` out against ``control`` on simulated time until done, rolled back or out of time."""
    rng = np.random.default_rng([seed, 31])
    driver = CanaryDriver(path, name, control.name, canary.name, 0.0, approver, thresholds, stages)
    per_tick = min(int(users_per_hour * tick_hours), platform.n_users)
    window = _Window()
    ticks: list[CanaryTick] = []
    hour = 0.0
    while hour < max_hours and driver.state.status not in FINISHED:
        experiment = load_experiments(path)[name]  # bucket exactly as serving would, from the file
        users = rng.choice(platform.n_users, per_tick, replace=False)
        on_canary = np.array([assign(f"u{u}", experiment) == "canary" for u in users])
        moment = platform.epoch + timedelta(hours=hour)
        for policy, service, rows, arm in (
            (control, control_service, np.flatnonzero(~on_canary), 0),
            (canary, canary_service, np.flatnonzero(on_canary), 1),
        ):
            if len(rows) == 0:
                continue
            shown = platform.show(
                users[rows], slates(policy, users[rows], k), moment, int(rng.integers(1 << 31))
            )
            latency, failed = service.draw(rng, len(rows))
            window.add(arm, int(shown.clicked.sum()), shown.clicked.size, latency, failed)
        hour += tick_hours
        observation = window.observation()
        if driver.tick(observation, hour * HOUR):
            window = _Window()
        ticks.append(
            CanaryTick(
                hour,
                driver.state.traffic,
                driver.state.status,
                observation.ctr_canary if observation else float("nan"),
                observation.ctr_control if observation else float("nan"),
                observation.p99_ms if observation else float("nan"),
            )
        )
    return CanaryRun(driver.state, tuple(ticks))


class _Window:
    """Clicks, impressions, latencies and errors per arm since the current stage began."""

    def __init__(self) -> None:
        self.clicks = [0, 0]
        self.impressions = [0, 0]
        self.latency: list[np.ndarray] = []
        self.errors = 0
        self.requests = 0

    def add(self, arm: int, clicks: int, impressions: int, latency: np.ndarray, failed: np.ndarray) -> None:
        self.clicks[arm] += clicks
        self.impressions[arm] += impressions
        if arm == 1:
            self.latency.append(latency)
            self.errors += int(failed.sum())
            self.requests += len(failed)

    def observation(self) -> Observation | None:
        if min(self.impressions) == 0:
            return None  # an arm without traffic yet: no evidence either way
        return Observation(
            ctr_canary=self.clicks[1] / self.impressions[1],
            ctr_control=self.clicks[0] / self.impressions[0],
            impressions_canary=self.impressions[1],
            impressions_control=self.impressions[0],
            p99_ms=float(np.quantile(np.concatenate(self.latency), 0.99)),
            error_rate=self.errors / self.requests,
            requests_canary=self.requests,
        )
