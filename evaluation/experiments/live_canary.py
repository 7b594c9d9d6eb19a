"""`recsys experiment canary --live`: a canary rollout driven on wall-clock time against running serving.

The `CanaryDriver` is the one the simulated rollout uses; here its clock is `time.time`, its
observations come from `live.LiveSource` (the served-response log, the event log and `/metrics` of the
deployment), and it puts each stage's traffic shares in force through `PUT /admin/experiments` with the
serving admin token: that endpoint loads the canary's model in the ranking replicas before writing the
experiments file serving follows, so no request is answered before its model is ready. The rollout's
thresholds and stages are frozen at start and stored with the experiment (`Experiment.rollout`).
The command runs where the deployment's state directory is (it reads the logs and the experiments file).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import httpx

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.assignment import Experiment
from evaluation.experiments.canary import (
    DEFAULT_STAGES,
    FINISHED,
    CanaryState,
    Observation,
    Stage,
    Thresholds,
)
from evaluation.experiments.canary_runner import CanaryDriver, Publisher
from evaluation.experiments.live import ArmTraffic, LiveSource
from recsys.config import PipelineConfig
from recsys.state import StateDir
from serving.experiments import CHAMPION
from serving.served import SERVED_FOLDER

Report = Callable[[str], None]


class LiveCanaryError(ExperimentError):
    """The live rollout cannot go on (serving unreachable, admin token missing or refused)."""


def admin_publisher(client: httpx.Client, token: str) -> Publisher:
    """Puts experiments in force with `PUT /admin/experiments` (the deployment loads the models first)."""

    def publish(experiments: dict[str, Experiment]) -> None:
        body = {"experiments": [e.model_dump(mode="json") for e in experiments.values()]}
        try:
            response = client.put(
                "/admin/experiments",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=300.0,  # loading a model the replicas do not hold yet takes a while
            )
        except httpx.HTTPError as err:
            raise LiveCanaryError(f"PUT /admin/experiments failed: {err}") from None
        if response.status_code != 200:
            raise LiveCanaryError(
                f"PUT /admin/experiments answered HTTP {response.status_code}: {_error_text(response)}"
            )

    return publish


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    return str(body["error"] if isinstance(body, dict) and "error" in body else response.text)[:300]


def live_stages(hold_s: float | None, stages: tuple[Stage, ...] = DEFAULT_STAGES) -> tuple[Stage, ...]:
    """The stages with every hold set to `hold_s` (None keeps the plan's holds; the last stage holds 0).

    >>> [s.hold_s for s in live_stages(30.0)]
    [30.0, 30.0, 30.0, 30.0, 30.0, 0.0]
    """
    if hold_s is None:
        return stages
    return tuple(replace(s, hold_s=hold_s if s.hold_s > 0 else 0.0) for s in stages)


def tick_line(state: CanaryState, observation: Observation | None, arms: dict[str, ArmTraffic]) -> str:
    """One readable line per health check."""
    where = f"stage {state.stage} ({state.traffic:.0%}) {state.status}"
    if observation is None:
        served = ", ".join(f"{v} {a.requests} answers" for v, a in sorted(arms.items())) or "no answers"
        return f"{where}: no evidence yet ({served}; both variants need requests in /metrics)"
    o = observation
    p99 = "n/a (too few requests)" if math.isnan(o.p99_ms) else f"{o.p99_ms:.0f} ms"
    return (
        f"{where}: CTR canary {o.ctr_canary:.4f} ({o.impressions_canary} impressions) vs control "
        f"{o.ctr_control:.4f} ({o.impressions_control}), p99 {p99}, "
        f"errors {o.error_rate:.2%} of {o.requests_canary} requests"
    )


def transition_line(state: CanaryState) -> str:
    """What just changed: a stage entered, a rollback, or a wait for approval."""
    if state.status == "awaiting_approval":
        following = state.stages[state.stage + 1].traffic
        return f"-> awaiting approval to go from {state.traffic:.0%} to {following:.0%}"
    return f"-> {state.history[-1][2]}: stage {state.stage} ({state.traffic:.0%}) {state.status}"


def outcome_line(state: CanaryState) -> str:
    """The rollout's end in one line: where it stopped and why."""
    _, stage, reason = state.history[-1]
    share = state.stages[stage].traffic
    if state.status == "rolled_back":
        return f"canary rolled back at stage {stage} ({share:.0%}): {reason.removeprefix('rollback: ')}"
    if state.status == "completed":
        return f"canary completed: 100% of traffic after {len(state.history) - 1} stage changes"
    following = state.stages[min(state.stage + 1, len(state.stages) - 1)].traffic
    return f"canary waits for approval to go from {state.traffic:.0%} to {following:.0%} (traffic stays)"


def drive(
    driver: CanaryDriver,
    source: LiveSource,
    tick_s: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    report: Report = lambda line: None,
    stop_when_awaiting: bool = False,
) -> CanaryState:
    """Health checks every `tick_s` seconds until the rollout completes or rolls back.

    Each stage change restarts the observation window. With `stop_when_awaiting`, returns as soon as
    the rollout waits for a person's approval (its traffic stays where it is).
    """
    source.restart()
    while driver.state.status not in FINISHED:
        sleep(tick_s)
        observation = source.observe()
        arms = source.counts
        if driver.tick(observation, clock()):
            source.restart()
            report(transition_line(driver.state))
        report(tick_line(driver.state, observation, arms))
        if stop_when_awaiting and driver.state.status == "awaiting_approval":
            break
    return driver.state


def run_live_canary(
    cfg: PipelineConfig,
    url: str,
    model: str | None,
    name: str = "canary",
    tick_s: float = 60.0,
    hold_s: float | None = None,
    approve: bool = True,
    report: Report = lambda line: None,
    client: httpx.Client | None = None,
    resume: bool = False,
) -> CanaryState:
    """Roll `model` (a `recsys-ranker` alias or version) out against the champion on running serving.

    Args:
        cfg: Its state directory is the deployment's; `serve.admin_token` (or RECSYS_ADMIN_TOKEN) is
            the deployment's admin token; `experiments.canary_min_impressions` gates the CTR trigger.
        url: The deployment's base URL.
        name: The experiment the rollout owns in the experiments file.
        hold_s: Every stage's hold in seconds (None: the spec's hours).
        approve: Enter the manual stage without asking; False stops there (exit with the rollout waiting).
        client: An HTTP client already pointing at the deployment (tests); `url` is then not used.
        resume: Take over the rollout stored under `name` (after the command stopped) at its stage,
            with its stored models, stages and thresholds; `model`, when given, must be its canary.
    """
    token = cfg.serve.admin_token
    if not token:
        raise LiveCanaryError(
            "no admin token: set RECSYS_ADMIN_TOKEN (or serve.admin_token) to the deployment's, "
            "the canary sets traffic through PUT /admin/experiments"
        )
    http = client or httpx.Client(base_url=url)
    try:
        return _run(cfg, http, url, model, name, tick_s, hold_s, approve, token, report, resume)
    finally:
        if client is None:
            http.close()


def _run(
    cfg: PipelineConfig,
    http: httpx.Client,
    url: str,
    model: str | None,
    name: str,
    tick_s: float,
    hold_s: float | None,
    approve: bool,
    token: str,
    report: Report,
    resume: bool,
) -> CanaryState:
    try:
        health = http.get("/healthz", timeout=10.0)
    except httpx.HTTPError as err:
        raise LiveCanaryError(f"serving at {url} does not answer: {err}") from None
    if health.status_code != 200:
        raise LiveCanaryError(f"serving at {url} is not healthy: HTTP {health.status_code}")
    state = StateDir(cfg.state_dir)
    source = LiveSource(http, state.root / SERVED_FOLDER, state.events, name)
    if resume:
        try:
            driver = CanaryDriver.resume(
                state.experiments_file,
                name,
                time.time(),
                lambda _: approve,
                admin_publisher(http, token),
                canary_model=model,
            )
        except ExperimentError as err:
            raise LiveCanaryError(str(err)) from None
        report(f"canary {driver.models[1]!r} resumed at {driver.state.traffic:.0%} of {url}")
        return drive(driver, source, tick_s, report=report, stop_when_awaiting=not approve)
    if not model:
        raise LiveCanaryError("a new rollout needs the model to roll out (--model)")
    thresholds = Thresholds(min_impressions=cfg.experiments.canary_min_impressions)
    driver = CanaryDriver(
        state.experiments_file,
        name,
        CHAMPION,
        model,
        time.time(),
        approver=lambda _: approve,
        thresholds=thresholds,
        stages=live_stages(hold_s),
        publish=admin_publisher(http, token),
    )
    report(f"canary {model!r} at {driver.state.traffic:.0%} of {url}; thresholds {thresholds}")
    return drive(driver, source, tick_s, report=report, stop_when_awaiting=not approve)
