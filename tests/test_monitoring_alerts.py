"""Alert rules: loading, readable errors, firing and formatting."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from monitoring.alerts import (
    DEFAULT_RULES,
    Alert,
    AlertRule,
    Observation,
    RuleError,
    evaluate_rules,
    format_alert,
    format_alerts,
    load_rules,
    parse_rules,
    shift_observations,
)
from monitoring.shift import feature_shift_table

SINCE = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _rule(**overrides: object) -> AlertRule:
    fields: dict[str, object] = {
        "name": "r",
        "metric": "m",
        "comparison": ">",
        "threshold": 0.2,
        "severity": "notify",
        "runbook": "do it",
    }
    return AlertRule.model_validate(fields | overrides)


def test_default_rules_load_with_both_tiers() -> None:
    rules = load_rules()
    names = {rule.name: rule for rule in rules.rules}
    assert {
        "feature-psi-shift",
        "feature-fill-collapse",
        "contract-violations",
        "ctr-drop-24h",
        "ctr-drop-1h",
    } <= set(names)
    assert names["ctr-drop-1h"].severity == "page" and names["ctr-drop-1h"].window_seconds == 3600
    assert names["ctr-drop-24h"].severity == "notify" and names["ctr-drop-24h"].window_seconds == 86400
    assert load_rules(DEFAULT_RULES) == rules


def test_unknown_key_gives_one_readable_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - {name: a, metric: m, comparison: '>', treshold: 1, severity: page, runbook: x}\n"
    )
    with pytest.raises(RuleError) as err:
        load_rules(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith("invalid rule at rules.0.treshold: Extra inputs are not permitted (and 1 more)")


@pytest.mark.parametrize(
    ("tree", "fragment"),
    [
        ({"rules": [{"name": "a"}]}, "rules.0.metric: Field required"),
        ({"rules": [], "extra": 1}, "extra: Extra inputs are not permitted"),
        (
            {
                "rules": [
                    {
                        "name": "a",
                        "metric": "m",
                        "comparison": "~",
                        "threshold": 1,
                        "severity": "page",
                        "runbook": "x",
                    }
                ]
            },
            "rules.0.comparison",
        ),
        (
            {
                "rules": [
                    {
                        "name": "a",
                        "metric": "m",
                        "comparison": ">",
                        "threshold": 1,
                        "severity": "wake",
                        "runbook": "x",
                    }
                ]
            },
            "rules.0.severity",
        ),
        (
            {
                "rules": [
                    {
                        "name": "a",
                        "metric": "m",
                        "comparison": ">",
                        "threshold": 1,
                        "severity": "page",
                        "runbook": "x",
                    },
                    {
                        "name": "a",
                        "metric": "n",
                        "comparison": ">",
                        "threshold": 1,
                        "severity": "page",
                        "runbook": "x",
                    },
                ]
            },
            "repeated: ['a']",
        ),
        (
            {
                "rules": [
                    {
                        "name": "a",
                        "metric": "m",
                        "comparison": ">",
                        "threshold": 1,
                        "severity": "page",
                        "runbook": "x",
                        "window": "1 hour",
                    }
                ]
            },
            "must look like 30m",
        ),
        (
            {
                "rules": [
                    {
                        "name": "a",
                        "metric": "m",
                        "comparison": "drop_pct",
                        "threshold": 0,
                        "severity": "page",
                        "runbook": "x",
                    }
                ]
            },
            "positive threshold",
        ),
        ([1, 2], "top level"),
    ],
)
def test_invalid_rules_name_the_field(tree: object, fragment: str) -> None:
    with pytest.raises(RuleError, match="invalid rule") as err:
        parse_rules(tree, "test.yaml")
    assert fragment in str(err.value) and str(err.value).startswith("test.yaml: ")


def test_unreadable_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read"):
        load_rules(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [unclosed\n")
    with pytest.raises(RuleError, match="cannot read"):
        load_rules(tmp_path / "bad.yaml")


def test_missing_rate_alert_fires_on_collapse_only() -> None:
    rules = load_rules()
    # 1% missing -> 40% missing: fill rate 0.99 -> 0.60 pages.
    reference = pd.DataFrame({"affinity": [1.0] * 99 + [None]})
    collapsed = pd.DataFrame({"affinity": [1.0] * 60 + [None] * 40})
    slight = pd.DataFrame({"affinity": [1.0] * 98 + [None] * 2})
    fired = evaluate_rules(rules, shift_observations(feature_shift_table(reference, collapsed), SINCE))
    assert [(a.rule, a.severity, a.subject) for a in fired] == [("feature-fill-collapse", "page", "affinity")]
    assert fired[0].baseline == pytest.approx(0.99) and fired[0].value == pytest.approx(0.6)
    assert fired[0].since == SINCE
    assert evaluate_rules(rules, shift_observations(feature_shift_table(reference, slight))) == []
    # A feature that was never well filled does not page when it gets worse.
    sparse = Observation("fill_rate", 0.3, "sparse", baseline=0.7)
    assert evaluate_rules(rules, [sparse]) == []


def test_psi_and_contract_rules() -> None:
    rules = load_rules()
    fired = evaluate_rules(
        rules,
        [
            Observation("feature_psi", 0.21, "hour_of_day"),
            Observation("feature_psi", 0.2, "day_of_week"),
            Observation("feature_psi", float("nan"), "empty"),
            Observation("contract_violations", 0),
            Observation("contract_violations", 3),
        ],
    )
    assert [(a.rule, a.severity, a.subject, a.value) for a in fired] == [
        ("contract-violations", "page", None, 3),
        ("feature-psi-shift", "notify", "hour_of_day", 0.21),
    ]


def test_ctr_tiers_by_window() -> None:
    rules = load_rules()
    observations = [
        Observation("ctr", 0.0470, baseline=0.0500, window="24h"),  # -6%: notify
        Observation("ctr", 0.0480, baseline=0.0500, window="24h"),  # -4%: nothing
        Observation("ctr", 0.0390, baseline=0.0500, window="1h"),  # -22%: page
        Observation("ctr", 0.0420, baseline=0.0500, window="1h"),  # -16%: the 1h rule wants 20%
        Observation("ctr", 0.0200, baseline=0.0500, window="7d"),  # no rule for 7d
    ]
    fired = evaluate_rules(rules, observations)
    assert [(a.rule, a.severity, a.value) for a in fired] == [
        ("ctr-drop-1h", "page", 0.039),
        ("ctr-drop-24h", "notify", 0.047),
    ]


def test_relative_rule_without_baseline_is_an_error() -> None:
    with pytest.raises(RuleError, match="ctr-drop-24h needs a baseline"):
        evaluate_rules(load_rules(), [Observation("ctr", 0.04, window="24h")])


def test_comparisons_subject_glob_and_rise() -> None:
    assert evaluate_rules([_rule(comparison="<", threshold=1.0)], [Observation("m", 0.5)])
    assert not evaluate_rules([_rule(comparison="<=", threshold=0.4)], [Observation("m", 0.5)])
    assert evaluate_rules([_rule(comparison=">=", threshold=0.5)], [Observation("m", 0.5)])
    rise = _rule(comparison="rise_pct", threshold=0.5)
    assert evaluate_rules([rise], [Observation("m", 3.0, baseline=2.0)])
    assert not evaluate_rules([rise], [Observation("m", 2.9, baseline=2.0)])
    assert evaluate_rules([rise], [Observation("m", 1.0, baseline=0.0)])  # from zero: infinite rise
    scoped = _rule(subject="user_*")
    assert evaluate_rules([scoped], [Observation("m", 1.0, "user_n_events")])
    assert not evaluate_rules([scoped], [Observation("m", 1.0, "item_n_events"), Observation("m", 1.0)])


def test_format_alerts_one_actionable_line_each() -> None:
    fired = evaluate_rules(
        load_rules(),
        [
            Observation("feature_psi", 0.31, "hour_of_day", since=SINCE),
            Observation("fill_rate", 0.55, "user_genre_affinity", baseline=1.0, since=SINCE),
        ],
    )
    lines = format_alerts(fired).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "PAGE    fill_rate[user_genre_affinity] 1 -> 0.55 (-0.45, -45.0%) since 2026-11-27T10:00+00:00"
        " | rule feature-fill-collapse: <= 0.6 from >= 0.99 | runbook docs/monitoring.md#fill-rate-collapse"
        " | A feature that was almost always present"
    )
    assert lines[1].startswith(
        "NOTIFY  feature_psi[hour_of_day] 0.31 since 2026-11-27T10:00+00:00"
        " | rule feature-psi-shift: > 0.2 | runbook docs/monitoring.md#feature-drift | "
    )
    assert format_alerts([]) == "OK      no alert fired"
    plain = Alert("r", "notify", "m", None, 2.0, 0.0, "> 1", None, "look")
    assert format_alert(plain) == "NOTIFY  m 0 -> 2 (+2) | rule r: > 1 | look"
