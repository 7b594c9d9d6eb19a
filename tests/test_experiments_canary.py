"""Canary state machine on a simulated clock: advance, wait for approval, roll back, frozen thresholds."""

from __future__ import annotations

import pytest

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.canary import HOUR, Observation, Thresholds, approve, start, step

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
