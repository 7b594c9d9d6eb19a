"""The Prometheus rules and the Grafana dashboard parse and name only documented metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRIC = re.compile(r"\brecsys_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from the table in docs/monitoring.md."""
    rows = re.findall(
        r"^\| `(recsys_[a-z0-9_]+)` \| (\w+) \|", (ROOT / "docs/monitoring.md").read_text(), re.M
    )
    return dict(rows)


def referenced(expr: str, documented: dict[str, str]) -> set[str]:
    names = set()
    for name in METRIC.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and documented.get(base) == "histogram":
                name = base
        names.add(name)
    return names


def test_docs_list_the_serving_metrics() -> None:
    documented = documented_metrics()
    assert documented["recsys_stage_latency_seconds"] == "histogram"
    assert {
        "recsys_requests_total",
        "recsys_errors_total",
        "recsys_queue_depth",
        "recsys_cache_hits_total",
    } <= set(documented)


def test_prometheus_rules_parse_and_use_documented_metrics() -> None:
    tree = yaml.safe_load((ROOT / "monitoring/prometheus/alerts.yml").read_text())
    documented = documented_metrics()
    rules = [rule for group in tree["groups"] for rule in group["rules"]]
    assert len(rules) >= 5
    used: set[str] = set()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"notify", "page"}
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        names = referenced(rule["expr"], documented)
        assert names and names <= set(documented), (rule["alert"], names - set(documented))
        used |= names
    assert {"recsys_stage_latency_seconds", "recsys_requests_total", "recsys_queue_depth"} <= used
    assert any(rule["labels"]["severity"] == "page" for rule in rules)


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [target for panel in dashboard["panels"] for target in panel["targets"]]


def test_grafana_dashboard_parses_and_uses_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "monitoring/grafana/recsys.json").read_text())
    documented = documented_metrics()
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for target in _targets(dashboard):
        names = referenced(target["expr"], documented)
        assert names and names <= set(documented), (target["expr"], names - set(documented))
        used |= names
    # Every documented metric appears on the dashboard.
    assert used == set(documented)
    latency = " ".join(t["expr"] for t in _targets(dashboard) if "latency" in t["expr"])
    assert all(f"histogram_quantile({q}," in latency for q in ("0.5", "0.95", "0.99"))
