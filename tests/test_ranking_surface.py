"""The request's surface reaches the ranker: a multi-task ranker served for two surfaces with different
head weights mixes its heads by each surface's weights (checked against the mix computed by hand)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.vocab import GENRES
from serving.recommender import LocalRanking, Recommender
from serving.schemas import RecommendRequest
from serving.stages import Candidates, RankingStage
from training.calibration import PlattCalibrator
from training.multitask import MultiTaskModelConfig, MultiTaskRanker, SurfaceWeights
from training.multitask_runtime import MultiTaskRankingModel, write_multitask_artifacts
from training.ranker_features import RANKER_FEATURE_NAMES, build_ranker_matrix
from training.runtime import RankingModel

ITEMS = [f"i{j}" for j in range(12)]
# (click, satisfaction) weights: search leans on clicks, email on satisfaction only.
WEIGHTS = SurfaceWeights({"default": (1.0, 1.0), "search": (3.0, 1.0), "email": (0.0, 1.0)})


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> MultiTaskRankingModel:
    """An untrained multi-task ranker (seeded): its two heads disagree, which is all this needs."""
    torch.manual_seed(0)
    shape = MultiTaskModelConfig(n_features=len(RANKER_FEATURE_NAMES), hidden_sizes=(16,), head_hidden=8)
    model = MultiTaskRanker(shape)
    model.fit_normaliser(
        np.random.default_rng(0).normal(size=(64, len(RANKER_FEATURE_NAMES))).astype(np.float32)
    )
    directory = tmp_path_factory.mktemp("multitask")
    calibrator = PlattCalibrator(slope=1.0, intercept=0.0)
    write_multitask_artifacts(directory, model.state_dict(), shape, WEIGHTS, False, calibrator, "ranker_v1")
    loaded = RankingModel.load(directory, "5")
    assert isinstance(loaded, MultiTaskRankingModel)
    return loaded


USER = {"user_n_events": 30, "user_n_positive": 9, "user_genre_affinity": [1.0 / len(GENRES)] * len(GENRES)}


def _item(j: int) -> dict[str, Any]:
    genres = [0.0] * len(GENRES)
    genres[j % len(GENRES)] = 1.0
    return {"item_n_events": 10 * j, "item_positive_rate": j / 20.0, "item_genre_vector": genres}


def read(service: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The online read's frame: the user's and each candidate's features, one row per entity row."""
    return pd.DataFrame([{**row, **USER, **_item(ITEMS.index(row["item_id"]))} for row in rows])


class FixedRetrieval:
    """Retrieval that always answers the same candidates (the ranker is what is tested)."""

    async def candidates(
        self, user_id: str, n: int, k: int, session_item_ids: Sequence[str] = (), debug: bool = False
    ) -> Candidates:
        return Candidates(list(ITEMS), [1.0 - j / 100.0 for j in range(len(ITEMS))], "2")

    async def popular(self, n: int) -> Candidates:
        return Candidates(list(ITEMS[:n]), [1.0] * min(n, len(ITEMS)), "2")

    async def version(self) -> str:
        return "2"


def _by_hand(ranker: MultiTaskRankingModel, click: float, satisfaction: float) -> dict[str, float]:
    items = pd.DataFrame([_item(j) for j in range(len(ITEMS))])
    retrieval = np.array([1.0 - j / 100.0 for j in range(len(ITEMS))], dtype=np.float32)
    heads = ranker.head_probabilities(build_ranker_matrix(USER, items, retrieval, "ranker_v1"))
    mixed = (click * heads[:, 0] + satisfaction * heads[:, 1]) / (click + satisfaction)
    return dict(zip(ITEMS, mixed.tolist(), strict=True))


def test_the_request_surface_picks_the_ranker_head_weights(ranker: MultiTaskRankingModel) -> None:
    recommender = Recommender(FixedRetrieval(), LocalRanking(RankingStage(ranker, read)), 12, 12)
    answers: dict[str | None, dict[str, float]] = {}
    for surface in ("search", "email", None):
        request = RecommendRequest(user_id="u1", k=12, surface=surface)
        response = asyncio.run(recommender.recommend(request))
        assert not response.fallback
        answers[surface] = {item.item_id: item.score for item in response.items}
    search, email = _by_hand(ranker, 3.0, 1.0), _by_hand(ranker, 0.0, 1.0)
    for item in ITEMS:
        assert answers["search"][item] == pytest.approx(search[item], rel=1e-6)
        assert answers["email"][item] == pytest.approx(email[item], rel=1e-6)
        assert answers[None][item] == pytest.approx(_by_hand(ranker, 1.0, 1.0)[item], rel=1e-6)
    assert max(abs(answers["search"][i] - answers["email"][i]) for i in ITEMS) > 1e-3


def test_a_stage_passes_the_surface_from_the_candidates_details(ranker: MultiTaskRankingModel) -> None:
    stage = RankingStage(ranker, read)
    plain = Candidates(list(ITEMS), [1.0] * len(ITEMS), "2")
    search = stage.score_many([("u1", plain.with_details(surface="search"))])[0]
    email = stage.score_many([("u1", plain.with_details(surface="email"))])[0]
    default = stage.score_many([("u1", plain)])[0]
    assert (
        isinstance(search, np.ndarray) and isinstance(email, np.ndarray) and isinstance(default, np.ndarray)
    )
    assert not np.allclose(search, email)
    np.testing.assert_array_equal(default, stage.score_many([("u1", plain.with_details(surface="pdp"))])[0])
