"""Tiered alert rules: which movement of which signal notifies someone, and which one pages them.

Rules live in YAML (``monitoring/rules.yaml`` holds the defaults) and are validated by a frozen pydantic
model that rejects unknown keys, so a typo in a threshold name fails loudly instead of silently disabling
an alert. Evaluation is a pure function from rules and observations to alerts; whoever measures the
signals (a batch job over :mod:`monitoring.shift`, the serving metrics) builds the observations.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")
RUNBOOK_DOC = "docs/monitoring.md"

Severity = Literal["notify", "page"]
Comparison = Literal[">", ">=", "<", "<=", "drop_pct", "rise_pct"]
_WINDOW = re.compile(r"^[1-9][0-9]*[smhd]$")
_WINDOW_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RuleError(ValueError):
    """The rules file cannot be read or does not describe valid rules."""


class AlertRule(BaseModel):
    """One rule: ``metric`` (for matching ``subject``, over ``window``) compared with ``threshold``.

    ``>``, ``>=``, ``<``, ``<=`` compare the observed value itself. ``drop_pct`` and ``rise_pct`` compare
    the relative change against the observation's baseline (``threshold: 0.05`` fires on a drop of 5% or
    more). ``baseline_at_least`` adds a precondition on the baseline: "the fill rate was at least 0.99 and
    is now 0.6 or less" pages, while a feature that was always sparse does not.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    comparison: Comparison
    threshold: float
    severity: Severity
    runbook: str = Field(min_length=1)
    window: str | None = None
    subject: str | None = None
    baseline_at_least: float | None = None
    # The runbook section (docs/monitoring.md#<anchor>) with the full procedure behind the first step.
    anchor: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$")

    @field_validator("window")
    @classmethod
    def _window_format(cls, value: str | None) -> str | None:
        if value is not None and not _WINDOW.match(value):
            raise ValueError(f"window {value!r} must look like 30m, 1h, 24h or 7d")
        return value

    @model_validator(mode="after")
    def _relative_threshold(self) -> AlertRule:
        if self.comparison in ("drop_pct", "rise_pct") and not self.threshold > 0:
            raise ValueError(
                f"{self.comparison} needs a positive threshold (0.05 = 5%), got {self.threshold}"
            )
        return self

    @property
    def needs_baseline(self) -> bool:
        return self.comparison in ("drop_pct", "rise_pct") or self.baseline_at_least is not None

    @property
    def window_seconds(self) -> int | None:
        """The window in seconds, or None when the rule applies to a single measurement."""
        if self.window is None:
            return None
        return int(self.window[:-1]) * _WINDOW_SECONDS[self.window[-1]]

    def describe(self) -> str:
        """The condition in words, e.g. ``drop >= 5% over 24h``."""
        if self.comparison in ("drop_pct", "rise_pct"):
            condition = f"{self.comparison.removesuffix('_pct')} >= {self.threshold:.0%}"
        else:
            condition = f"{self.comparison} {self.threshold:g}"
        if self.baseline_at_least is not None:
            condition += f" from >= {self.baseline_at_least:g}"
        return condition + (f" over {self.window}" if self.window else "")


class AlertRules(BaseModel):
    """The whole rules file: a list of uniquely named rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[AlertRule, ...]

    @model_validator(mode="after")
    def _unique_names(self) -> AlertRules:
        names = [rule.name for rule in self.rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique, repeated: {repeated}")
        return self


def parse_rules(tree: Any, source: str = "rules") -> AlertRules:
    """Validate a parsed YAML tree; the error names the first bad field by its path, in one line."""
    try:
        return AlertRules.model_validate(tree)
    except ValidationError as err:
        # A misspelt key also makes the real one "required": name the unknown key, the likelier cause.
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RuleError(f"{source}: invalid rule at {where}: {first['msg']}{more}") from err


def load_rules(path: Path | str = DEFAULT_RULES) -> AlertRules:
    """Read and validate a rules YAML file (the shipped defaults when no path is given)."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RuleError(f"cannot read alert rules {path}: {err}") from err
    return parse_rules(tree, str(path))


@dataclass(frozen=True)
class Observation:
    """One measured signal: ``value`` of ``metric`` for ``subject`` (a feature, a model, a surface).

    ``baseline`` is what the value is compared against for relative rules (the reference window's value);
    ``since`` is when the measured window started, so an alert can say how long the movement has lasted.
    """

    metric: str
    value: float
    subject: str | None = None
    baseline: float | None = None
    window: str | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class Alert:
    """A fired rule: what moved, from what to what, since when, how bad, and what to do first."""

    rule: str
    severity: Severity
    metric: str
    subject: str | None
    value: float
    baseline: float | None
    condition: str
    since: datetime | None
    runbook: str
    anchor: str | None = None

    @property
    def runbook_link(self) -> str | None:
        return f"{RUNBOOK_DOC}#{self.anchor}" if self.anchor else None


def _relative_change(value: float, baseline: float) -> float:
    if baseline == 0:
        return math.inf if value > 0 else -math.inf if value < 0 else 0.0
    return (value - baseline) / abs(baseline)


def _fires(rule: AlertRule, obs: Observation) -> bool:
    if math.isnan(obs.value):
        return False
    floor = rule.baseline_at_least
    if floor is not None and (obs.baseline is None or obs.baseline < floor):
        return False
    match rule.comparison:
        case ">":
            return obs.value > rule.threshold
        case ">=":
            return obs.value >= rule.threshold
        case "<":
            return obs.value < rule.threshold
        case "<=":
            return obs.value <= rule.threshold
        case "drop_pct":
            assert obs.baseline is not None
            return -_relative_change(obs.value, obs.baseline) >= rule.threshold
        case "rise_pct":
            assert obs.baseline is not None
            return _relative_change(obs.value, obs.baseline) >= rule.threshold
    raise AssertionError(rule.comparison)  # pragma: no cover: Literal exhausted


def _matches(rule: AlertRule, obs: Observation) -> bool:
    if rule.metric != obs.metric or (rule.window is not None and rule.window != obs.window):
        return False
    return rule.subject is None or (
        obs.subject is not None and fnmatch.fnmatchcase(obs.subject, rule.subject)
    )


def evaluate_rules(
    rules: AlertRules | Iterable[AlertRule], observations: Iterable[Observation]
) -> list[Alert]:
    """Every (rule, observation) pair that fires, pages first.

    A rule matches an observation of its metric (and of its window and subject pattern when it names
    them). A relative rule needs the observation's baseline; without one the signal cannot be judged, so
    that is an error rather than a silent pass.
    """
    rule_list = list(rules.rules if isinstance(rules, AlertRules) else rules)
    alerts: list[Alert] = []
    for obs in observations:
        for rule in rule_list:
            if not _matches(rule, obs):
                continue
            if rule.needs_baseline and obs.baseline is None:
                raise RuleError(
                    f"rule {rule.name} needs a baseline; the {obs.metric} observation"
                    f"{f' of {obs.subject}' if obs.subject else ''} has none"
                )
            if not _fires(rule, obs):
                continue
            alerts.append(
                Alert(
                    rule=rule.name,
                    severity=rule.severity,
                    metric=obs.metric,
                    subject=obs.subject,
                    value=obs.value,
                    baseline=obs.baseline,
                    condition=rule.describe(),
                    since=obs.since,
                    runbook=rule.runbook,
                    anchor=rule.anchor,
                )
            )
    return sorted(alerts, key=lambda a: (a.severity != "page", a.rule, a.subject or ""))


def format_alert(alert: Alert) -> str:
    """One line an on-call engineer can act on.

    >>> alert = Alert("ctr-drop", "page", "ctr", "home", 0.04, 0.05, "drop >= 20% over 1h", None, "Roll.")
    >>> print(format_alert(alert))
    PAGE    ctr[home] 0.05 -> 0.04 (-0.01, -20.0%) | rule ctr-drop: drop >= 20% over 1h | Roll.
    """
    what = alert.metric + (f"[{alert.subject}]" if alert.subject else "")
    moved = f"{alert.value:.4g}" if alert.baseline is None else f"{alert.baseline:.4g} -> {alert.value:.4g}"
    if alert.baseline is not None:
        moved += f" ({alert.value - alert.baseline:+.4g}"
        moved += f", {_relative_change(alert.value, alert.baseline):+.1%})" if alert.baseline else ")"
    since = f" since {alert.since.isoformat(timespec='minutes')}" if alert.since else ""
    link = f" | runbook {alert.runbook_link}" if alert.runbook_link else ""
    return (
        f"{alert.severity.upper():<7} {what} {moved}{since} | rule {alert.rule}: {alert.condition}"
        f"{link} | {alert.runbook}"
    )


def format_alerts(alerts: Iterable[Alert]) -> str:
    """All alerts, one per line, pages first; a single reassuring line when nothing fired."""
    lines = [format_alert(alert) for alert in alerts]
    return "\n".join(lines) if lines else "OK      no alert fired"


def shift_observations(table: pd.DataFrame, since: datetime | None = None) -> list[Observation]:
    """Observations from :func:`monitoring.shift.feature_shift_table`: ``feature_psi`` and ``fill_rate``.

    The fill rate (share of present values, ``1 - missing``) carries the reference's rate as its
    baseline, so the "was almost always filled, now often empty" rule can fire.
    """
    observations: list[Observation] = []
    for row in table.itertuples(index=False):
        feature = str(row.feature)
        observations.append(Observation("feature_psi", float(row.psi), subject=feature, since=since))
        observations.append(
            Observation(
                "fill_rate",
                1.0 - float(row.missing_cur),
                subject=feature,
                baseline=1.0 - float(row.missing_ref),
                since=since,
            )
        )
    return observations
