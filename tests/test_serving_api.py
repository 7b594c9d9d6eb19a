"""The ingress logic and HTTP contract, over FastAPI's TestClient with small real models (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.api import RequestCounter, create_api, describe_errors
from serving.exploration import ExplorationConfig
from serving.recommender import IngressState, LocalRanking, LocalRetrieval, Recommender
from serving.reranking import ItemVectors, RerankConfig
from serving.roles import RankingModel, RetrievalModel
from serving.schemas import RecommendRequest, RecommendResponse
from serving.stages import POSITIONS_DETAIL, Candidates, RankingStage, RetrievalStage

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

ITEMS = [f"i{n}" for n in range(30)]


class TableFeatures:
    """An online store stand-in with real lookups: user and item features from dicts, nulls when absent."""

    def __init__(self, users: dict[str, dict[str, Any]], items: dict[str, dict[str, Any]]) -> None:
        self.users = users
        self.items = items
        self.calls: list[tuple[str, int]] = []

    def __call__(self, service_name: str, entity_rows: list[dict[str, Any]]) -> pd.DataFrame:
        self.calls.append((service_name, len(entity_rows)))
        rows = []
        for row in entity_rows:
            out = dict(row)
            if "user_id" in row:
                out.update(self.users.get(row["user_id"], {"user_n_events": None}))
            if "item_id" in row:
                out.update(self.items.get(row["item_id"], {"item_n_events": None}))
            rows.append(out)
        return pd.DataFrame(rows)


class CatalogRetrieval:
    """Retrieves the catalogue in order, minus what the user has seen; knows only users it has seen."""

    version = "7"

    def __init__(self, seen: dict[str, set[str]]) -> None:
        self.seen = seen
        self.features_seen: list[dict[str, Any]] = []

    def knows_user(self, user_id: str) -> bool:
        return user_id in self.seen

    def retrieve(self, user_id: str, user_features: dict[str, Any], n: int) -> tuple[list[str], np.ndarray]:
        self.features_seen.append(user_features)
        kept = [i for i in ITEMS if i not in self.seen[user_id]][:n]
        return kept, np.linspace(1.0, 0.5, len(kept))

    def popular(self, n: int) -> tuple[list[str], np.ndarray]:
        return ITEMS[::-1][:n], np.arange(n, 0, -1, dtype=np.float64)


class CountRanker:
    """Scores an item by its `item_n_events` feature: the reverse of retrieval order in these tests."""

    version = "3"
    feature_service = "ranker_v1"

    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        assert user_features["user_id"] == "u1"
        scores: np.ndarray = item_features["item_n_events"].to_numpy(dtype=np.float64)
        return scores


class BrokenRanker(CountRanker):
    def score(
        self, user_features: dict[str, Any], item_features: pd.DataFrame, retrieval_scores: np.ndarray
    ) -> np.ndarray:
        raise RuntimeError("model file corrupt")


class SlowRanking:
    """A ranking backend that answers too late."""

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates:
        await asyncio.sleep(1.0)
        return candidates

    async def version(self) -> str:
        return "3"


class DownRetrieval:
    """A retrieval backend that has stopped answering."""

    def __init__(self, popular: Candidates | None) -> None:
        self._popular = popular

    async def candidates(
        self, user_id: str, n: int, k: int, session_item_ids: Sequence[str] = (), debug: bool = False
    ) -> Candidates:
        raise ConnectionError("replica died")

    async def popular(self, n: int) -> Candidates:
        if self._popular is None:
            raise ConnectionError("replica died")
        return self._popular

    async def version(self) -> str:
        raise ConnectionError("replica died")


def features() -> TableFeatures:
    return TableFeatures(
        users={"u1": {"user_n_events": 12}},
        items={item: {"item_n_events": n} for n, item in enumerate(ITEMS)},
    )


def stages(ranker: CountRanker | None = None) -> tuple[RetrievalStage, RankingStage, TableFeatures]:
    reader = features()
    retrieval = RetrievalStage(CatalogRetrieval({"u1": {"i0", "i2"}}), reader)
    return retrieval, RankingStage(ranker or CountRanker(), reader), reader


def client_for(recommender: Recommender, max_k: int = 20) -> TestClient:
    return TestClient(create_api(recommender, max_k=max_k), raise_server_exceptions=False)


@pytest.fixture
def client() -> Iterator[TestClient]:
    retrieval, ranking, _ = stages()
    recommender = Recommender(LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20)
    with client_for(recommender) as test_client:
        yield test_client


def test_in_test_models_satisfy_the_serving_protocols() -> None:
    assert isinstance(CatalogRetrieval({}), RetrievalModel)
    assert isinstance(CountRanker(), RankingModel)


def test_known_user_gets_ranked_candidates_without_seen_items(client: TestClient) -> None:
    response = client.post("/recommend", json={"user_id": "u1", "k": 3, "surface": "homepage"})
    assert response.status_code == 200
    body = response.json()
    # Retrieval keeps i1, i3..i11 (10 candidates, i0 and i2 seen); the ranker prefers high item_n_events.
    assert [item["item_id"] for item in body["items"]] == ["i11", "i10", "i9"]
    assert [item["score"] for item in body["items"]] == [11.0, 10.0, 9.0]
    assert [item["position"] for item in body["items"]] == [1, 2, 3]
    assert body["model_version"] == {"retrieval": "7", "ranking": "3"}
    assert body["fallback"] is False and body["fallback_reason"] is None
    assert body["experiment_variant"] == "control"
    assert body["user_id"] == "u1" and len(body["request_id"]) == 32


def test_request_ids_are_unique(client: TestClient) -> None:
    ids = {client.post("/recommend", json={"user_id": "u1"}).json()["request_id"] for _ in range(5)}
    assert len(ids) == 5


def test_default_k_is_ten(client: TestClient) -> None:
    assert len(client.post("/recommend", json={"user_id": "u1"}).json()["items"]) == 10


def test_k_above_candidate_count_widens_retrieval(client: TestClient) -> None:
    body = client.post("/recommend", json={"user_id": "u1", "k": 15}).json()
    assert len(body["items"]) == 15
    assert "i0" not in {item["item_id"] for item in body["items"]}


def test_unknown_user_gets_popular_items_with_fallback(client: TestClient) -> None:
    body = client.post("/recommend", json={"user_id": "nobody", "k": 4}).json()
    assert [item["item_id"] for item in body["items"]] == ["i29", "i28", "i27", "i26"]
    assert body["fallback"] is True and body["fallback_reason"] == "unknown_user"
    assert body["model_version"] == {"retrieval": "7", "ranking": None}


def test_retrieval_and_ranking_each_read_features_once() -> None:
    retrieval, ranking, reader = stages()
    recommender = Recommender(LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20)
    with client_for(recommender) as test_client:
        reader.calls.clear()
        test_client.post("/recommend", json={"user_id": "u1", "k": 5})
    assert reader.calls == [("two_tower_v1", 1), ("ranker_v1", 10)]
    assert retrieval.model.features_seen[-1] == {"user_id": "u1", "user_n_events": 12}  # type: ignore[attr-defined]


def test_ranking_failure_answers_in_retrieval_order() -> None:
    retrieval, ranking, _ = stages(BrokenRanker())
    recommender = Recommender(LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20)
    with client_for(recommender) as test_client:
        body = test_client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
    assert [item["item_id"] for item in body["items"]] == ["i1", "i3", "i4"]
    assert body["fallback"] is True and body["fallback_reason"] == "ranking_failed"
    assert body["model_version"] == {"retrieval": "7", "ranking": None}


def test_slow_ranking_answers_in_retrieval_order() -> None:
    retrieval, _, _ = stages()
    recommender = Recommender(
        LocalRetrieval(retrieval), SlowRanking(), n_candidates=10, max_k=20, ranking_timeout_s=0.05
    )
    with client_for(recommender) as test_client:
        body = test_client.post("/recommend", json={"user_id": "u1", "k": 2}).json()
    assert [item["item_id"] for item in body["items"]] == ["i1", "i3"]
    assert body["fallback_reason"] == "ranking_timeout"


def test_retrieval_failure_answers_with_startup_popularity() -> None:
    popular = Candidates(["p1", "p2", "p3"], [3.0, 2.0, 1.0], "7")
    _, ranking, _ = stages()
    recommender = Recommender(DownRetrieval(popular), LocalRanking(ranking), n_candidates=10, max_k=20)
    with client_for(recommender) as test_client:
        body = test_client.post("/recommend", json={"user_id": "u1", "k": 2}).json()
        health = test_client.get("/healthz")
    assert [item["item_id"] for item in body["items"]] == ["p1", "p2"]
    assert body["fallback_reason"] == "retrieval_failed"
    assert health.status_code == 503


def test_retrieval_failure_without_fallback_list_is_503_not_a_trace() -> None:
    _, ranking, _ = stages()
    recommender = Recommender(DownRetrieval(None), LocalRanking(ranking), n_candidates=10, max_k=20)
    with client_for(recommender) as test_client:
        response = test_client.post("/recommend", json={"user_id": "u1"})
    assert response.status_code == 503
    assert "Traceback" not in response.text and "retrieval" in response.json()["error"]


def test_healthz_reports_model_versions(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_version": {"retrieval": "7", "ranking": "3"}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u1", "k": 0}, "k"),
        ({"user_id": "u1", "k": 21}, "k"),
        ({"user_id": "u1", "k": "10"}, "k"),
        ({"user_id": "u1", "k": 2.5}, "k"),
        ({"user_id": "u1", "k": True}, "k"),
        ({"k": 3}, "user_id"),
        ({"user_id": 42}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u1", "surface": "billboard"}, "surface"),
        ({"user_id": "u1", "device": "watch"}, "device"),
        ({"user_id": "u1", "limit": 5}, "limit"),
        (["u1"], "body"),
    ],
)
def test_invalid_requests_are_422_with_a_readable_error(client: TestClient, body: Any, field: str) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith(field) or f"{field}:" in error, error
    assert "Traceback" not in response.text


@pytest.mark.parametrize("raw", [b'{"user_id": "u1", "k": ', b"not json", b"", b'{"user_id": "u1"} trailing'])
def test_malformed_json_is_422(client: TestClient, raw: bytes) -> None:
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"].startswith("body: ")


def test_malformed_json_error_says_where() -> None:
    retrieval, ranking, _ = stages()
    recommender = Recommender(LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20)
    raw = b'{"user_id": "u1", "k": '
    response = client_for(recommender).post(
        "/recommend", content=raw, headers={"content-type": "application/json"}
    )
    assert response.json()["error"] == (
        "body: invalid JSON (Invalid JSON: EOF while parsing a value at line 1 column 23)"
    )


def test_json_body_is_read_whatever_the_content_type() -> None:
    """`curl -d '{...}'` sends form-urlencoded; the body is still the JSON request."""
    retrieval, ranking, _ = stages()
    recommender = Recommender(LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20)
    response = client_for(recommender).post(
        "/recommend",
        content=b'{"user_id": "u1", "k": 3}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 3


def test_error_for_k_names_the_limit(client: TestClient) -> None:
    error = client.post("/recommend", json={"user_id": "u1", "k": 500}).json()["error"]
    assert error == "k: Input should be less than or equal to 20"


def test_unknown_surface_lists_the_allowed_values(client: TestClient) -> None:
    error = client.post("/recommend", json={"user_id": "u1", "surface": "x"}).json()["error"]
    assert error == "surface: must be one of homepage, search, email, pdp, more_like_this"


def test_describe_errors_joins_fields() -> None:
    errors = [
        {"loc": ("body", "k"), "msg": "too big"},
        {"loc": ("body",), "msg": "bad"},
    ]
    assert describe_errors(errors) == "k: too big; body: bad"


def genre_features() -> TableFeatures:
    """Items i8..i11 (the ranker's favourites) share genre 0; the rest are genre 1; i5 is brand new."""
    genre = {n: [1.0 if g == (0 if n >= 8 else 1) else 0.0 for g in range(19)] for n in range(30)}
    return TableFeatures(
        users={"u1": {"user_n_events": 12}},
        items={
            item: {
                "item_n_events": n,
                "item_genre_vector": genre[n],
                "item_age_days": 0.0 if n == 5 else 900.0,
            }
            for n, item in enumerate(ITEMS)
        },
    )


def test_reranking_caps_genres_and_never_repeats_recent_items() -> None:
    from serving.reranking import Pin, RerankConfig

    config = RerankConfig(
        mmr_lambda=1.0,
        max_per_category=2,
        cap_window=4,
        freshness_weight=0.0,
        no_repeat_responses=1,
        blocklist=frozenset({"i7"}),
        pins=(Pin(item_id="i29", position=3),),
    )
    reader = genre_features()
    retrieval = RetrievalStage(CatalogRetrieval({"u1": {"i0", "i2"}}), reader)
    ranking = RankingStage(CountRanker(), reader, config)
    recommender = Recommender(
        LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20, rerank=config
    )
    with client_for(recommender) as client:
        first = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
        second = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
        third = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
    # Ranker order i11 i10 i9 i8 i6 i5 ...: two of genre 0, then genre 1 (i7 blocklisted), i29 pinned at 3.
    assert [item["item_id"] for item in first["items"]] == ["i11", "i10", "i29", "i6", "i5"]
    assert [item["position"] for item in first["items"]] == [1, 2, 3, 4, 5]
    assert first["fallback"] is False and first["model_version"] == {"retrieval": "7", "ranking": "3"}
    shown = {item["item_id"] for item in first["items"]}
    assert not shown & {item["item_id"] for item in second["items"] if item["item_id"] != "i29"}
    assert {item["item_id"] for item in third["items"]} & shown  # only the last response is remembered
    assert all("i7" not in [item["item_id"] for item in body["items"]] for body in (first, second, third))


def test_freshness_lifts_a_new_item_end_to_end() -> None:
    from serving.reranking import RerankConfig

    config = RerankConfig(mmr_lambda=1.0, max_per_category=None, freshness_weight=2.0, no_repeat_responses=0)
    reader = genre_features()
    retrieval = RetrievalStage(CatalogRetrieval({"u1": {"i0", "i2"}}), reader)
    ranking = RankingStage(CountRanker(), reader, config)
    recommender = Recommender(LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20)
    with client_for(recommender) as client:
        body = client.post("/recommend", json={"user_id": "u1", "k": 2}).json()
    assert [item["item_id"] for item in body["items"]] == ["i5", "i11"]


class GatedRanking:
    """A ranking backend that holds every request until `gate` opens, then answers in reverse order."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates:
        self.waiting += 1
        await self.gate.wait()
        return Candidates(candidates.item_ids[::-1], candidates.scores[::-1], "3")

    async def version(self) -> str:
        return "3"


def test_requests_past_max_in_flight_get_popularity_at_once_and_the_others_are_ranked() -> None:
    retrieval, _, _ = stages()
    ranking = GatedRanking()
    recommender = Recommender(LocalRetrieval(retrieval), ranking, n_candidates=10, max_k=20, max_in_flight=2)

    async def scenario() -> tuple[list[RecommendResponse], RecommendResponse, RecommendResponse]:
        await recommender.warm_up()
        ask = RecommendRequest(user_id="u1", k=3)
        held = [asyncio.create_task(recommender.recommend(ask)) for _ in range(2)]
        while ranking.waiting < 2:
            await asyncio.sleep(0)
        # Both slots taken: the third is answered while the first two still wait for ranking.
        shed = await recommender.recommend(RecommendRequest(user_id="u1", k=3, exclude_item_ids=["i29"]))
        assert not any(task.done() for task in held)
        ranking.gate.set()
        answered = list(await asyncio.gather(*held))
        after = await recommender.recommend(RecommendRequest(user_id="u1", k=3))  # slots free again
        return answered, shed, after

    answered, shed, after = asyncio.run(scenario())
    assert shed.fallback and shed.fallback_reason == "overloaded"
    assert [item.item_id for item in shed.items] == ["i28", "i27", "i26"]  # popularity minus the excluded
    assert shed.model_version.ranking is None
    for response in [*answered, after]:
        assert not response.fallback and response.model_version.ranking == "3"
        assert [item.item_id for item in response.items] == ["i11", "i10", "i9"]  # ranked: reversed
    assert 'recsys_fallback_total{reason="overloaded"} 1.0' in recommender.metrics.render().decode()


def test_no_limit_admits_every_request() -> None:
    retrieval, _, _ = stages()
    ranking = GatedRanking()
    recommender = Recommender(LocalRetrieval(retrieval), ranking, n_candidates=10, max_k=20, max_in_flight=0)

    async def scenario() -> list[RecommendResponse]:
        await recommender.warm_up()
        ask = RecommendRequest(user_id="u1", k=3)
        tasks = [asyncio.create_task(recommender.recommend(ask)) for _ in range(5)]
        while ranking.waiting < 5:
            await asyncio.sleep(0)
        ranking.gate.set()
        return list(await asyncio.gather(*tasks))

    assert not any(response.fallback for response in asyncio.run(scenario()))


EPSILON = ExplorationConfig(policy="epsilon", epsilon=0.5, pool=8)


class RecordingRanking(LocalRanking):
    """The in-process ranking backend, keeping what each request handed it and what it answered."""

    def __init__(self, stage: RankingStage) -> None:
        super().__init__(stage)
        self.sent: list[Candidates] = []
        self.ranked: list[Candidates] = []

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates:
        self.sent.append(candidates)
        self.ranked.append(await super().rank(user_id, candidates, model))
        return self.ranked[-1]


@pytest.mark.parametrize(("exploration", "positions"), [(ExplorationConfig(), 3), (EPSILON, 8)])
def test_ranking_re_ranks_only_the_positions_the_answer_can_show(
    exploration: ExplorationConfig, positions: int
) -> None:
    # k=3 shows three positions; epsilon exploration draws the three from the first `pool` (8).
    retrieval, _, reader = stages()
    vectors = ItemVectors(ITEMS, np.random.default_rng(0).normal(size=(len(ITEMS), 3)))
    config = RerankConfig(mmr_lambda=0.5)
    full = RankingStage(CountRanker(), reader, rerank_config=config, item_vectors=vectors)
    stage = RankingStage(CountRanker(), reader, rerank_config=config, item_vectors=vectors)
    ranking = RecordingRanking(stage)
    state = IngressState(exploration=exploration, seed=0)
    recommender = Recommender(LocalRetrieval(retrieval), ranking, n_candidates=10, max_k=20, state=state)
    body = client_for(recommender).post("/recommend", json={"user_id": "u1", "k": 3}).json()
    assert len(body["items"]) == 3 and not body["fallback"]
    (sent,), (ranked,) = ranking.sent, ranking.ranked
    assert sent.details[POSITIONS_DETAIL] == positions and len(sent.item_ids) == 10
    whole = full.rank("u1", sent.with_details(**{POSITIONS_DETAIL: None}))
    assert ranked.item_ids == whole.item_ids[:positions] and ranked.scores == whole.scores[:positions]
    assert len(whole.item_ids) == 10 and whole.item_ids != sorted(whole.item_ids, key=ITEMS.index)[::-1]


def test_request_counter_counts_routes_statuses_and_failures() -> None:
    counted: list[tuple[str, int]] = []
    app = FastAPI()

    @app.get("/ok/{name}")
    async def ok(name: str) -> dict[str, str]:
        return {"name": name}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("bug")

    app.add_middleware(RequestCounter, count=lambda route, code: counted.append((route, code)))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        assert test_client.get("/ok/x").status_code == 200
        assert test_client.get("/nowhere").status_code == 404
        assert test_client.get("/broken").status_code == 500
    # The route's template, not the path; a failure before any answer counts as 500.
    assert counted == [("/ok/{name}", 200), ("unmatched", 404), ("/broken", 500)]
