"""The loop's decisions as pure functions: retrain or not, refuse or not, promote or keep.

The schedule (``configs/schedules/default.yaml``) says how often each model is retrained without drift; drift
retrains out of schedule; a broken upstream (a page from a data-quality rule) refuses to train at all,
because a model trained on broken data would pass its own evaluation on that same broken data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitoring.alerts import Alert

Action = Literal["retrain", "refuse", "skip"]
UPSTREAM_METRICS: frozenset[str] = frozenset({"fill_rate", "unseen_category_share", "contract_violations"})
_CADENCES = {"hourly": 1 / 24, "daily": 1.0, "weekly": 7.0, "monthly": 30.0}


class ScheduleError(ValueError):
    """The schedule file cannot be read or is invalid."""


class Schedule(BaseModel):
    """How often each model is retrained without drift: ``daily``, ``weekly`` ... per model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retrieval: Literal["hourly", "daily", "weekly", "monthly"] = "weekly"
    ranker: Literal["hourly", "daily", "weekly", "monthly"] = "daily"
    # Retrain as soon as drift is detected, whatever the schedule says.
    retrain_on_drift: bool = True
    # Minimum days between two drift-triggered retrains: a drift that persists must not retrain every run.
    drift_cooldown_days: float = Field(default=1.0, ge=0)

    def every_days(self, model: str) -> float:
        return _CADENCES[getattr(self, model)]


def load_schedule(path: Path) -> Schedule:
    """Read and validate the schedule YAML; errors in one line."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        return Schedule.model_validate(tree)
    except (OSError, yaml.YAMLError) as err:
        raise ScheduleError(f"cannot read schedule {path}: {err}") from err
    except ValidationError as err:
        first = err.errors()[0]
        raise ScheduleError(f"{path}: invalid at {'.'.join(map(str, first['loc']))}: {first['msg']}") from err


def due_models(schedule: Schedule, last_trained: Mapping[str, datetime | None], now: datetime) -> list[str]:
    """Models whose cadence has elapsed since they were last trained (never trained: due).

    >>> from datetime import UTC
    >>> t = datetime(2024, 1, 8, tzinfo=UTC)
    >>> due_models(Schedule(), {"retrieval": datetime(2024, 1, 2, tzinfo=UTC), "ranker": None}, t)
    ['ranker']
    """
    due = []
    for model in ("retrieval", "ranker"):
        last = last_trained.get(model)
        if last is None or (now - last).total_seconds() >= schedule.every_days(model) * 86400:
            due.append(model)
    return due


@dataclass(frozen=True)
class Trigger:
    """Whether this loop run trains, and why (every reason is recorded with the run)."""

    action: Action
    reasons: list[str] = field(default_factory=list)


def upstream_alerts(alerts: Iterable[Alert]) -> list[Alert]:
    """Pages of the data-quality rules: a broken producer, not a changed world."""
    return [a for a in alerts if a.severity == "page" and a.metric in UPSTREAM_METRICS]


def decide_trigger(
    alerts: list[Alert],
    drift_detected: bool,
    due: list[str],
    schedule: Schedule,
    days_since_drift_retrain: float | None,
    follow_schedule: bool = True,
) -> Trigger:
    """Refuse on a broken upstream; retrain on drift (outside the cooldown) or when the schedule is due."""
    broken = upstream_alerts(alerts)
    if broken:
        return Trigger(
            "refuse",
            [f"broken upstream: {a.metric}[{a.subject}] = {a.value:.4g} ({a.rule})" for a in broken],
        )
    reasons = []
    cooling = days_since_drift_retrain is not None and days_since_drift_retrain < schedule.drift_cooldown_days
    if drift_detected and schedule.retrain_on_drift and not cooling:
        moved = sorted({f"{a.metric}[{a.subject}]" for a in alerts if a.severity == "notify"})
        reasons.append("drift detected" + (f": {', '.join(moved)}" if moved else ""))
    if follow_schedule and due:
        reasons.append(f"schedule due: {', '.join(due)}")
    if reasons:
        return Trigger("retrain", reasons)
    why = "no drift and nothing due on the schedule"
    if drift_detected and cooling:
        why = f"drift persists; the last drift retrain was {days_since_drift_retrain:.2f} days ago (cooldown)"
    return Trigger("skip", [why])


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reasons: list[str]


def decide_promotion(
    gate_passed: bool | None,
    gate_reasons: list[str],
    challenger_ndcg: float | None,
    champion_ndcg: float | None,
    margin: float = 0.0,
) -> Promotion:
    """Promote when the gate passed (or is not installed) and the shadow comparison does not lose.

    >>> decide_promotion(True, [], 0.30, 0.25).promote
    True
    >>> decide_promotion(True, [], 0.20, 0.25).reasons
    ['shadow: challenger NDCG 0.2 < champion 0.25 - margin 0']
    """
    reasons = []
    if gate_passed is False:
        reasons += [f"gate: {r}" for r in gate_reasons] or ["gate failed"]
    compared = challenger_ndcg is not None and champion_ndcg is not None
    if compared and challenger_ndcg < champion_ndcg - margin:  # type: ignore[operator]
        reasons.append(
            f"shadow: challenger NDCG {challenger_ndcg:.4g} < champion {champion_ndcg:.4g}"
            f" - margin {margin:g}"
        )
    if reasons:
        return Promotion(False, reasons)
    won = (
        [f"shadow: challenger NDCG {challenger_ndcg:.4g} >= champion {champion_ndcg:.4g}"]
        if challenger_ndcg is not None and champion_ndcg is not None
        else []
    )
    return Promotion(True, ["gate passed" if gate_passed else "gate not run", *won])
