"""Hyperparameter tuning: the pure search-space logic, and one real search (Ray Tune, Optuna, Ray Train,
MLflow) on the small pipeline's state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from commands import SMALL_CONFIG
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import REPO_ROOT, PipelineConfig, SearchDimension, TuneConfig, load_config
from recsys.state import StateDir
from training.tune import (
    Trial,
    apply_settings,
    best_trial,
    configured_point,
    search_space,
    trial_config,
    tuned_overrides,
    within,
)

runner = CliRunner()


def _with_space(**spaces: dict[str, SearchDimension]) -> PipelineConfig:
    return PipelineConfig(tune=TuneConfig(**spaces))  # type: ignore[arg-type]


def test_settings_apply_as_overrides_and_bad_ones_are_refused() -> None:
    config = apply_settings(PipelineConfig(), {"two_tower.batch_size": 128, "ranker.multitask.epochs": 4})
    assert (config.two_tower.batch_size, config.ranker.multitask.epochs) == (128, 4)
    with pytest.raises(ValueError, match=r"two_tower\.batch_size"):
        apply_settings(PipelineConfig(), {"two_tower.batch_size": 2})  # below its floor of 8
    with pytest.raises(ValueError, match=r"two_tower\.embeding_dim"):
        apply_settings(PipelineConfig(), {"two_tower.embeding_dim": 32})


def test_search_space_is_checked_against_the_config() -> None:
    assert list(search_space(PipelineConfig(), "multitask")) == [
        "ranker.multitask.task_weights.click",
        "ranker.multitask.task_weights.satisfaction",
    ]
    with pytest.raises(ValueError, match="empty search space"):
        search_space(_with_space(two_tower={}), "two_tower")
    with pytest.raises(ValueError, match="may only tune two_tower"):
        search_space(
            _with_space(two_tower={"ranker.learning_rate": SearchDimension(kind="uniform", low=0.1, high=1)}),
            "two_tower",
        )
    # Every end of a range must be a value the setting takes: batch sizes start at 8.
    small = {"two_tower.batch_size": SearchDimension(kind="choice", values=(4, 64))}
    with pytest.raises(ValueError, match="batch_size"):
        search_space(_with_space(two_tower=small), "two_tower")
    with pytest.raises(ValueError, match="loguniform needs low > 0"):
        SearchDimension(kind="loguniform", low=0, high=1)


def test_configured_point_is_tried_only_inside_the_space() -> None:
    config = PipelineConfig()  # embedding_dim 64, learning_rate 3e-3, batch_size 512, temperature 0.2
    space = search_space(config, "two_tower")
    assert configured_point(config, space) == {
        "two_tower.embedding_dim": 64,
        "two_tower.learning_rate": 3e-3,
        "two_tower.batch_size": 512,
        "two_tower.temperature": 0.2,
    }
    outside = apply_settings(config, {"two_tower.batch_size": 64})
    assert configured_point(outside, space) is None
    assert within(space["two_tower.temperature"], 0.05) and not within(space["two_tower.temperature"], 0.04)


def test_trial_config_caps_epochs_and_best_trial_skips_failed_ones() -> None:
    config = apply_settings(PipelineConfig(), {"tune.epochs": 2})
    assert trial_config(config, "multitask", {}).ranker.multitask.epochs == 2
    assert trial_config(config, "two_tower", {"two_tower.epochs": 9}).two_tower.epochs == 2
    trials = [Trial({"a": 1}, 0.2), Trial({"a": 2}, math.nan), Trial({"a": 3}, 0.3), Trial({"a": 4}, 0.3)]
    assert best_trial(trials).settings == {"a": 3}  # the first of a tie
    with pytest.raises(ValueError, match="none of the 1 trials"):
        best_trial([Trial({}, math.nan)])


def test_best_file_round_trips_as_config_overrides(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    settings = {"two_tower.embedding_dim": 32, "two_tower.learning_rate": 0.0042}
    path.write_text(yaml.safe_dump({"settings": settings}))
    config = load_config(overrides=tuned_overrides(path))
    assert (config.two_tower.embedding_dim, config.two_tower.learning_rate) == (32, 0.0042)
    (tmp_path / "other.yaml").write_text("value: 1\n")
    result = runner.invoke(app, ["train", "--tuned", str(tmp_path / "other.yaml")])
    assert result.exit_code == 1 and "holds no `settings` mapping" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1, got 0"),
        (["--set", "tune.two_tower={}"], "tune.two_tower is an empty search space"),
        (["--target", "ranker"], "unknown --target 'ranker'"),
    ],
)
def test_bad_tuning_input_exits_1_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["tune", "--set", f"state_dir={tmp_path}", *args])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output


def _param(value: str) -> float:
    return float(value)


@pytest.mark.integration
@pytest.mark.slow
def test_tune_logs_every_trial_under_one_parent_and_keeps_the_best(small_pipeline: StateDir) -> None:
    import mlflow

    state = small_pipeline
    args = ["tune", "--config", str(REPO_ROOT / SMALL_CONFIG), "--trials", "2", "--sample-users", "30"]
    result = runner.invoke(app, [*args, "--set", f"state_dir={state.root}", "--set", "tune.epochs=2"])
    assert result.exit_code == 0, result.output
    version = state.latest_dataset_version()
    best = yaml.safe_load((state.tuning(version, "two_tower") / "best.yaml").read_text())
    assert (best["trials"], best["sample_users"], best["metric"]) == (2, 30, "val_recall_at_10")

    client = mlflow.MlflowClient(tracking_uri=state.mlflow_tracking_uri)
    parent = client.get_run(best["mlflow_parent_run"])
    assert parent.data.tags["target"] == "two_tower" and parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    space = load_config(REPO_ROOT / SMALL_CONFIG).tune.two_tower
    for child in children:
        params = {k: v for k, v in child.data.params.items() if k in space}
        assert set(params) == set(space)
        assert all(within(space[k], _param(v)) for k, v in params.items()), params
        # Each trial trained in its own process and reported every epoch; the run keeps the last.
        epochs, recalls = (
            sorted(client.get_metric_history(child.info.run_id, key), key=lambda m: m.step)
            for key in ("epoch", "val_recall_at_10")
        )
        assert [m.value for m in epochs] == [1.0, 2.0] and len(recalls) == 2
        assert child.data.metrics["val_recall_at_10"] == recalls[-1].value
    # best.yaml holds the child with the highest logged validation recall.
    top = max(children, key=lambda run: run.data.metrics["val_recall_at_10"])
    assert best["value"] == pytest.approx(top.data.metrics["val_recall_at_10"])
    assert parent.data.metrics["best_val_recall_at_10"] == pytest.approx(best["value"])
    assert {k: pytest.approx(_param(v)) for k, v in top.data.params.items() if k in space} == best["settings"]
    # The configured settings (small.yaml: embedding 64, lr 3e-3, batch 256, temperature 0.2) are in the
    # space, so the first trial measured them.
    configured = [
        run for run in children if _param(run.data.params["two_tower.batch_size"]) == 256
        and _param(run.data.params["two_tower.temperature"]) == pytest.approx(0.2)
    ]  # fmt: skip
    assert configured and best["configured_value"] == pytest.approx(
        configured[0].data.metrics["val_recall_at_10"]
    )
