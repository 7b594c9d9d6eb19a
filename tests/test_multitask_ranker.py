"""The multi-task torch ranker: it can overfit one batch, mixes its heads per surface as computed by hand,
keeps INT8 only within the AUC budget, and its artefacts round-trip or fail with a readable error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from factories import planted_ranker_rows

from evaluation.calibration import roc_auc
from recsys.config import ConfigError, RankerConfig, load_config
from training.calibration import PlattCalibrator
from training.multitask import (
    TASKS,
    MultiTaskModelConfig,
    MultiTaskRanker,
    SurfaceWeights,
    combine_heads,
    head_probabilities,
    keep_int8,
    quantise_int8,
)
from training.multitask_runtime import (
    SPEC_FILE,
    WEIGHTS_FILE,
    MultiTaskRankingModel,
    write_multitask_artifacts,
)
from training.multitask_train import (
    fit_epochs,
    split_users,
    surface_weights,
    task_labels,
    train_multitask_ranker,
    train_step,
)
from training.ranker_features import RANKER_FEATURE_NAMES
from training.runtime import ArtifactError, RankingModel

N_FEATURES = len(RANKER_FEATURE_NAMES)
SMALL = MultiTaskModelConfig(n_features=N_FEATURES, hidden_sizes=(32, 16), cross_layers=2, head_hidden=8)
WEIGHTS = SurfaceWeights({"default": (1.0, 3.0), "search": (3.0, 1.0), "email": (0.0, 1.0)})


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny batches: a second intra-op thread only adds contention on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int = 0) -> MultiTaskRanker:
    torch.manual_seed(seed)
    return MultiTaskRanker(SMALL)


def test_overfits_one_batch() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, N_FEATURES)).astype(np.float32)
    x[::4, 3] = np.nan  # unknown values go through the missing indicators
    y = rng.integers(0, 2, size=(32, len(TASKS))).astype(np.float32)
    model = _model()
    model.fit_normaliser(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    weights = torch.tensor([1.0, 1.0])
    first = train_step(model, optimizer, torch.as_tensor(x), torch.as_tensor(y), weights)
    for _ in range(200):
        loss = train_step(model, optimizer, torch.as_tensor(x), torch.as_tensor(y), weights)
    assert first > 1.0 and loss < 0.02
    probabilities = head_probabilities(model, x)
    for task in range(len(TASKS)):
        assert roc_auc(y[:, task], probabilities[:, task]) == 1.0


def test_surface_weights_mix_the_heads_as_by_hand() -> None:
    heads = np.array([[0.8, 0.2], [0.4, 0.6]])  # (click, satisfaction) per row
    # default 1:3 -> 0.25 * click + 0.75 * satisfaction; search 3:1 -> the reverse; email satisfaction only
    assert combine_heads(heads, WEIGHTS.of(None)).tolist() == pytest.approx([0.35, 0.55])
    assert combine_heads(heads, WEIGHTS.of("search")).tolist() == pytest.approx([0.65, 0.45])
    assert combine_heads(heads, WEIGHTS.of("email")).tolist() == pytest.approx([0.2, 0.6])
    assert WEIGHTS.of("pdp").tolist() == WEIGHTS.of("default").tolist()  # unlisted surface: default
    with pytest.raises(ValueError, match="default"):
        SurfaceWeights({"search": (1.0, 1.0)})
    with pytest.raises(ValueError, match="non-negative"):
        SurfaceWeights({"default": (0.0, 0.0)})


def test_int8_is_kept_only_within_half_a_percent() -> None:
    assert keep_int8(0.800, 0.7970)  # 0.375 % lower
    assert not keep_int8(0.800, 0.7950)  # 0.625 % lower
    assert keep_int8(0.800, 0.8100)  # better is kept
    assert not keep_int8(0.800, float("nan")) and not keep_int8(float("nan"), 0.8)
    assert keep_int8(0.800, 0.7950, max_relative_drop=0.01)


def test_int8_quantises_every_linear_layer_and_scores_close_to_fp32() -> None:
    x, _, _ = planted_ranker_rows(n_users=10)
    model = _model()
    model.fit_normaliser(x)
    quantised = quantise_int8(model)
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in quantised.modules())
    assert np.abs(head_probabilities(quantised, x) - head_probabilities(model, x)).max() < 0.05
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


def _write(directory: Path, model: MultiTaskRanker, int8: bool = False) -> None:
    write_multitask_artifacts(
        directory,
        model.state_dict(),
        SMALL,
        WEIGHTS,
        int8,
        PlattCalibrator(slope=4.0, intercept=-2.0),
        "ranker_v1",
    )


@pytest.mark.parametrize("int8", [False, True])
def test_artefacts_round_trip(tmp_path: Path, int8: bool) -> None:
    x, _, _ = planted_ranker_rows(n_users=5)
    model = _model()
    model.fit_normaliser(x)
    _write(tmp_path, model, int8)
    loaded = RankingModel.load(tmp_path, "4")
    assert isinstance(loaded, MultiTaskRankingModel)
    assert (loaded.kind, loaded.version, loaded.feature_service, loaded.int8) == (
        "multitask",
        "4",
        "ranker_v1",
        int8,
    )
    served = quantise_int8(model) if int8 else model
    heads = head_probabilities(served, x)
    np.testing.assert_allclose(loaded.head_probabilities(x), heads, rtol=1e-6)
    np.testing.assert_allclose(loaded.predict_matrix(x, "search"), heads @ np.array([0.75, 0.25]), rtol=1e-6)
    raw = loaded.predict_matrix(x)
    by_hand = 1 / (1 + np.exp(-(4.0 * np.log(raw / (1 - raw)) - 2.0)))  # Platt on the log-odds
    np.testing.assert_allclose(loaded.probabilities(raw), by_hand, rtol=1e-6)


def test_corrupt_missing_or_foreign_artefacts_are_artifact_errors(tmp_path: Path) -> None:
    model = _model()
    _write(tmp_path, model)
    weights = (tmp_path / WEIGHTS_FILE).read_bytes()
    (tmp_path / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ArtifactError, match=f"corrupt: .*{WEIGHTS_FILE}"):
        RankingModel.load(tmp_path, "1")
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"missing: .*{WEIGHTS_FILE}"):
        RankingModel.load(tmp_path, "1")

    _write(tmp_path, model)
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    (tmp_path / SPEC_FILE).write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(ArtifactError, match=r"format version 99.*retrain"):
        RankingModel.load(tmp_path, "1")
    other = {**spec, "model_config": {**spec["model_config"], "hidden_sizes": [8]}}
    (tmp_path / SPEC_FILE).write_text(json.dumps(other))
    with pytest.raises(ArtifactError, match="corrupt"):  # weights of another shape
        RankingModel.load(tmp_path, "1")
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="not JSON"):
        RankingModel.load(tmp_path, "1")

    names = json.loads((tmp_path / "feature_names.json").read_text())
    (tmp_path / "feature_names.json").write_text(json.dumps({**names, "kind": "xgboost"}))
    with pytest.raises(ArtifactError, match="unknown ranker kind 'xgboost'"):
        RankingModel.load(tmp_path, "1")


def test_task_labels_follow_the_event_labels() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [  # (user, item, event type, dwell ms)
        ("u1", "a", "like", None),  # click and satisfaction
        ("u1", "b", "view", 1_000),  # a short view of a 100 s item: click only
        ("u1", "c", "skip", None),  # neither
        ("u2", "a", "view", 95_000),  # watched to the end: both
    ]
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "dwell_time_ms": pd.array([r[3] for r in rows], dtype="Float64"),
            "session_id": ["s1", "s1", "s1", "s2"],
            "event_ts": [t0 + timedelta(minutes=i) for i in range(len(rows))],
            "server_ts": [t0 + timedelta(minutes=i) for i in range(len(rows))],
        }
    )
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "duration_s": [100.0] * 4})
    candidates = pd.DataFrame({"user_id": ["u1"] * 4 + ["u2"] * 2, "item_id": ["a", "b", "c", "d", "a", "b"]})
    labels = task_labels(candidates, events, items)
    assert labels[:, TASKS.index("click")].tolist() == [1, 1, 0, 0, 1, 0]
    assert labels[:, TASKS.index("satisfaction")].tolist() == [1, 0, 0, 0, 1, 0]


def test_users_are_held_out_whole() -> None:
    fit, holdout = split_users(np.array([3, 2, 4, 1, 5]), seed=0)
    assert sorted(np.concatenate([fit, holdout]).tolist()) == list(range(15))
    group = np.repeat(np.arange(5), [3, 2, 4, 1, 5])
    assert set(group[fit]).isdisjoint(group[holdout]) and len(set(group[holdout])) == 1
    fit, holdout = split_users(np.array([4]), seed=0)
    assert fit.tolist() == [0, 1, 2, 3] and holdout.size == 0


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y1, sizes = planted_ranker_rows(n_users=20)
    y = np.stack([y1, y1], axis=1)
    fit, holdout = split_users(sizes, seed=0)
    noise = np.random.default_rng(1).integers(0, 2, size=(len(holdout), 2)).astype(np.float32)
    settings = {"epochs": 40, "patience": 2, "batch_size": 64}
    cfg = RankerConfig(feature_service="ranker_v1").model_copy(
        update={"multitask": RankerConfig().multitask.model_copy(update=settings)}
    )
    model = _model()
    model.fit_normaliser(x[fit])
    # Held-out labels that are noise: the held-out AUC wanders, so training must stop early.
    data = {"x_fit": x[fit], "y_fit": y[fit], "x_val": x[holdout], "y_val": noise}
    seen: list[dict[str, float]] = []
    state, final = fit_epochs(model, model, data, np.arange(len(fit)), cfg, on_epoch=seen.append)
    best = max(seen, key=lambda m: m["val_auc_macro"])
    assert final["best_epoch"] == best["epoch"] and final["val_auc_macro"] == best["val_auc_macro"]
    assert final["epochs_run"] == len(seen) < 40  # stopped early
    assert final["epochs_run"] - final["best_epoch"] == 2
    assert final["train_examples_per_s"] > 0 and set(state) == set(model.state_dict())


def test_config_kinds_and_surfaces(tmp_path: Path) -> None:
    assert RankerConfig().kind == "lightgbm"
    path = tmp_path / "c.yaml"
    path.write_text(
        "ranker:\n  kind: multitask\n  multitask:\n    surface_weights:\n      default: {click: 1}\n"
    )
    cfg = load_config(path).ranker
    assert cfg.kind == "multitask" and surface_weights(cfg).of("search").tolist() == pytest.approx(
        [2 / 3, 1 / 3]
    )
    path.write_text("ranker:\n  multitask:\n    surface_weights:\n      default: {}\n      frontpage: {}\n")
    with pytest.raises(ConfigError, match="frontpage"):
        load_config(path)


@pytest.mark.integration
def test_ray_train_fits_the_planted_signal_and_decides_int8(tmp_path: Path) -> None:
    x, y1, sizes = planted_ranker_rows(n_users=60)
    labels = np.stack([np.maximum(y1, x[:, 0] > 1.5), y1], axis=1).astype(np.float32)  # click ⊇ satisfied
    settings = {"batch_size": 64, "learning_rate": 3e-3, "epochs": 15, "int8": True}
    cfg = RankerConfig(feature_service="ranker_v1", seed=0).model_copy(
        update={"multitask": RankerConfig().multitask.model_copy(update=settings)}
    )
    result = train_multitask_ranker(x, labels, sizes, cfg, tmp_path / "ray")
    m = result.metrics
    assert m["ranker_holdout_auc_satisfaction"] > 0.9 and m["ranker_holdout_auc"] > 0.9
    assert m["ranker_holdout_ndcg_at_10"] > 0.8
    assert m["ranker_holdout_users"] == 12 and m["ranker_fit_users"] == 48
    assert m["ranker_int8_kept"] == float(keep_int8(m["ranker_auc_fp32"], m["ranker_auc_int8"]))
    assert m["ranker_train_examples_per_s"] > 0 and 1 <= m["ranker_best_epoch"] <= m["ranker_epochs_run"]
    assert result.calibrator.slope > 0
    # In a Ray Tune trial a one-worker CPU run trains in the trial's process with the same loop: the same
    # model, and the final metrics (the objective is known only after calibration) reported once.
    seen: list[dict[str, float]] = []
    here = train_multitask_ranker(x, labels, sizes, cfg, tmp_path / "unused", tune_report=seen.append)
    assert seen == [here.metrics] and not (tmp_path / "unused").exists()
    for key in ("ranker_holdout_auc", "ranker_holdout_loss", "ranker_best_epoch", "ranker_epochs_run"):
        assert here.metrics[key] == pytest.approx(m[key], rel=1e-4, abs=1e-4), key
    for name, tensor in result.state_dict.items():
        assert torch.allclose(here.state_dict[name], tensor, atol=1e-4), name
