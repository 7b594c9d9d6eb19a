"""The pipeline on a simulated log, chosen by the config alone (configs/simulated.yaml).

Ingest and split are checked here; features, training, the gate and shadow scoring on a simulated log
run in tests/test_loop_simulated.py, and every stage on MovieLens in tests/test_end_to_end.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.split import load_split, run_split
from recsys.config import REPO_ROOT, load_config
from recsys.ingest.snapshot import load_dataset
from recsys.ingest.stage import run_ingest
from recsys.state import StateDir

CONFIG = REPO_ROOT / "configs" / "simulated.yaml"


def test_ingest_and_split_read_the_simulator_output(tmp_path: Path) -> None:
    config = load_config(CONFIG, [f"state_dir={tmp_path / 'state'}", "simulator.n_users=300"])
    summary = run_ingest(config)
    state = StateDir(config.state_dir)
    simulated = json.loads((state.simulated / "manifest.json").read_text())  # ingest simulated it first
    manifest = load_dataset(state).manifest
    assert manifest["source"]["name"] == "simulator"
    assert manifest["source"]["simulator_config"] == simulated["config"]
    report = manifest["reconciliation"]["interaction_events"]
    assert report["rows_in"] == simulated["n_events"]
    assert (
        report["rows_in"] == report["clean"] + report["quarantined"] + report["duplicates"] + report["bots"]
    )
    assert report["late"] > 0 and report["duplicates"] > 0
    assert summary.counts["users"]["clean"] == 300
    assert len(list((summary.path / "interaction_events").glob("event_date=*"))) == config.simulator.days
    run_split(config, summary.dataset_version)
    split = load_split(state, summary.dataset_version)
    assert (
        len(split.train) + len(split.validation) + len(split.test)
        == summary.counts["interaction_events"]["clean"]
    )
    # Ingesting again reads the same simulation and writes nothing.
    assert not run_ingest(config).created
