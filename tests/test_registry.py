"""MLflow registry against a real SQLite tracking store inside the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.state import MissingStateError, StateDir
from training.registry import (
    CHALLENGER,
    CHAMPION,
    alias_version,
    configure,
    load_champion,
    load_model,
    log_and_register,
    previous_champions,
    promote,
    resolve_version,
    rollback,
    set_alias,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_register_sets_champion_and_load_resolves_it(state: StateDir, tmp_path: Path) -> None:
    with pytest.raises(MissingStateError, match="no champion"):
        load_champion(state, "recsys-test")
    tags = {"dataset_version": "v1", "feature_service": "ranker_v1"}
    versions = [_register(state, tmp_path, n, CHAMPION, {"score": 0.5 * n}, tags) for n in (1, 2)]
    directory, version = load_champion(state, "recsys-test")
    assert version == versions[-1] == "2"
    assert (directory / "weights.txt").read_text() == "model 2"
    assert state.mlflow_artifacts in directory.parents  # artefacts live in the state dir, not the cwd
    client = configure(state)
    entry = client.get_model_version_by_alias("recsys-test", CHAMPION)
    run = client.get_run(entry.tags["run_id"])
    assert run.data.params["n"] == "2" and run.data.metrics["score"] == 1.0
    assert run.data.tags["dataset_version"] == "v1" and run.data.tags["feature_service"] == "ranker_v1"


def _register(
    state: StateDir,
    tmp_path: Path,
    n: int,
    alias: str,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    artefacts = tmp_path / f"alias{n}"
    artefacts.mkdir()
    (artefacts / "weights.txt").write_text(f"model {n}")
    _, version = log_and_register(
        state,
        model_name="recsys-test",
        kind="ranking",
        artifact_dir=artefacts,
        params={"n": n},
        metrics=metrics or {},
        tags=tags or {"dataset_version": "v1"},
        alias=alias,
    )
    return version


def test_aliases_promote_and_rollback(state: StateDir, tmp_path: Path) -> None:
    with pytest.raises(MissingStateError, match="no model registry"):
        resolve_version(state, "recsys-test", CHAMPION)
    first = _register(state, tmp_path, 1, CHAMPION)
    second = _register(state, tmp_path, 2, CHALLENGER)
    assert (first, second) == ("1", "2")
    assert resolve_version(state, "recsys-test", CHAMPION) == "1"
    assert resolve_version(state, "recsys-test", CHALLENGER) == "2"
    assert resolve_version(state, "recsys-test", "2") == "2"
    with pytest.raises(MissingStateError, match="no version 7"):
        resolve_version(state, "recsys-test", "7")
    with pytest.raises(MissingStateError, match="no alias 'canary'"):
        resolve_version(state, "recsys-test", "canary")
    with pytest.raises(MissingStateError, match="no previous champion"):
        rollback(state, "recsys-test")

    assert promote(state, "recsys-test", CHALLENGER) == "1"
    directory, version = load_model(state, "recsys-test", CHAMPION)
    assert version == "2" and (directory / "weights.txt").read_text() == "model 2"
    assert alias_version(state, "recsys-test", CHALLENGER) is None  # promoted: no longer waiting

    third = _register(state, tmp_path, 3, CHAMPION)  # a champion registration also keeps history
    set_alias(state, "recsys-test", "canary", "1")
    assert resolve_version(state, "recsys-test", "canary") == "1"
    assert previous_champions(state, "recsys-test") == ["1", "2"]
    assert third == "3" and resolve_version(state, "recsys-test", CHAMPION) == "3"
    assert rollback(state, "recsys-test") == "2"
    assert rollback(state, "recsys-test") == "1"
    assert resolve_version(state, "recsys-test", CHAMPION) == "1"
    with pytest.raises(MissingStateError, match="no previous champion"):
        rollback(state, "recsys-test")
