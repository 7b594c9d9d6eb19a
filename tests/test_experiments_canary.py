"""Canary state machine on a simulated clock: advance, wait for approval, roll back, frozen thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.assignment import load_experiments
from evaluation.experiments.canary import HOUR, Observation, Thresholds, approve, start, step
from evaluation.experiments.canary_runner import CanaryDriver

HEALTHY = Observation(0.100, 0.100, 5000, 5000, 120.0, 0.0002)


def test_full_rollout_with_manual_approval() -> None:
    state = start(0.0)
    assert state.traffic == 0.01
    state = step(state, HEALTHY, 23 * HOUR)
    assert state.traffic == 0.01  # hold not yet over
    state = step(state, HEALTHY, 24 * HOUR)
    assert state.traffic == 0.05 and state.status == "running"
    state = step(state, HEALTHY, 48 * HOUR)
    assert state.status == "awaiting_approval" and state.traffic == 0.05
    state = step(state, HEALTHY, 60 * HOUR)
    assert state.status == "awaiting_approval"  # waits however long
    state = step(approve(state), HEALTHY, 61 * HOUR)
    assert state.traffic == 0.10
    for hours, traffic in ((61 + 48, 0.25), (61 + 96, 0.50), (61 + 120, 1.0)):
        state = step(state, HEALTHY, hours * HOUR)
        assert state.traffic == traffic
    assert state.status == "completed"
    assert [stage for _, stage, _ in state.history] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("observation", "reason"),
    [
        (Observation(0.0975, 0.100, 5000, 5000, 120.0, 0.0), "CTR"),  # -2.5% relative
        (Observation(0.100, 0.100, 5000, 5000, 181.0, 0.0), "p99"),
        (Observation(0.100, 0.100, 5000, 5000, 120.0, 0.0011), "error rate"),
    ],
)
def test_rollback_triggers(observation: Observation, reason: str) -> None:
    state = step(start(0.0), observation, HOUR)
    assert state.status == "rolled_back" and state.traffic == 0.0
    assert reason in state.history[-1][2]
    assert step(state, HEALTHY, 100 * HOUR).status == "rolled_back"


def test_boundaries_and_small_samples() -> None:
    # exactly -2% is not a breach; a CTR drop on too few impressions is not judged yet
    assert step(start(0.0), Observation(0.098, 0.100, 5000, 5000, 180.0, 0.001), HOUR).status == "running"
    assert step(start(0.0), Observation(0.05, 0.100, 10, 5000, 120.0, 0.0), HOUR).status == "running"


def test_thresholds_frozen_and_no_data_waits() -> None:
    state = start(0.0, Thresholds(max_p99_ms=250.0))
    state = step(state, Observation(0.1, 0.1, 5000, 5000, 200.0, 0.0), HOUR)
    assert state.status == "running"
    assert step(state, None, 30 * HOUR).traffic == 0.01  # no evidence, no advance
    with pytest.raises(ExperimentError, match="backwards"):
        step(state, HEALTHY, 0.0)
    with pytest.raises(ExperimentError, match="nothing to approve"):
        approve(state)


def test_a_stopped_rollout_resumes_at_its_stage_with_its_stored_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    strict = Thresholds(max_p99_ms=150.0)
    first = CanaryDriver(path, "canary", "champion", "7", 0.0, lambda _: False, strict)
    assert first.tick(HEALTHY, 24 * HOUR) and first.state.traffic == 0.05
    first.tick(HEALTHY, 48 * HOUR)
    assert first.state.status == "awaiting_approval"  # the command stops here, traffic stays at 5%

    resumed = CanaryDriver.resume(path, "canary", 50 * HOUR, lambda _: True)
    assert resumed.models == ("champion", "7")
    assert (resumed.state.stage, resumed.state.status) == (1, "awaiting_approval")
    assert resumed.state.thresholds == strict  # the stored ones, not a default
    assert resumed.state.history[-1] == (50 * HOUR, 1, "resumed")
    # Approved on the next check, then the 10% stage holds 48 h counted from there.
    assert resumed.tick(HEALTHY, 51 * HOUR) and resumed.state.traffic == 0.10
    assert load_experiments(path)["canary"].variants[1].traffic == 0.10
    # The stored p99 threshold (150 ms) still judges: 160 ms rolls back.
    slow = Observation(0.100, 0.100, 5000, 5000, 160.0, 0.0)
    assert resumed.tick(slow, 52 * HOUR) and resumed.state.status == "rolled_back"

    with pytest.raises(ExperimentError, match="already rolled back"):
        CanaryDriver.resume(path, "canary", 53 * HOUR, lambda _: True)
    with pytest.raises(ExperimentError, match="no canary rollout named 'other'"):
        CanaryDriver.resume(path, "other", 53 * HOUR, lambda _: True)


def test_resume_refuses_another_model_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    CanaryDriver(path, "canary", "champion", "7", 0.0, lambda _: True)
    before = path.read_bytes()
    with pytest.raises(ExperimentError, match="rolls out '7', not '8'"):
        CanaryDriver.resume(path, "canary", HOUR, lambda _: True, canary_model="8")
    assert path.read_bytes() == before
