"""The Serve deployment graph in Serve's local testing mode: real deployments and handles, in-process."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from test_serving_api import BrokenRanker, stages

from recsys.config import PipelineConfig, ServeConfig
from recsys.state import MissingStateError, StateDir
from serving.stages import RankingStage, RetrievalStage


def retrieval_stage() -> RetrievalStage:
    return stages()[0]


def ranking_stage() -> RankingStage:
    return stages()[1]


def broken_ranking_stage() -> RankingStage:
    return stages(BrokenRanker())[1]


@pytest.fixture(scope="module")
def serve_module() -> Any:
    """Ray Serve, imported only by the tests that use it; local testing mode starts no cluster."""
    from ray import serve

    return serve


@pytest.mark.parametrize("shape", ["single", "fused", "split"])
def test_graph_composes_retrieval_and_ranking(
    serve_module: Any, shape: Literal["single", "fused", "split"], state: StateDir
) -> None:
    import json

    from serving.app import build_graph
    from serving.events import EventLog

    settings = ServeConfig(n_candidates=10, max_k=20, graph=shape)
    app = build_graph(retrieval_stage, ranking_stage, settings, state.root)
    handle = serve_module.run(app, _local_testing_mode=True)
    event = {"event_id": "e", "user_id": "u1", "item_id": "i4", "event_type": "click", "session_id": "s"}
    raw = json.dumps({"events": [{**event, "event_ts": "2026-01-01T00:00:00Z"}]}).encode()
    assert handle.events.remote(raw).result() == {"accepted": 1, "rejected": []}
    assert EventLog(state.events).read()["item_id"].tolist() == ["i4"]
    body = handle.recommend.remote({"user_id": "u1", "k": 3}).result()
    assert [item["item_id"] for item in body["items"]] == ["i11", "i10", "i9"]
    assert body["model_version"] == {"retrieval": "7", "ranking": "3"} and body["fallback"] is False
    unknown = handle.recommend.remote({"user_id": "stranger", "k": 2}).result()
    assert [item["item_id"] for item in unknown["items"]] == ["i29", "i28"]
    assert unknown["fallback_reason"] == "unknown_user"
    assert handle.healthz.remote().result()["status"] == "ok"


def test_graph_falls_back_to_retrieval_order_when_ranking_fails(serve_module: Any) -> None:
    from serving.app import build_graph

    settings = ServeConfig(n_candidates=10, max_k=20)
    app = build_graph(retrieval_stage, broken_ranking_stage, settings)
    handle = serve_module.run(app, _local_testing_mode=True)
    body = handle.recommend.remote({"user_id": "u1", "k": 2}).result()
    assert [item["item_id"] for item in body["items"]] == ["i1", "i3"]
    assert body["fallback_reason"] == "ranking_failed"


def test_serving_without_champions_fails_in_one_readable_line(state: StateDir) -> None:
    from serving.app import app_from_env, check_champions

    with pytest.raises(MissingStateError, match=r"no champion for 'recsys-two-tower'.*run `recsys train`"):
        check_champions(PipelineConfig(state_dir=state.root))
    with pytest.raises(MissingStateError, match="no champion"):
        app_from_env({"state_dir": str(state.root)})


def reranking_stage() -> RankingStage:
    from test_serving_api import CountRanker, genre_features

    from serving.reranking import RerankConfig

    config = RerankConfig(mmr_lambda=1.0, max_per_category=2, cap_window=4, freshness_weight=0.0)
    return RankingStage(CountRanker(), genre_features(), config)


def test_graph_reranks_after_ranking_and_skips_recent_items(serve_module: Any) -> None:
    from serving.app import build_graph

    # The default re-rank config (no repeats of 3 answers), without the cache that would repeat an answer.
    settings = ServeConfig(n_candidates=10, max_k=20, cache_ttl_s=0)
    handle = serve_module.run(
        build_graph(retrieval_stage, reranking_stage, settings), _local_testing_mode=True
    )
    first = handle.recommend.remote({"user_id": "u1", "k": 3}).result()
    assert [item["item_id"] for item in first["items"]] == ["i11", "i10", "i7"]  # genre 0 capped at two
    second = handle.recommend.remote({"user_id": "u1", "k": 3}).result()
    assert [item["item_id"] for item in second["items"]] == ["i9", "i8", "i6"]


@pytest.mark.parametrize("shape", ["single", "fused", "split"])
def test_every_replica_gets_one_thread_and_the_serve_levers(
    shape: Literal["single", "fused", "split"], monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.app import SERVE_LEVERS, build_graph

    monkeypatch.delenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", raising=False)
    monkeypatch.setenv("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "1")  # the environment wins
    app = build_graph(retrieval_stage, ranking_stage, ServeConfig(graph=shape))
    deployments = {}
    pending = [app._bound_deployment]
    while pending:  # the ingress's arguments hold the applications of the deployments it calls
        deployment = pending.pop()
        deployments[deployment.name] = deployment
        pending += [a._bound_deployment for a in deployment.init_args if hasattr(a, "_bound_deployment")]
    expected = {"single": {"Ingress"}, "fused": {"Ingress", "Ranking"}}.get(
        shape, {"Ingress", "Ranking", "Retrieval"}
    )
    assert set(deployments) == expected
    for deployment in deployments.values():
        options = deployment.ray_actor_options
        assert options is not None
        env = options["runtime_env"]["env_vars"]
        assert env["OMP_NUM_THREADS"] == "1"
        assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
        assert env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"
    assert set(SERVE_LEVERS) == {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
    }


def test_a_replica_exempts_what_it_loaded_from_collection_and_still_collects_what_it_drops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc
    import weakref

    from serving import app

    class Loaded:
        """Stands for a model: a reference cycle, freed only by the collector."""

        def __init__(self) -> None:
            self.me = self

    app.exempt_loaded_objects()  # the tests' own process (no replica): nothing frozen
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(app, "_in_replica", lambda: True)
    try:
        model = Loaded()
        gone = weakref.ref(model)
        app.exempt_loaded_objects()
        assert gc.get_freeze_count() > 0
        del model  # a reload drops the old model: frozen, only the next call's unfreeze lets it go
        gc.collect()
        assert gone() is not None
        app.exempt_loaded_objects()
        assert gone() is None
    finally:
        gc.unfreeze()


def test_every_ingress_replica_loads_the_model_an_experiments_file_comes_to_name(
    serve_module: Any, state: StateDir
) -> None:
    """`PUT /admin/experiments` loads the model only in the replica it reached; another replica (here the
    only one, which never got the call) loads it from the file."""
    import time

    from test_serving_rankers import VersionedRanker

    from evaluation.experiments.assignment import Experiment, Variant, save_experiments
    from serving.app import build_graph
    from serving.reranking import RerankConfig

    reader = stages()[2]
    variants = {"4": RankingStage(VersionedRanker("4", reverse=True), reader)}
    # No cache and no no-repeat window: the polling requests below must not change the answer.
    settings = ServeConfig(
        n_candidates=10,
        max_k=20,
        cache_ttl_s=0,
        experiments_check_s=0.05,
        rerank=RerankConfig(no_repeat_responses=0),
    )
    app = build_graph(retrieval_stage, ranking_stage, settings, state.root, variants.__getitem__)
    handle = serve_module.run(app, _local_testing_mode=True)
    before = handle.recommend.remote({"user_id": "u1", "k": 3}).result()
    assert before["model_version"]["ranking"] == "3"
    only_b = Experiment(name="ranker", variants=(Variant(name="b", model="4", traffic=1.0),))
    save_experiments(state.experiments_file, {"ranker": only_b})
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        after = handle.recommend.remote({"user_id": "u1", "k": 3}).result()
        if after["model_version"]["ranking"] == "4":
            break
        time.sleep(0.05)
    assert after["model_version"]["ranking"] == "4"
    assert [item["item_id"] for item in after["items"]] == ["i1", "i3", "i4"]  # the reversed ranker
