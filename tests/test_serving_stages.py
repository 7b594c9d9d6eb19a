"""Pure per-request logic of the serving stages and the request schema (no Ray, no Feast)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from serving.schemas import RecommendRequest, request_model
from serving.stages import (
    CATALOG_ROWS_DETAIL,
    Candidates,
    FeatureReadError,
    RankingStage,
    order_by_score,
    split_features,
)


def test_order_by_score_is_descending_and_stable_on_ties() -> None:
    ids, scores = order_by_score(["a", "b", "c", "d"], np.array([0.2, 0.9, 0.2, -1.0]))
    assert ids == ["b", "a", "c", "d"]
    assert scores == [0.9, 0.2, 0.2, -1.0]


def test_order_by_score_rejects_misaligned_inputs() -> None:
    with pytest.raises(ValueError, match="2 item ids but 3 scores"):
        order_by_score(["a", "b"], np.array([1.0, 2.0, 3.0]))


def test_split_features_takes_user_columns_from_the_first_row() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u", "u"],
            "item_id": ["a", "b"],
            "user_genre_affinity": [[0.5, 0.5], [0.5, 0.5]],
            "item_n_events": [4, 7],
        }
    )
    user, items = split_features(frame)
    assert user["user_id"] == "u" and user["user_genre_affinity"] == [0.5, 0.5]
    assert items.to_dict("list") == {"item_id": ["a", "b"], "item_n_events": [4, 7]}


def test_candidates_check_lengths_and_cut() -> None:
    with pytest.raises(ValueError, match="1 item ids but 2 scores"):
        Candidates(["a"], [1.0, 2.0], "1")
    top = Candidates(["a", "b", "c"], [3.0, 2.0, 1.0], "1", "unknown_user").top(2)
    assert top == Candidates(["a", "b"], [3.0, 2.0], "1", "unknown_user")


def test_candidates_cut_their_catalogue_rows_with_their_ids() -> None:
    rows = {CATALOG_ROWS_DETAIL: np.array([7, 4, 9])}
    found = Candidates(["a", "b", "c"], [3.0, 2.0, 1.0], "1", details=rows)
    kept = found.without(frozenset({"b"}))
    assert kept.item_ids == ["a", "c"] and kept.details[CATALOG_ROWS_DETAIL].tolist() == [7, 9]
    assert found.top(1).details[CATALOG_ROWS_DETAIL].tolist() == [7]
    assert found.details[CATALOG_ROWS_DETAIL].tolist() == [7, 4, 9]  # the original is left alone


class ShortReads:
    """An online store that loses a row: the ranking stage must notice, not misalign scores."""

    def __call__(self, service_name: str, entity_rows: list[dict[str, Any]]) -> pd.DataFrame:
        return pd.DataFrame(entity_rows[:-1])


class ConstantRanker:
    version = "1"
    feature_service = "ranker_v1"

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        return np.zeros(len(item_features))


def test_ranking_stage_rejects_a_short_feature_read() -> None:
    stage = RankingStage(ConstantRanker(), ShortReads())
    with pytest.raises(FeatureReadError, match="2 rows for 3 candidates"):
        stage.rank("u", Candidates(["a", "b", "c"], [3.0, 2.0, 1.0], "9"))


def test_ranking_stage_keeps_retrieval_order_on_equal_scores() -> None:
    stage = RankingStage(ConstantRanker(), lambda service, rows: pd.DataFrame(rows))
    ranked = stage.rank("u", Candidates(["a", "b", "c"], [3.0, 2.0, 1.0], "9"))
    assert ranked == Candidates(["a", "b", "c"], [0.0, 0.0, 0.0], "1")
    assert stage.rank("u", Candidates([], [], "9")).item_ids == []


def test_request_model_caps_k_from_configuration() -> None:
    model = request_model(5)
    assert model.model_validate({"user_id": "u", "k": 5}).k == 5
    assert model.model_validate({"user_id": "u"}).k == 5  # the default never exceeds the cap
    with pytest.raises(ValidationError):
        model.model_validate({"user_id": "u", "k": 6})
    with pytest.raises(ValueError, match="max_k must be at least 1"):
        request_model(0)


def test_request_accepts_known_surface_and_device() -> None:
    request = RecommendRequest.model_validate({"user_id": "u", "surface": "email", "device": "tv"})
    assert (request.surface, request.device, request.k) == ("email", "tv", 10)


class PlattRanker(ConstantRanker):
    """A LightGBM-kind ranker with a Platt calibration: raw scores 2, 0, -1 for the candidates in order."""

    kind = "lightgbm"
    calibrated = True

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        return np.array([2.0, 0.0, -1.0])[: len(item_features)]

    def probabilities(self, raw_scores: np.ndarray) -> np.ndarray:
        from training.calibration import PlattCalibrator

        return PlattCalibrator(slope=1.0, intercept=-1.0).probabilities(raw_scores)


def test_ranking_stage_attaches_calibrated_probabilities_of_a_calibrated_ranker() -> None:
    reads = lambda service, rows: pd.DataFrame(rows)  # noqa: E731
    ranked = RankingStage(PlattRanker(), reads).rank("u", Candidates(["a", "b", "c"], [3.0, 2.0, 1.0], "9"))
    assert ranked.item_ids == ["a", "b", "c"] and ranked.scores == [2.0, 0.0, -1.0]  # order: raw scores
    sigmoid = {"a": 1 / (1 + np.exp(-1.0)), "b": 1 / (1 + np.exp(1.0)), "c": 1 / (1 + np.exp(2.0))}
    assert ranked.details["probabilities"] == pytest.approx(sigmoid)

    uncalibrated = PlattRanker()
    uncalibrated.calibrated = False  # an artefact without calibration.json
    multitask = PlattRanker()
    multitask.kind = "multitask"  # calibrated on another score than it serves
    for model in (uncalibrated, multitask, ConstantRanker()):
        plain = RankingStage(model, reads).rank("u", Candidates(["a", "b", "c"], [3.0, 2.0, 1.0], "9"))
        assert "probabilities" not in plain.details
