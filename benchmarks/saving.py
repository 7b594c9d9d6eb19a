"""Where the benchmarks keep their figures, and the run facts every result file starts with."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def run_meta(command: str, **extra: Any) -> dict[str, Any]:
    """When, on what, and by which command a result was measured: enough to rerun and compare it."""
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "command": command,
        **extra,
    }


def save(name: str, data: dict[str, Any], markdown: str) -> None:
    """Write ``results/<name>.json`` (for tools) and ``results/<name>.md`` (for people)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")


def earlier_runs(name: str) -> dict[str, Any]:
    """What ``results/<name>.json`` holds, or ``{"runs": {}}``: benchmarks that measure one store per
    run keep the other stores' figures beside the new ones."""
    path = RESULTS / f"{name}.json"
    loaded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    return loaded
