"""MLflow registry against a real SQLite tracking store inside the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.state import MissingStateError, StateDir
from training.registry import CHAMPION, configure, load_champion, log_and_register

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_register_sets_champion_and_load_resolves_it(state: StateDir, tmp_path: Path) -> None:
    with pytest.raises(MissingStateError, match="no champion"):
        load_champion(state, "recsys-test")
    versions = []
    for n in (1, 2):
        artefacts = tmp_path / f"art{n}"
        artefacts.mkdir()
        (artefacts / "weights.txt").write_text(f"model {n}")
        _, version = log_and_register(
            state,
            model_name="recsys-test",
            kind="ranking",
            artifact_dir=artefacts,
            params={"n": n},
            metrics={"score": 0.5 * n},
            tags={"dataset_version": "v1", "feature_service": "ranker_v1"},
        )
        versions.append(version)
    directory, version = load_champion(state, "recsys-test")
    assert version == versions[-1] == "2"
    assert (directory / "weights.txt").read_text() == "model 2"
    assert state.mlflow_artifacts in directory.parents  # artefacts live in the state dir, not the cwd
    client = configure(state)
    entry = client.get_model_version_by_alias("recsys-test", CHAMPION)
    run = client.get_run(entry.tags["run_id"])
    assert run.data.params["n"] == "2" and run.data.metrics["score"] == 1.0
    assert run.data.tags["dataset_version"] == "v1" and run.data.tags["feature_service"] == "ranker_v1"
