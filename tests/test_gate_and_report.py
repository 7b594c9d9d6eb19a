"""Challenger workflow and evaluation outputs on a real small pipeline: train a challenger, evaluate it,
gate it, promote and roll back through the `recsys` command; render the HTML report in headless Chromium.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from commands import SMALL_CONFIG, run_recsys_here

from evaluation.document import DOCUMENT_KEYS
from recsys.state import StateDir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = SMALL_CONFIG
CHALLENGER_ON_VALIDATION = ("--config", CONFIG, "--model", "challenger", "--split", "validation")
# Thresholds no system can miss, so the pass path does not depend on the machine's load.
LENIENT = ["--set", "evaluate.gate.max_score_psi=1000", "--set", "evaluate.gate.max_p99_ms=100000"]


@dataclass(frozen=True)
class Trained:
    state: StateDir
    version: str


@pytest.fixture(scope="module")
def trained(small_pipeline: StateDir) -> Trained:
    """The shared pipeline run (champions v1) and a challenger (v2) trained with another seed."""
    state = small_pipeline
    proc = run_recsys_here(
        state.root, "train", "--config", CONFIG, "--alias", "challenger", "--set", "two_tower.seed=1"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Trained(state, state.latest_dataset_version())


def test_challenger_is_registered_beside_the_champion(trained: Trained) -> None:
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, resolve_system, resolve_version

    assert resolve_system(trained.state, "champion") == ("1", "1")
    assert resolve_system(trained.state, "challenger") == ("2", "2")
    assert resolve_system(trained.state, "2") == ("2", "2")  # a ranker version brings its retriever
    assert resolve_version(trained.state, TWO_TOWER_MODEL, "challenger") == "2"
    assert resolve_version(trained.state, RANKER_MODEL, "champion") == "1"


def test_evaluate_a_challenger_on_validation_writes_schema_and_report(trained: Trained) -> None:
    proc = run_recsys_here(trained.state.root, "evaluate", *CHALLENGER_ON_VALIDATION)
    assert proc.returncode == 0, proc.stderr[-4000:]
    folder = trained.state.evaluation(trained.version) / "validation-challenger"
    document = json.loads((folder / "metrics.json").read_text())
    assert tuple(document) == DOCUMENT_KEYS
    assert document["split"] == "validation" and document["model_versions"] == {
        "retrieval": "2",
        "ranking": "2",
    }
    assert {"popularity", "item-knn", "retrieval", "retrieval+ranking", "champion", "served"} <= set(
        document["models"]
    )
    for row in document["models"].values():
        assert 0.0 <= row["ndcg@10"] <= 1.0 and 0.0 <= row["recall@50"] <= 1.0
    assert {"cold_start", "power", "long_tail_items", "new_items"} <= set(document["slices"])
    assert 0.0 <= document["calibration"]["ece"] <= 1.0
    assert (folder / document["report"]).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "7"), "has no version 7"),
        (("--model", "canary"), "has no alias 'canary'"),
        (("--split", "train"), "unknown split 'train'"),
    ],
)
def test_evaluate_bad_references_give_one_readable_line(
    trained: Trained, args: tuple[str, ...], message: str
) -> None:
    proc = run_recsys_here(trained.state.root, "evaluate", "--config", CONFIG, *args)
    assert proc.returncode == 1
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


def test_gate_fails_with_reasons_and_promotion_refuses(trained: Trained) -> None:
    strict = ["--set", "evaluate.gate.min_coverage=1.0"]  # no top-10 lists cover the whole catalogue
    gate = run_recsys_here(
        trained.state.root, "gate", "--config", CONFIG, "--challenger", "challenger", *strict
    )
    assert gate.returncode == 1, gate.stderr[-4000:]
    assert "FAIL: coverage@10" in gate.stdout and "below the floor 1.0" in gate.stdout
    promote = run_recsys_here(trained.state.root, "promote", "--config", CONFIG, *strict)
    assert promote.returncode == 1 and "gate refused the promotion" in " ".join(promote.stderr.split())
    from training.registry import resolve_system

    assert resolve_system(trained.state, "champion") == ("1", "1")


def test_gate_passes_promote_then_rollback(trained: Trained) -> None:
    from training.registry import CHALLENGER, alias_version, configure, model_version, resolve_system

    gate = run_recsys_here(trained.state.root, "gate", "--config", CONFIG, *LENIENT)
    assert gate.returncode == 0, gate.stdout + gate.stderr[-4000:]
    run_id = gate.stdout.strip().splitlines()[-1].split("MLflow run ")[1].rstrip(")")
    run = configure(trained.state).get_run(run_id)
    assert run.data.tags["passed"] == "true" and "ndcg_challenger" in run.data.metrics

    promote = run_recsys_here(
        trained.state.root, "promote", "--config", CONFIG, "--from-alias", "challenger", *LENIENT
    )
    assert promote.returncode == 0, promote.stderr[-4000:]
    assert resolve_system(trained.state, "champion") == ("2", "2")
    assert alias_version(trained.state, "recsys-ranker", CHALLENGER) is None
    promoted = model_version(trained.state, "recsys-ranker", "2")
    assert promoted.tags["promotion"] == "gate passed"
    # The gate had judged these very versions with these thresholds: promote took that decision.
    assert promoted.tags["gate_run_id"] == run_id and "reusing decision" in promote.stderr

    back = run_recsys_here(trained.state.root, "rollback", "--config", CONFIG)
    assert back.returncode == 0, back.stderr[-4000:]
    assert resolve_system(trained.state, "champion") == ("1", "1")
    again = run_recsys_here(trained.state.root, "rollback", "--config", CONFIG)
    assert again.returncode == 1 and "no previous champion" in " ".join(again.stderr.split())


def test_report_renders_its_plots_in_a_headless_browser(
    trained: Trained, chromium: str, tmp_path: Path
) -> None:
    from PIL import Image

    folder = trained.state.evaluation(trained.version) / "validation-challenger"
    if not (folder / "report.html").exists():
        proc = run_recsys_here(
            trained.state.root,
            "evaluate",
            "--config",
            CONFIG,
            "--model",
            "challenger",
            "--split",
            "validation",
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # we run as root in CI
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,2400",
            f"--screenshot={shot}",
            (folder / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1400)
    # The tables take the top ~600 px; below them only the embedded PNG plots can darken the page.
    plots = pixels[650:, :]
    assert (plots < 200).mean() > 0.01, "the plot area of the report is blank"
    # Coloured lines and bars: many distinct grey levels, which text alone does not give.
    assert len(np.unique(plots.round())) > 50
