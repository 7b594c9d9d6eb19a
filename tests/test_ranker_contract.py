"""The contract every ranker kind keeps, as evaluation and serving use it: loaded from its artefacts by
`RankingModel.load`, one finite score per candidate in candidate order, unknown features tolerated,
calibrated probabilities that never reorder, and the planted signal ranked first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from factories import SMALL_RANKER, planted_ranker_rows

from recsys.vocab import GENRES
from serving.roles import RankingModel as RankingRole
from training.item_knn_signal import ItemKNNSignal
from training.multitask import TASKS, MultiTaskModelConfig, MultiTaskRanker, combine_heads, head_probabilities
from training.multitask_runtime import write_multitask_artifacts
from training.multitask_train import calibrate, fit_epochs, split_users, surface_weights
from training.ranker import train_ranker
from training.ranker_features import ITEM_KNN_NAMES, RANKER_FEATURE_NAMES, ranker_columns
from training.runtime import RankingModel, write_ranker_artifacts

DOT = RANKER_FEATURE_NAMES.index("genre_affinity_dot")


def _lightgbm(directory: Path) -> None:
    x, y, sizes = planted_ranker_rows()
    trained = train_ranker(x, y, sizes, SMALL_RANKER)
    write_ranker_artifacts(directory, trained.booster, trained.calibrator, SMALL_RANKER.feature_service)


def _lightgbm_item_knn(directory: Path) -> None:
    x, y, sizes = planted_ranker_rows(extra_columns=len(ITEM_KNN_NAMES))
    trained = train_ranker(x, y, sizes, SMALL_RANKER, item_knn=True)
    when = pd.Timestamp("2020-01-01", tz="UTC")
    likes = {
        "user_id": ["u1", "u1", "u2"],
        "item_id": ["i0", "i1", "i1"],
        "event_type": "like",
        "event_ts": when,
    }
    signal = ItemKNNSignal.fit(pd.DataFrame(likes))
    write_ranker_artifacts(
        directory, trained.booster, trained.calibrator, SMALL_RANKER.feature_service, signal
    )


def _multitask(directory: Path) -> None:
    x, y1, sizes = planted_ranker_rows()
    y = np.stack([y1] * len(TASKS), axis=1)
    fit, holdout = split_users(sizes, seed=0)
    settings = {"epochs": 8, "batch_size": 64, "learning_rate": 3e-3}
    cfg = SMALL_RANKER.model_copy(update={"multitask": SMALL_RANKER.multitask.model_copy(update=settings)})
    torch.manual_seed(0)
    shape = MultiTaskModelConfig(n_features=len(RANKER_FEATURE_NAMES), hidden_sizes=(32, 16), head_hidden=8)
    model = MultiTaskRanker(shape)
    model.fit_normaliser(x[fit])
    data = {"x_fit": x[fit], "y_fit": y[fit], "x_val": x[holdout], "y_val": y[holdout]}
    state, _ = fit_epochs(model, model, data, np.arange(len(fit)), cfg)
    model.load_state_dict(state)
    weights = surface_weights(cfg)
    score = combine_heads(head_probabilities(model, x[holdout]), weights.of(None))
    calibrator, _ = calibrate(score, y1[holdout])
    write_multitask_artifacts(directory, state, shape, weights, True, calibrator, cfg.feature_service)


WRITERS: dict[str, Callable[[Path], None]] = {
    "lightgbm": _lightgbm,
    "lightgbm+item-knn": _lightgbm_item_knn,
    "multitask": _multitask,
}


def _width(model: RankingModel) -> int:
    return len(ranker_columns(model.feature_service, model.item_knn is not None))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(WRITERS))
def artefacts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    directory = tmp_path_factory.mktemp(request.param)
    torch.set_num_threads(1)
    WRITERS[request.param](directory)
    return request.param, directory


def _candidates(n: int, seed: int = 0) -> tuple[dict[str, object], pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    user = {
        "user_n_events": 40,
        "user_n_positive": 12,
        "user_genre_affinity": rng.random(len(GENRES)).tolist(),
    }
    items = pd.DataFrame(
        {
            "item_n_events": rng.integers(0, 500, n),
            "item_positive_rate": rng.random(n),
            "item_genre_vector": [rng.integers(0, 2, len(GENRES)).tolist() for _ in range(n)],
            "item_id": [f"i{j}" for j in range(n)],
        }
    )
    return user, items, rng.random(n).astype(np.float32)


def test_loads_as_its_kind_and_plays_the_serving_role(artefacts: tuple[str, Path]) -> None:
    kind, directory = artefacts
    model = RankingModel.load(directory, "9")
    assert model.kind == kind.split("+")[0] and model.version == "9" and model.feature_service == "ranker_v1"
    assert (model.item_knn is not None) == kind.endswith("item-knn")
    assert isinstance(model, RankingRole) and model.calibrated


def test_one_finite_score_per_candidate_in_candidate_order(artefacts: tuple[str, Path]) -> None:
    model = RankingModel.load(artefacts[1], "1")
    user, items, retrieval = _candidates(30)

    def score(frame: pd.DataFrame, scores: np.ndarray) -> np.ndarray:
        # Serving passes the user and candidate ids (the item-kNN signal reads them; others ignore them).
        return model.score(user, frame, scores, user_id="u1", item_ids=frame["item_id"].tolist())

    scores = score(items, retrieval)
    assert scores.shape == (30,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(score(items, retrieval), scores)  # deterministic
    order = np.random.default_rng(1).permutation(30)
    shuffled = score(items.iloc[order].reset_index(drop=True), retrieval[order])
    np.testing.assert_allclose(shuffled, scores[order], rtol=1e-6)
    assert score(items.iloc[:0], retrieval[:0]).shape == (0,)


def test_unknown_features_still_score(artefacts: tuple[str, Path]) -> None:
    model = RankingModel.load(artefacts[1], "1")
    ids = [f"new{j}" for j in range(5)]  # an unknown user and unknown items
    scores = model.score(
        {}, pd.DataFrame(index=range(5)), np.zeros(5, dtype=np.float32), user_id="x", item_ids=ids
    )
    assert scores.shape == (5,) and np.isfinite(scores).all()


def test_probabilities_are_calibrated_and_never_reorder(artefacts: tuple[str, Path]) -> None:
    model = RankingModel.load(artefacts[1], "1")
    x, _, _ = planted_ranker_rows(n_users=5, seed=3, extra_columns=_width(model) - len(RANKER_FEATURE_NAMES))
    raw, probabilities = model.predict_matrix_with_probabilities(x)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    order = np.argsort(raw, kind="stable")
    assert (np.diff(probabilities[order]) >= 0).all()


def test_the_planted_positives_rank_first(artefacts: tuple[str, Path]) -> None:
    model = RankingModel.load(artefacts[1], "1")
    x, y, sizes = planted_ranker_rows(
        n_users=20, seed=7, extra_columns=_width(model) - len(RANKER_FEATURE_NAMES)
    )
    raw = model.predict_matrix(x)
    hits = [
        y[start + np.argsort(-raw[start : start + size])[:2]].sum()
        for start, size in zip(np.cumsum(sizes) - sizes, sizes, strict=True)
    ]
    assert np.sum(hits) / (2 * len(sizes)) > 0.7
    probe = np.zeros((2, _width(model)), dtype=np.float32)
    probe[1, DOT] = 2.0
    low, high = model.predict_matrix(probe)
    assert high > low
