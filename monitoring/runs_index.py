"""The index page of monitoring runs: ``monitor/index.html``, rewritten after every run.

Every ``monitor/runs/<run_id>/verdict.json`` (a `recsys monitor` run) and ``loop.json`` (a `recsys loop`
run) becomes one row, newest first, linking to that run's Evidently reports. The page is static HTML
with relative links, so the folder can be copied anywhere and opened in a browser.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from pathlib import Path
from typing import Any

STATUS_COLOURS = {"ok": "#2e7d32", "notify": "#ef6c00", "page": "#c62828"}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.status { font-weight: bold; }
td.alerts { font-size: 0.85rem; }
"""


def read_runs(root: Path) -> list[dict[str, Any]]:
    """Every run's summary under ``root/runs``, newest first (run ids sort by time)."""
    runs = []
    for folder in sorted((root / "runs").glob("*"), reverse=True):
        for name in ("loop.json", "verdict.json"):
            path = folder / name
            if path.exists():
                runs.append({**json.loads(path.read_text()), "_folder": folder.name})
                break
    return runs


def _cell(text: object) -> str:
    return f"<td>{html.escape(str(text))}</td>"


def _row(run: dict[str, Any]) -> str:
    folder = run["_folder"]
    status = str(run.get("status", "?"))
    colour = STATUS_COLOURS.get(status, "#555")
    alerts = run.get("alerts", [])
    lines = [
        f"{a['severity'].upper()} {a['metric']}[{a.get('subject') or ''}] {a['value']:.4g}"
        if isinstance(a.get("value"), int | float)
        else f"{a['severity'].upper()} {a['metric']}"
        for a in alerts
    ]
    links = [
        f'<a href="runs/{html.escape(folder)}/{html.escape(str(r["html"]))}">{html.escape(kind)}</a>'
        for kind, r in sorted(run.get("reports", {}).items())
    ]
    summary = "loop.json" if run.get("kind") == "loop" else "verdict.json"
    links.append(f'<a href="runs/{html.escape(folder)}/{summary}">json</a>')
    window = run.get("current_window", {})
    return (
        "<tr>"
        + _cell(run.get("run_id", folder))
        + _cell(run.get("kind", "monitor"))
        + _cell(run.get("dataset_version", ""))
        + _cell(f"{run.get('window', '')} to {window.get('end', '')}")
        + f'<td class="status" style="color:{colour}">{html.escape(status)}</td>'
        + _cell("yes" if run.get("drift_detected") else "no")
        + _cell(run.get("decision", ""))
        + f'<td class="alerts">{"<br>".join(html.escape(line) for line in lines) or "none"}</td>'
        + f"<td>{' | '.join(links)}</td>"
        + "</tr>"
    )


def render_index(runs: list[dict[str, Any]]) -> str:
    """The whole page for these runs."""
    header = "".join(
        f"<th>{h}</th>"
        for h in ("run", "kind", "dataset", "window", "status", "drift", "decision", "alerts", "reports")
    )
    rows = "\n".join(_row(run) for run in runs) or '<tr><td colspan="9">no runs yet</td></tr>'
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>recsys monitoring runs</title>'
        f"<style>{_STYLE}</style></head><body>\n<h1>Monitoring runs</h1>\n"
        f"<p>{len(runs)} runs, newest first. Runbook: docs/monitoring.md#runbook</p>\n"
        f"<table><thead><tr>{header}</tr></thead><tbody>\n{rows}\n</tbody></table>\n</body></html>\n"
    )


def write_index(root: Path) -> Path:
    """Rewrite ``root/index.html`` from the runs on disk (atomically: a reader never sees half a page)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / "index.html"
    tmp = root / f".index.{uuid.uuid4().hex}.tmp"
    tmp.write_text(render_index(read_runs(root)))
    os.replace(tmp, target)
    return target
