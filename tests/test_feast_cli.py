"""`feast apply` at the repository root registers feature_repo/ and imports no other project code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from feast import FileSource

from recsys.config import FeaturesConfig
from recsys.features.store import build_store
from recsys.state import StateDir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs the real `feast apply` command, then reports which of this repository's modules it imported.
APPLY_AND_REPORT = """
import json, sys
from pathlib import Path
from feast.cli.cli import cli
try:
    cli(["apply"])
except SystemExit as done:
    code = done.code or 0
root = Path.cwd().resolve()
files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
mine = sorted(
    name for name, file in files.items()
    if file and Path(file).is_absolute() and Path(file).resolve().is_relative_to(root)
    and ".venv" not in Path(file).parts
)
print("IMPORTED=" + json.dumps(mine))
sys.exit(code)
"""


def test_feast_apply_registers_feature_repo_and_imports_nothing_else(state: StateDir) -> None:
    state.root.mkdir(parents=True)
    env = {**os.environ, "RECSYS_STATE_DIR": str(state.root)}
    done = subprocess.run(
        [sys.executable, "-c", APPLY_AND_REPORT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED=")]
    imported = json.loads(report[-1].removeprefix("IMPORTED="))
    assert "feature_repo.feature_services" in imported
    assert all(name.split(".")[0] == "feature_repo" for name in imported), imported

    store = build_store(state, FeaturesConfig())
    assert {s.name for s in store.list_feature_services()} == {"two_tower_v1", "ranker_v1"}
    assert {v.name for v in store.list_feature_views()} == {"user_stats", "item_stats"}
    source = store.get_feature_view("user_stats").batch_source
    assert isinstance(source, FileSource)
    assert source.path == str(state.root / "offline" / "user_features.parquet")
