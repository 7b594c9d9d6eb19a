"""The ingress over HTTP (FastAPI's TestClient, no Ray): events and sessions, cache, metrics, readiness,
experiments and admin, more-like-this, debug and exploration, with small real genre-aware models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_serving_api import TableFeatures

from evaluation.experiments.assignment import assign, load_experiments
from recsys.vocab import GENRES
from serving.admin import admin_actions
from serving.api import create_api
from serving.cache import PredictionCache
from serving.events import EventLog
from serving.experiments import ExperimentWatcher
from serving.exploration import ExplorationConfig
from serving.recommender import IngressState, LocalRanking, LocalRetrieval, Recommender
from serving.reranking import RerankConfig
from serving.session import SessionStore
from serving.stages import Candidates, RankingStage, RetrievalStage

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

COMEDY, HORROR, DRAMA = GENRES.index("Comedy"), GENRES.index("Horror"), GENRES.index("Drama")
# i0-i9 comedies, i10-i19 horror films, i20-i29 dramas.
GENRE_OF = {f"i{n}": (COMEDY, HORROR, DRAMA)[n // 10] for n in range(30)}
ITEMS = list(GENRE_OF)
TOKEN = "s3cret"


def one_hot(genre: int) -> list[float]:
    return [1.0 if g == genre else 0.0 for g in range(len(GENRES))]


def affinity(**shares: float) -> list[float]:
    out = [0.0] * len(GENRES)
    for name, share in shares.items():
        out[GENRES.index(name.capitalize())] = share
    return out


def zeros_if_missing(value: Any) -> np.ndarray:
    """A genre vector, or zeros where the online store had none (the models' default)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.zeros(len(GENRES))
    return np.asarray(value, dtype=np.float64)


class GenreRetrieval:
    """Scores the catalogue by user genre affinity . item genres (ties by id order), like a user tower."""

    version = "7"

    def __init__(self) -> None:
        self.catalog = ITEMS
        self.item_embeddings = np.array([one_hot(GENRE_OF[i]) for i in ITEMS], dtype=np.float32)
        self.index = self

    def knows_user(self, user_id: str) -> bool:
        return user_id.startswith("u")

    def retrieve(self, user_id: str, user_features: dict[str, Any], n: int) -> tuple[list[str], np.ndarray]:
        taste = zeros_if_missing(user_features.get("user_genre_affinity"))
        scores = self.item_embeddings @ taste - np.arange(len(ITEMS)) * 1e-4
        order = np.argsort(-scores, kind="stable")[:n]
        return [ITEMS[j] for j in order], scores[order]

    def popular(self, n: int) -> tuple[list[str], np.ndarray]:
        ids = ITEMS[20:][:n]
        return ids, np.arange(len(ids), 0, -1, dtype=np.float64)

    def search(self, query: np.ndarray, n: int, exclude: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
        scores = self.item_embeddings @ query[0] - np.arange(len(ITEMS)) * 1e-4
        order = [j for j in np.argsort(-scores, kind="stable") if j not in exclude[0]][:n]
        return np.array([order]), np.array([scores[order]], dtype=np.float32)


class AffinityRanker:
    """The ranker's view of the same taste: the user's affinity for the item's genre."""

    version = "3"
    feature_service = "ranker_v1"

    def score(self, user: dict[str, Any], items: pd.DataFrame, retrieval_scores: np.ndarray) -> np.ndarray:
        taste = zeros_if_missing(user.get("user_genre_affinity"))
        match = [float(taste @ zeros_if_missing(g)) for g in items["item_genre_vector"]]
        return np.array(match) + retrieval_scores * 1e-3


class Reader(TableFeatures):
    def __init__(self) -> None:
        super().__init__(
            users={
                "u1": {
                    "user_genre_affinity": affinity(comedy=0.8, horror=0.1, drama=0.1),
                    "user_n_events": 40,
                }
            },
            items={i: {"item_genre_vector": one_hot(g), "item_age_days": 900.0} for i, g in GENRE_OF.items()},
        )
        self.down = False

    def __call__(self, service_name: str, entity_rows: list[dict[str, Any]]) -> pd.DataFrame:
        if self.down:
            raise ConnectionError("online store unreachable")
        return super().__call__(service_name, entity_rows)


@dataclass
class Service:
    client: TestClient
    recommender: Recommender
    reader: Reader
    state_dir: Path
    reloads: list[str]


def build(tmp_path: Path, exploration: ExplorationConfig | None = None, token: str | None = TOKEN) -> Service:
    reader = Reader()
    rerank = RerankConfig(mmr_lambda=1.0, max_per_category=None, freshness_weight=0.0, no_repeat_responses=0)
    retrieval = RetrievalStage(GenreRetrieval(), reader, session_weight=0.5)
    ranking = RankingStage(AffinityRanker(), reader, rerank, session_boost=0.0)
    challenger = RankingStage(AffinityRanker(), reader, rerank)
    challenger.model.version = "4"  # type: ignore[misc]
    state = IngressState(
        cache=PredictionCache(ttl_s=30, max_entries=100),
        sessions=SessionStore(max_items=10, ttl_s=3600),
        event_log=EventLog(tmp_path / "events"),
        experiments=ExperimentWatcher(tmp_path / "experiments.json", check_every_s=1.0),
        exploration=exploration or ExplorationConfig(),
        seed=0,
    )
    ranking_backend = LocalRanking(ranking)
    recommender = Recommender(
        LocalRetrieval(retrieval), ranking_backend, n_candidates=20, max_k=20, rerank=rerank, state=state
    )
    reloads: list[str] = []

    async def reload() -> dict[str, str]:
        reloads.append("reload")
        return {"retrieval": "7", "ranking": "3"}

    async def load_model(ref: str) -> str:
        if ref not in ("challenger", "4"):
            raise LookupError(f"recsys-ranker has no alias {ref!r}")
        ranking_backend._variants[ref] = challenger
        return "4"

    assert state.experiments is not None
    actions = admin_actions(state.experiments, reload, load_model)
    api = create_api(recommender, max_k=20, admin_token=token, admin_actions=actions)
    return Service(TestClient(api, raise_server_exceptions=False), recommender, reader, tmp_path, reloads)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    built = build(tmp_path)
    with built.client:
        yield built


def views(user: str, items: list[str], start: int = 0) -> dict[str, Any]:
    return {
        "events": [
            {
                "event_id": f"{user}-{start + n}",
                "user_id": user,
                "item_id": item,
                "event_type": "view",
                "dwell_time_ms": 90 * 60 * 1000,
                "session_id": "s1",
                "surface": "homepage",
                "device_type": "tv",
                "event_ts": "2026-03-01T20:00:00Z",
            }
            for n, item in enumerate(items)
        ]
    }


def genres(body: dict[str, Any]) -> list[str]:
    return [GENRES[GENRE_OF[item["item_id"]]] for item in body["items"]]


def test_three_horror_films_bring_more_horror_at_once(service: Service) -> None:
    ask = {"user_id": "u1", "k": 5, "surface": "homepage"}
    before = service.client.post("/recommend", json=ask).json()
    assert genres(before) == ["Comedy"] * 5
    cached = service.client.post("/recommend", json=ask).json()
    assert cached["cached"] is True and cached["items"] == before["items"]

    response = service.client.post("/events", json=views("u1", ["i10", "i11", "i12"]))
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3, "rejected": []}

    after = service.client.post("/recommend", json=ask).json()
    assert after["cached"] is False  # the events dropped the cached answer
    assert genres(after) == ["Horror"] * 5
    assert not {"i10", "i11", "i12"} & {item["item_id"] for item in after["items"]}  # just watched
    logged = EventLog(service.state_dir / "events").read()
    assert sorted(logged["item_id"]) == ["i10", "i11", "i12"]
    assert (logged["server_ts"] >= logged["event_ts"]).all()


def test_session_items_in_the_request_and_cold_start_users(service: Service) -> None:
    stranger = service.client.post("/recommend", json={"user_id": "new-1", "k": 3}).json()
    assert stranger["fallback_reason"] == "unknown_user"
    with_session = service.client.post(
        "/recommend", json={"user_id": "new-1", "k": 3, "session_item_ids": ["i21"], "current_item_id": "i22"}
    ).json()
    assert with_session["fallback"] is False and genres(with_session) == ["Drama"] * 3
    skip_only = {
        "events": [{**views("new-2", ["i13"])["events"][0], "event_type": "skip", "dwell_time_ms": None}]
    }
    assert service.client.post("/events", json=skip_only).json()["accepted"] == 1
    assert (
        service.client.post("/recommend", json={"user_id": "new-2"}).json()["fallback_reason"]
        == "unknown_user"
    )


def test_bad_events_are_422_with_reasons_and_good_ones_are_kept(service: Service) -> None:
    body = views("u1", ["i10", "i11"])
    body["events"][1]["event_type"] = "binge"
    response = service.client.post("/events", json=body)
    assert response.status_code == 422
    reply = response.json()
    assert reply["accepted"] == 1 and reply["rejected"][0]["index"] == 1
    assert reply["error"].startswith("events[1].event_type: Value error, must be one of impression")
    assert len(EventLog(service.state_dir / "events").read()) == 1
    for raw in (b"{oops", b"\xff", b'{"events": []}', b'{"events": 3}'):
        bad = service.client.post("/events", content=raw)
        assert bad.status_code == 422 and "Traceback" not in bad.text, raw


def test_metrics_count_stages_cache_fallbacks_and_events(service: Service) -> None:
    service.client.post("/recommend", json={"user_id": "u1", "k": 3})
    service.client.post("/recommend", json={"user_id": "u1", "k": 3})
    service.client.post("/recommend", json={"user_id": "stranger", "k": 3})
    service.client.post("/events", json=views("u1", ["i10"]))
    response = service.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'recsys_cache_hits_total{cache="prediction"} 1.0',
        'recsys_cache_misses_total{cache="prediction"} 2.0',
        'recsys_fallback_total{reason="unknown_user"} 1.0',
        'recsys_events_total{result="accepted"} 1.0',
        'recsys_stage_latency_seconds_count{stage="request"} 3.0',
        'recsys_stage_latency_seconds_count{stage="ranking"} 1.0',
        'recsys_stage_latency_seconds_count{stage="user_features"} 1.0',
        "recsys_ranking_batch_size_count 1.0",
        'recsys_requests_total{route="/recommend",status="ok"} 3.0',
        'recsys_requests_total{route="/events",status="ok"} 1.0',
        'recsys_queue_depth{deployment="ranking"} 0.0',
    ):
        assert line in text, line
    assert 'recsys_stage_latency_seconds_bucket{le="0.005",stage="rank"}' in text


def test_missing_features_are_counted(service: Service) -> None:
    service.reader.items["i1"] = {"item_genre_vector": None, "item_age_days": None}  # defaults used
    service.client.post("/recommend", json={"user_id": "u1", "k": 3})
    text = service.client.get("/metrics").text
    assert 'recsys_missing_features_total{stage="ranking"} 2.0' in text  # genre vector and age of i1


def test_readyz_checks_the_online_store_unlike_healthz(service: Service) -> None:
    assert service.client.get("/readyz").json()["status"] == "ready"
    service.reader.down = True
    assert service.client.get("/healthz").status_code == 200
    not_ready = service.client.get("/readyz")
    assert not_ready.status_code == 503 and "online store not reachable" in not_ready.json()["error"]


def test_admin_endpoints_need_the_token(service: Service, tmp_path: Path) -> None:
    assert service.client.post("/admin/reload").status_code == 401
    wrong = service.client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong admin token"
    ok = service.client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["status"] == "reloaded" and service.reloads == ["reload"]
    off = build(tmp_path / "other", token=None)
    assert off.client.post("/admin/reload", headers={"Authorization": "Bearer x"}).status_code == 403


def test_experiments_set_by_admin_bucket_users_and_serve_the_variant_model(service: Service) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    experiments = {
        "experiments": [
            {"name": "ranker", "variants": [
                {"name": "control", "model": "champion", "traffic": 0.5},
                {"name": "treatment", "model": "challenger", "traffic": 0.5},
            ]},
            {"name": "layout", "variants": [
                {"name": "a", "model": "champion", "traffic": 0.5},
                {"name": "b", "model": "champion", "traffic": 0.5},
            ]},
        ]
    }  # fmt: skip
    response = service.client.put("/admin/experiments", json=experiments, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["models"] == {"challenger": "4"}
    saved = load_experiments(service.state_dir / "experiments.json")
    users = [f"u{n}" for n in range(40)]
    for user in users:
        body = service.client.post("/recommend", json={"user_id": user, "k": 2}).json()
        variants = {name: assign(user, e) for name, e in saved.items()}
        assert body["experiments"] == variants
        assert body["experiment_variant"] == f"ranker={variants['ranker']},layout={variants['layout']}"
        assert body["model_version"]["ranking"] == ("4" if variants["ranker"] == "treatment" else "3")
    bad = dict(experiments)
    bad["experiments"] = [{"name": "x", "variants": [{"name": "a", "model": "nope", "traffic": 1.0}]}]
    refused = service.client.put("/admin/experiments", json=bad, headers=auth)
    assert refused.status_code == 422 and "cannot load model 'nope'" in refused.json()["error"]
    shares = {
        "experiments": [{"name": "x", "variants": [{"name": "a", "model": "champion", "traffic": 0.4}]}]
    }
    assert service.client.put("/admin/experiments", json=shares, headers=auth).status_code == 422
    assert set(load_experiments(service.state_dir / "experiments.json")) == {"ranker", "layout"}


def test_similar_items_come_from_the_item_embedding(service: Service) -> None:
    body = service.client.get("/items/i12/similar", params={"k": 3}).json()
    assert [item["item_id"] for item in body["items"]] == ["i10", "i11", "i13"]
    assert body["model_version"] == "7" and body["item_id"] == "i12"
    missing = service.client.get("/items/nope/similar")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown item 'nope'"
    assert service.client.get("/items/i1/similar", params={"k": 0}).status_code == 422


def test_debug_reports_stage_timings_and_feature_values(service: Service) -> None:
    body = service.client.post("/recommend", json={"user_id": "u1", "k": 2, "debug": True}).json()
    debug = body["debug"]
    timed = {"retrieval", "ranking", "user_features", "candidate_features", "rank", "rerank", "debug_details"}
    assert timed <= set(debug["timings_ms"])
    assert debug["user_features"]["user_n_events"] == 40
    top = body["items"][0]["item_id"]
    assert debug["item_features"][top]["item_genre_vector"] == one_hot(COMEDY)
    assert debug["ranker_model"] == "champion" and body["cached"] is False
    assert service.client.post("/recommend", json={"user_id": "u1", "k": 2}).json()["debug"] is None


def test_exploration_logs_propensities_with_impressions(tmp_path: Path) -> None:
    service = build(tmp_path, exploration=ExplorationConfig(policy="epsilon", epsilon=0.5, pool=10))
    with service.client:
        body = service.client.post("/recommend", json={"user_id": "u1", "k": 4}).json()
        shown = body["items"]
        assert all(0 < item["propensity"] <= 1 for item in shown)
        assert any(item["propensity"] < 1 for item in shown)
        impressions = {
            "events": [
                {
                    "event_id": f"imp-{item['position']}",
                    "user_id": "u1",
                    "item_id": item["item_id"],
                    "event_type": "impression",
                    "session_id": "s1",
                    "position": item["position"],
                    "request_id": body["request_id"],
                    "event_ts": "2026-03-01T20:00:00Z",
                }
                for item in shown
            ]
        }
        assert service.client.post("/events", content=json.dumps(impressions)).status_code == 200
    logged = EventLog(tmp_path / "events").read().sort_values("position")
    assert logged["propensity"].tolist() == pytest.approx([item["propensity"] for item in shown])


def test_ranking_many_requests_reads_features_once() -> None:
    reader = Reader()
    stage = RankingStage(AffinityRanker(), reader)
    requests = [
        ("u1", Candidates(["i1", "i11"], [1.0, 0.5], "7")),
        ("u1", Candidates(["i21"], [1.0], "7")),
        ("u1", Candidates([], [], "7")),
    ]
    reader.calls.clear()
    results = stage.rank_many(requests)
    assert reader.calls == [("ranker_v1", 3)]
    assert [r.item_ids for r in results if isinstance(r, Candidates)] == [["i1", "i11"], ["i21"], []]
    assert all(isinstance(r, Candidates) and r.details["batch_size"] == 3 for r in results)


class CalibratedAffinityRanker(AffinityRanker):
    """The affinity ranker with a Platt map, as a LightGBM ranker with calibration.json serves."""

    kind = "lightgbm"
    calibrated = True

    def probabilities(self, raw_scores: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(4.0 * np.asarray(raw_scores) - 3.0)))


def test_served_log_carries_calibrated_probabilities_of_ranked_answers_only(tmp_path: Path) -> None:
    from serving.served import ServedLog, ServedTail

    reader = Reader()
    no_rerank = RerankConfig(enabled=False)
    model = CalibratedAffinityRanker()
    recommender = Recommender(
        LocalRetrieval(RetrievalStage(GenreRetrieval(), reader)),
        LocalRanking(RankingStage(model, reader, no_rerank)),
        n_candidates=20,
        max_k=20,
        rerank=no_rerank,
    )
    api = create_api(recommender, max_k=20, served_log=ServedLog(tmp_path / "served"))
    with TestClient(api) as client:
        ranked = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
        stranger = client.post("/recommend", json={"user_id": "stranger", "k": 3}).json()
        reader.down = True
        failed = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
    assert "probabilities" not in ranked and all("probability" not in item for item in ranked["items"])
    rows = {row["request_id"]: row for row in ServedTail(tmp_path / "served").read_new()}
    logged = rows[ranked["request_id"]]
    assert logged["item_ids"] == [item["item_id"] for item in ranked["items"]]
    scores = np.array([item["score"] for item in ranked["items"]])  # the raw ranker scores, unchanged
    assert logged["probabilities"] == pytest.approx(model.probabilities(scores).tolist())
    assert logged["probabilities"] == sorted(logged["probabilities"], reverse=True)  # monotone in the score
    assert (
        stranger["fallback_reason"] == "unknown_user"
        and rows[stranger["request_id"]]["probabilities"] is None
    )
    assert failed["fallback"] and rows[failed["request_id"]]["probabilities"] is None
