"""`feast apply` at the repository root registers feature_repo/ and imports no other project code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from feast import FileSource, PushSource

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
    # Feast imports feature_repo/ only; its modules import the pure feature code they share with
    # training and serving (recsys.features), never training, serving or the tests.
    outside = [
        n for n in imported if n.split(".")[0] != "feature_repo" and not n.startswith("recsys.features")
    ]
    assert set(outside) <= {"recsys", "recsys.vocab"}, imported

    store = build_store(state, FeaturesConfig())
    assert {s.name for s in store.list_feature_services()} == {
        "two_tower_v1",
        "ranker_v1",
        "ranker_v2",
        "item_content_v1",
        "session_v1",
        "request_context_v1",
    }
    assert {v.name for v in store.list_feature_views()} == {
        "user_stats",
        "item_stats",
        "user_activity",
        "item_activity",
        "user_category_cross",
        "item_coview",
        "item_content",
        "session_recent",
    }
    assert {v.name for v in store.list_on_demand_feature_views()} == {
        "request_time_features",
        "current_item_features",
    }
    push = store.get_feature_view("session_recent").stream_source
    assert isinstance(push, PushSource) and isinstance(push.batch_source, FileSource)
    assert push.batch_source.path == str(state.root / "offline" / "session_features.parquet")
    source = store.get_feature_view("user_stats").batch_source
    assert isinstance(source, FileSource)
    assert source.path == str(state.root / "offline" / "user_features.parquet")
