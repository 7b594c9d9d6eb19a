"""The loop end to end on the simulator: `recsys loop` on a log that grows, with drift from 2024-01-22.

One simulated world (configs/loop_simulated.yaml: tastes, devices and a wave of new items change on
2024-01-22). The loop runs three times, each on the log as of a date:

- 2024-01-15: no model yet, so the schedule is due: the first model becomes the champion;
- 2024-01-22: a week more, still before the drift: nothing moved and nothing is due, nothing is trained;
- 2024-01-29: a week of drifted traffic: the monitor finds it, the loop retrains, the challenger beats
  the stale champion on the drifted window, passes the gate and is promoted.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitoring.loop_scenario import Turn, run_turns
from recsys.config import REPO_ROOT
from recsys.state import StateDir
from training.registry import CHAMPION, TWO_TOWER_MODEL, alias_version

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CONFIG = REPO_ROOT / "configs" / "loop_simulated.yaml"
DATES = [datetime(2024, 1, day, tzinfo=UTC) for day in (15, 22, 29)]


@pytest.fixture(scope="module")
def turns(tmp_path_factory: pytest.TempPathFactory) -> tuple[StateDir, list[Turn]]:
    state_dir = tmp_path_factory.mktemp("loop") / "state"
    done = run_turns(CONFIG, state_dir, DATES, in_process=True)
    for turn in done:
        assert turn.exit_code == 0, turn.output[-4000:]
    return StateDir(state_dir), done


def steps(turn: Turn) -> list[str]:
    return [step["step"] for step in turn.record["steps"]]


def test_the_first_turn_trains_the_first_champion_on_schedule(turns: tuple[StateDir, list[Turn]]) -> None:
    first = turns[1][0].record
    assert first["decision"] == "promoted: first model (v1) is the champion"
    assert first["trigger"] == ["schedule due: retrieval, ranker"]
    assert not first["drift_detected"]


def test_without_drift_nothing_is_retrained_out_of_schedule(turns: tuple[StateDir, list[Turn]]) -> None:
    steady = turns[1][1].record
    assert not steady["drift_detected"], steady["alerts"]
    assert steady["decision"] == "no retrain"
    assert steady["trigger"] == ["no drift and nothing due on the schedule"]
    assert steps(turns[1][1]) == ["ingest", "monitor"]
    assert steady["metrics"]["feature_psi.device_type"] < 0.1


def test_drift_is_detected_and_the_retrained_challenger_is_promoted(
    turns: tuple[StateDir, list[Turn]],
) -> None:
    state, done = turns
    drifted = done[2].record
    assert drifted["drift_detected"]
    assert (
        drifted["trigger"][0].startswith("drift detected")
        and "feature_psi[device_type]" in drifted["trigger"][0]
    )
    # The simulator moves device shares from (0.55, 0.35, 0.10) to (0.8, 0.1, 0.1) at the drift.
    assert drifted["metrics"]["feature_psi.device_type"] > 0.2
    assert steps(done[2]) == ["ingest", "monitor", "features", "train", "gate", "shadow"]
    gate = next(step for step in drifted["steps"] if step["step"] == "gate")
    assert gate["passed"] is True, gate["reasons"]
    # Judged only on users whose whole test window is after the drift (and after the champion's data).
    assert gate["since"] >= "2024-01-21T23:00" and gate["users"] >= 100
    # Promotion also needs the challenger's shadow NDCG to be at least the champion's.
    assert drifted["metrics"]["shadow_ndcg_challenger"] >= drifted["metrics"]["shadow_ndcg_champion"]
    assert drifted["decision"].startswith("promoted v2 (was v1)")
    champion = alias_version(state, TWO_TOWER_MODEL, CHAMPION)
    assert champion is not None and str(champion.version) == "2"
    assert champion.tags["dataset_version"] == drifted["dataset_version"]


def test_the_challenger_clearly_beats_the_stale_champion_on_the_drifted_window(
    turns: tuple[StateDir, list[Turn]],
) -> None:
    gate = next(step for step in turns[1][2].record["steps"] if step["step"] == "gate")
    assert gate["ndcg.challenger"] > 1.1 * gate["ndcg.champion"]
    # The calibrated-probability shift is within bounds, or not judged against a flat champion ranker.
    assert gate["score_psi.passed"]
