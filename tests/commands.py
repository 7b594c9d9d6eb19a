"""Run the `recsys` command as a user would, and the one small pipeline run that integration tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recsys.config import REPO_ROOT

RECSYS = [sys.executable, "-m", "recsys"]
SMALL_CONFIG = "configs/small.yaml"


def run_recsys(state_dir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`recsys ARGS` in the repository root against `state_dir`, output captured as text."""
    return subprocess.run(
        [*RECSYS, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "RECSYS_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
