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


def run_recsys_here(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`recsys ARGS` run in this process: the same command code, exit code and output streams as
    `run_recsys`, without paying ~10 s for a new interpreter's imports of Feast, torch and MLflow.

    Not for `serve` (it keeps Ray and Serve up) nor `features` (its Spark session outlives it); `train`
    shuts down the Ray it starts. An exception the command lets through ends in a traceback on stderr
    and exit code 1, as in a process.
    """
    import traceback

    import pytest
    from typer.testing import CliRunner

    from recsys.cli import app

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        patch.setenv("RECSYS_STATE_DIR", str(state_dir))
        result = CliRunner().invoke(app, list(args))
    stderr = result.stderr
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(["recsys", *args], result.exit_code, result.stdout, stderr)
