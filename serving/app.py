"""The Ray Serve application: an HTTP ingress composing a retrieval and a ranking deployment.

    HTTP -> Ingress (FastAPI; no repeats of recently shown items, blocklist)
              -> Retrieval (two-tower + FAISS, user features from Feast)
              -> Ranking (LightGBM, candidate features in one batched Feast read, then re-ranking:
                          MMR over the two-tower item embeddings, genre caps, freshness, pins)

Each replica resolves the `champion` aliases and loads its artefacts and Feast store once, in
`__init__`; a request only reads online features and runs the models.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from rich.console import Console

from recsys.config import REPO_ROOT, PipelineConfig, ServeConfig, load_config
from recsys.state import MissingStateError, StateDir
from serving.api import create_api
from serving.recommender import Recommender
from serving.reranking import ItemVectors
from serving.roles import FeatureReader
from serving.schemas import request_model
from serving.stages import RETRIEVAL_FEATURE_SERVICE, Candidates, RankingStage, RetrievalStage

logger = logging.getLogger(__name__)

APP_NAME = "recsys"
RETRIEVAL_MODEL = "recsys-two-tower"
RANKING_MODEL = "recsys-ranker"
# Thread pools sized for a shared machine: small batches gain nothing from more threads.
_SINGLE_THREAD = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}


def _reader(config: PipelineConfig) -> FeatureReader:
    from recsys.features.store import build_store, online_features

    store = build_store(StateDir(config.state_dir), config.features)
    return partial(online_features, store)


def load_retrieval_stage(config: PipelineConfig) -> RetrievalStage:
    """The champion two-tower model with an online feature reader, warmed up."""
    from training.registry import load_champion
    from training.runtime import RetrievalModel

    artifact_dir, version = load_champion(StateDir(config.state_dir), RETRIEVAL_MODEL)
    model = RetrievalModel.load(artifact_dir, version)
    service = str(getattr(model, "feature_service", RETRIEVAL_FEATURE_SERVICE))
    stage = RetrievalStage(model, _reader(config), service)
    stage.warm_up()
    return stage


def load_item_vectors(config: PipelineConfig) -> ItemVectors:
    """The retrieval champion's item embeddings, for MMR similarity in the ranking replica.

    Read straight from the artefact files (catalogue ids and the embedding matrix) so the ranking replica
    does not load the two-tower model or its FAISS index.
    """
    import json

    import numpy as np

    from training.registry import load_champion

    artifact_dir, _ = load_champion(StateDir(config.state_dir), RETRIEVAL_MODEL)
    catalog = json.loads((Path(artifact_dir) / "catalog_item_ids.json").read_text())
    return ItemVectors([str(i) for i in catalog], np.load(Path(artifact_dir) / "item_embeddings.npy"))


def load_ranking_stage(config: PipelineConfig) -> RankingStage:
    """The champion ranker with an online feature reader and re-ranking, warmed up."""
    from training.registry import load_champion
    from training.runtime import RankingModel

    artifact_dir, version = load_champion(StateDir(config.state_dir), RANKING_MODEL)
    rerank = config.serve.rerank
    vectors = load_item_vectors(config) if rerank.enabled and rerank.mmr_lambda < 1.0 else None
    stage = RankingStage(RankingModel.load(artifact_dir, version), _reader(config), rerank, vectors)
    stage.warm_up()
    return stage


def check_champions(config: PipelineConfig) -> None:
    """Fail early, in one readable line, when a model has no champion (before any replica starts)."""
    from training.registry import champion_version

    state = StateDir(config.state_dir)
    for name in (RETRIEVAL_MODEL, RANKING_MODEL):
        if champion_version(state, name) is None:
            raise MissingStateError(f"no champion for {name!r} in {state.mlflow}: run `recsys train` first")


@serve.deployment(ray_actor_options={"num_cpus": 0.5, "runtime_env": _SINGLE_THREAD})
class Retrieval:
    """Candidate generation; `load` builds the stage (the champion by default, small models in tests)."""

    def __init__(self, load: Callable[[], RetrievalStage]) -> None:
        self._stage = load()

    def candidates(self, user_id: str, n: int, k: int) -> Candidates:
        return self._stage.candidates(user_id, n, k)

    def popular(self, n: int) -> Candidates:
        return self._stage.popular(n)

    def version(self) -> str:
        return self._stage.version


@serve.deployment(ray_actor_options={"num_cpus": 0.5, "runtime_env": _SINGLE_THREAD})
class Ranking:
    """Candidate scoring; `load` builds the stage."""

    def __init__(self, load: Callable[[], RankingStage]) -> None:
        self._stage = load()

    def rank(self, user_id: str, candidates: Candidates) -> Candidates:
        return self._stage.rank(user_id, candidates)

    def version(self) -> str:
        return self._stage.version


class _RetrievalHandle:
    """`RetrievalBackend` over a deployment handle."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def candidates(self, user_id: str, n: int, k: int) -> Candidates:
        result: Candidates = await self._handle.candidates.remote(user_id, n, k)
        return result

    async def popular(self, n: int) -> Candidates:
        result: Candidates = await self._handle.popular.remote(n)
        return result

    async def version(self) -> str:
        return str(await self._handle.version.remote())


class _RankingHandle:
    """`RankingBackend` over a deployment handle."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def rank(self, user_id: str, candidates: Candidates) -> Candidates:
        result: Candidates = await self._handle.rank.remote(user_id, candidates)
        return result

    async def version(self) -> str:
        return str(await self._handle.version.remote())


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class Ingress:
    """The HTTP entry point: validates requests and composes retrieval and ranking through handles."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        retrieval: DeploymentHandle[Any],
        ranking: DeploymentHandle[Any],
        settings: ServeConfig,
    ) -> None:
        self._max_k = settings.max_k
        self._request_type = request_model(settings.max_k)
        self._recommender = Recommender(
            _RetrievalHandle(retrieval),
            _RankingHandle(ranking),
            n_candidates=settings.n_candidates,
            max_k=settings.max_k,
            ranking_timeout_s=settings.ranking_timeout_s,
            rerank=settings.rerank,
        )
        await self._recommender.warm_up()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self._recommender, self._max_k)

    async def recommend(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The `POST /recommend` logic for handle callers (and local testing mode), as JSON-ready data."""
        request = self._request_type.model_validate(payload)
        return (await self._recommender.recommend(request)).model_dump(mode="json")

    async def healthz(self) -> dict[str, Any]:
        return (await self._recommender.health()).model_dump(mode="json")


def build_graph(
    retrieval_loader: Callable[[], RetrievalStage],
    ranking_loader: Callable[[], RankingStage],
    settings: ServeConfig,
) -> serve.Application:
    """The deployment graph over any stage loaders (tests pass small in-process models)."""
    return Ingress.bind(  # type: ignore[attr-defined,no-any-return]
        Retrieval.bind(retrieval_loader),  # type: ignore[attr-defined]
        Ranking.bind(ranking_loader),  # type: ignore[attr-defined]
        settings,
    )


def build_app(config: PipelineConfig) -> serve.Application:
    """The application serving the registered champions of `config.state_dir`."""
    return build_graph(
        partial(load_retrieval_stage, config),
        partial(load_ranking_stage, config),
        config.serve,
    )


def app_from_env(args: dict[str, str]) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` (see `serving/serve_config.yaml`).

    Args:
        args: Optional `config` (a YAML config path) and `state_dir`; the environment variables
            `RECSYS_CONFIG` and `RECSYS_STATE_DIR` are used when an argument is absent.
    """
    config_path = args.get("config") or os.environ.get("RECSYS_CONFIG")
    path = Path(config_path) if config_path else None
    if path is not None and not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path  # relative to the project when not found from the working directory
    overrides = [f"state_dir={state_dir}"] if (state_dir := args.get("state_dir")) else []
    config = load_config(path, overrides)
    check_champions(config)
    return build_app(config)


@dataclass(frozen=True)
class ServeSummary:
    """What `run_serve` started."""

    url: str
    startup_s: float
    model_version: dict[str, str | None]


def wait_healthy(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll `GET /healthz` until it answers 200; returns its body."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/healthz", timeout=5.0)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as err:
            last = str(err)
        time.sleep(0.2)
    raise TimeoutError(f"{url}/healthz not healthy after {timeout_s:.0f} s ({last})")


def run_serve(config: PipelineConfig, blocking: bool = True) -> ServeSummary:
    """Start Ray and Serve on `config.serve.host:port` and deploy the champions.

    Args:
        config: Pipeline configuration; models come from `config.state_dir`.
        blocking: Serve until interrupted (then shut Serve down); when False, return once `/healthz`
            answers, leaving the application running (stop it with `stop_serve`).
    """
    import ray

    console = Console(stderr=True)
    started = time.perf_counter()
    with console.status("checking the registered champions"):
        check_champions(config)
    with console.status("starting Ray and Serve"):
        if not ray.is_initialized():
            # A cluster named by RAY_ADDRESS brings its own resources; a local one gets two CPUs.
            num_cpus = None if os.environ.get("RAY_ADDRESS") else 2
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    with console.status("deploying retrieval, ranking and ingress"):
        serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{config.serve.host}:{config.serve.port}"
        health = wait_healthy(url)
    summary = ServeSummary(url, round(time.perf_counter() - started, 2), dict(health["model_version"]))
    console.print(f"[green]serving[/green] {url} (POST /recommend, GET /healthz), {summary.startup_s:.1f} s")
    if blocking:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            stop_serve()
    return summary


def stop_serve() -> None:
    """Shut Serve down (the Ray instance stays up for its owner)."""
    serve.shutdown()  # type: ignore[no-untyped-call]
