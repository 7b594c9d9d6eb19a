"""Shadow scoring: the challenger scores the champion's candidates after the answer, and is logged."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from test_serving_api import CountRanker, stages

from recsys.config import ServeConfig
from serving.reranking import RerankConfig
from serving.shadow import SHADOW_COLUMNS, ShadowLog, ShadowScorer
from serving.stages import Candidates, RankingStage, RetrievalStage


class ReverseRanker(CountRanker):
    """The challenger: prefers the items the champion likes least; optionally slow."""

    version = "4"

    def __init__(self, delay_s: float = 0.0) -> None:
        self._delay_s = delay_s

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        time.sleep(self._delay_s)
        return -super().score(user_features, item_features, retrieval_scores)


def test_log_round_trip(tmp_path: Path) -> None:
    log = ShadowLog(tmp_path / "shadow")
    assert log.read().empty and list(log.read().columns) == list(SHADOW_COLUMNS)
    row = dict.fromkeys(SHADOW_COLUMNS, "x") | {"champion_score": 1.5, "champion_position": 2}
    log.append([row], datetime(2026, 3, 1, tzinfo=UTC))
    log.append([row | {"request_id": "y"}], datetime(2026, 3, 2, tzinfo=UTC))
    # a second writer (another replica) on the same day: a file of its own, read with the others
    ShadowLog(tmp_path / "shadow").append([row | {"request_id": "z"}], datetime(2026, 3, 2, tzinfo=UTC))
    names = sorted(p.name for p in (tmp_path / "shadow").iterdir())
    assert [name.split(".")[0] for name in names] == ["date=2026-03-01", "date=2026-03-02", "date=2026-03-02"]
    assert len(set(names)) == 3 and all(name.endswith(".jsonl") for name in names)
    back = log.read()
    assert sorted(back["request_id"]) == ["x", "y", "z"] and back["champion_score"].tolist() == [1.5] * 3
    assert back["request_id"].tolist()[0] == "x"  # days in order


def test_scorer_logs_both_scores_per_candidate(tmp_path: Path) -> None:
    retrieval, champion, _ = stages()
    challenger = stages(ReverseRanker())[1]
    found = retrieval.candidates("u1", 5, 5).with_details(request_id="req-1")
    ranked = champion.rank("u1", found)
    scorer = ShadowScorer(challenger, ShadowLog(tmp_path / "shadow"))
    anonymous = Candidates(found.item_ids, found.scores, "7")  # no request id: not logged
    assert scorer.score([("u1", found, ranked), ("u1", anonymous, ranked)]) == 5
    log = scorer.log.read()
    assert log["request_id"].unique().tolist() == ["req-1"]
    assert log["item_id"].tolist() == found.item_ids  # candidate order
    # the test features give item iN an item_n_events of N: champion N, challenger -N
    numbers = [float(i[1:]) for i in found.item_ids]
    assert log["champion_score"].tolist() == numbers and log["challenger_score"].tolist() == [
        -n for n in numbers
    ]
    assert log["champion_position"].tolist() == [ranked.item_ids.index(i) + 1 for i in found.item_ids]
    assert set(log["champion_version"]) == {"3"} and set(log["challenger_version"]) == {"4"}


def test_graph_shadow_scores_off_the_response_path(tmp_path: Path) -> None:
    """A challenger taking 0.6 s per batch delays no answer, yet every answer gets logged."""
    from ray import serve

    from serving.app import build_graph

    folder = tmp_path / "shadow"
    log = ShadowLog(folder)

    def retrieval() -> RetrievalStage:
        return stages()[0]

    def ranking() -> RankingStage:
        return stages()[1]

    def shadow() -> ShadowScorer:
        return ShadowScorer(stages(ReverseRanker(delay_s=0.6))[1], ShadowLog(folder))

    # no cache and no no-repeat window: every request is ranked afresh, to the same answer
    settings = ServeConfig(
        n_candidates=10, max_k=20, cache_ttl_s=0, rerank=RerankConfig(no_repeat_responses=0)
    )
    app = build_graph(retrieval, ranking, settings, shadow_loader=shadow)
    handle = serve.run(app, _local_testing_mode=True)
    handle.recommend.remote({"user_id": "u1", "k": 3}).result()  # warm
    request_ids = []
    for _ in range(3):
        started = time.perf_counter()
        body = handle.recommend.remote({"user_id": "u1", "k": 3}).result()
        assert time.perf_counter() - started < 0.5
        assert [item["item_id"] for item in body["items"]] == ["i11", "i10", "i9"]  # the champion's answer
        request_ids.append(body["request_id"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not set(request_ids) <= set(log.read()["request_id"]):
        time.sleep(0.1)
    logged = log.read()
    assert set(request_ids) <= set(logged["request_id"])
    one = logged[logged["request_id"] == request_ids[0]]
    assert len(one) == 10 and (one["challenger_score"] == -one["champion_score"]).all()
