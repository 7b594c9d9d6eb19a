"""The Ray Serve application: an HTTP ingress composing retrieval and a batched ranking deployment.

    HTTP -> Ingress (FastAPI; cache, sessions (pushed to and read from the online store), events,
                     experiments, no repeats, exploration, metrics)
              -> Retrieval (two-tower + FAISS, user features from Feast; in the ingress process when
                            serve.graph is "single" or "fused", its own deployment when "split")
              -> Ranking (LightGBM, then re-ranking: MMR, genre caps, freshness, session match, pins;
                          in a worker thread of the ingress process when serve.graph is "single", else
                          its own deployment with @serve.batch: the whole batch's candidates in one read)

Each replica resolves the `champion` aliases and loads its artefacts and Feast store once, in
`__init__`; a request only reads online features and runs the models. `POST /admin/reload` re-resolves
the aliases, loads and warms the new versions, and switches atomically.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
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
from serving.admin import admin_actions
from serving.api import create_api
from serving.cache import PredictionCache
from serving.champion_watch import ChampionPoller
from serving.events import EventLog
from serving.experiments import CHAMPION, ExperimentWatcher
from serving.http_ingress import ingress_environment
from serving.rankers import InProcessRanking, Rankers, RankRequest
from serving.recommender import IngressState, LocalRetrieval, Recommender
from serving.reranking import ItemVectors
from serving.roles import FeatureReader
from serving.schemas import request_model
from serving.served import SERVED_FOLDER, ServedLog, serve_recommendation
from serving.session import SessionStore, SharedSessions
from serving.shadow import ShadowLog, ShadowScorer
from serving.shown import ShownWindow
from serving.stages import RETRIEVAL_FEATURE_SERVICE, Candidates, RankingStage, RetrievalStage

logger = logging.getLogger(__name__)

APP_NAME = "recsys"
SHADOW_FOLDER = "shadow"
RETRIEVAL_MODEL = "recsys-two-tower"
RANKING_MODEL = "recsys-ranker"
# Thread pools sized for a shared machine: small batches gain nothing from more threads.
_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Ray Serve levers, unless the environment sets them: user code and the handle router on a replica's own
# event loop instead of a thread each, so a request crosses no thread boundary inside a replica or the
# proxy (docs/serving.md, "Ray Serve settings", for what they change here).
SERVE_LEVERS = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def serve_levers() -> dict[str, str]:
    """`SERVE_LEVERS`, each overridden by the environment's value when it has one."""
    return {name: os.environ.get(name, value) for name, value in SERVE_LEVERS.items()}


def replica_options(num_cpus: float) -> dict[str, Any]:
    """`ray_actor_options` of a replica: its CPU share and its environment (threads, Serve levers)."""
    return {"num_cpus": num_cpus, "runtime_env": {"env_vars": {**_THREADS, **serve_levers()}}}


def _reader(config: PipelineConfig) -> FeatureReader:
    from recsys.features.online_read import OnlineReader
    from recsys.features.store import build_store, online_features

    store = build_store(StateDir(config.state_dir), config.features)
    settings = config.serve
    if not settings.fast_feature_reads:
        return partial(online_features, store)
    tables = OnlineReader(
        store, cache_ttl_s=settings.item_cache_ttl_s, cache_max_entries=settings.item_cache_max_entries
    )
    if settings.packed_feature_reads == "off":
        return tables
    from recsys.features.packed_store import PackedReader

    local = ("item_id",) if settings.packed_feature_reads == "table" else ()
    return PackedReader(store, fallback=tables, local_keys=local)


def load_retrieval_stage(config: PipelineConfig) -> RetrievalStage:
    """The champion two-tower model with an online feature reader, warmed up."""
    from training.registry import load_champion
    from training.runtime import RetrievalModel

    artifact_dir, version = load_champion(StateDir(config.state_dir), RETRIEVAL_MODEL)
    model = RetrievalModel.load(artifact_dir, version)
    service = str(getattr(model, "feature_service", RETRIEVAL_FEATURE_SERVICE))
    stage = RetrievalStage(model, _reader(config), service, config.serve.session_weight)
    stage.warm_up()
    return stage


def load_shared_sessions(config: PipelineConfig) -> SharedSessions:
    """Sessions in the online store of `config` (the `session_recent` view), genres from item features."""
    from recsys.features.session_online import OnlineSessions, item_genre_lookup
    from recsys.features.store import build_store

    store = build_store(StateDir(config.state_dir), config.features)
    sessions = OnlineSessions(store, item_genre_lookup(_reader(config), RETRIEVAL_FEATURE_SERVICE))
    sessions.items("__warm_up__")  # fails here, once, when the store or the session view is missing
    return sessions


def load_shared_shown(config: PipelineConfig) -> ShownWindow | None:
    """The no-repeat window every ingress replica shares, in the online store's Redis; None with the
    SQLite store (one machine, usually one replica) or when re-ranking keeps no window."""
    rerank = config.serve.rerank
    if config.features.online_store != "redis" or not rerank.enabled or rerank.no_repeat_responses < 1:
        return None
    from feast.infra.online_stores.redis import RedisOnlineStore

    from recsys.features.store import build_store
    from serving.shown import SharedShown

    store = build_store(StateDir(config.state_dir), config.features)
    client = RedisOnlineStore()._get_client(store.config.online_store)
    shown = SharedShown(client, store.config.project, rerank.no_repeat_responses, config.serve.session_ttl_s)
    shown.items("__warm_up__")  # fails here, once, when Redis does not answer
    return shown


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


def load_ranking_stage(config: PipelineConfig, ref: str = CHAMPION) -> RankingStage:
    """The ranker `ref` names (alias or version) with an online feature reader and re-ranking, warmed up."""
    from training.registry import load_model
    from training.runtime import RankingModel

    artifact_dir, version = load_model(StateDir(config.state_dir), RANKING_MODEL, ref)
    rerank = config.serve.rerank
    vectors = load_item_vectors(config) if rerank.enabled and rerank.mmr_lambda < 1.0 else None
    model = RankingModel.load(artifact_dir, version)
    stage = RankingStage(model, _reader(config), rerank, vectors, config.serve.session_boost)
    stage.warm_up()
    return stage


def load_shadow_scorer(config: PipelineConfig) -> ShadowScorer:
    """The configured shadow ranker (`serve.shadow_ranker`), logging to `<state>/shadow/`."""
    if config.serve.shadow_ranker is None:
        raise MissingStateError("serve.shadow_ranker is not set")
    stage = load_ranking_stage(config, config.serve.shadow_ranker)
    return ShadowScorer(stage, ShadowLog(StateDir(config.state_dir).root / SHADOW_FOLDER))


def registered_champions(config: PipelineConfig) -> dict[str, str | None]:
    """The versions the `champion` aliases name now, per stage (None where there is no champion)."""
    from training.registry import champion_version

    state = StateDir(config.state_dir)
    found: dict[str, str | None] = {}
    for stage, name in (("retrieval", RETRIEVAL_MODEL), ("ranking", RANKING_MODEL)):
        entry = champion_version(state, name)
        found[stage] = str(entry.version) if entry is not None else None
    return found


def check_champions(config: PipelineConfig) -> None:
    """Fail early, in one readable line, when a model has no champion (before any replica starts)."""
    from training.registry import champion_version

    state = StateDir(config.state_dir)
    for name in (RETRIEVAL_MODEL, RANKING_MODEL):
        if champion_version(state, name) is None:
            raise MissingStateError(f"no champion for {name!r} in {state.mlflow}: run `recsys train` first")


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Retrieval:
    """Candidate generation; `load` builds the stage (the champion by default, small models in tests)."""

    def __init__(self, load: Callable[[], RetrievalStage]) -> None:
        self._load = load
        self._stage = load()
        self._previous: RetrievalStage | None = None
        exempt_loaded_objects()

    def candidates(
        self, user_id: str, n: int, k: int, session_item_ids: Sequence[str] = (), debug: bool = False
    ) -> Candidates:
        return self._stage.candidates(user_id, n, k, session_item_ids, debug)

    def popular(self, n: int) -> Candidates:
        return self._stage.popular(n)

    def similar(self, item_id: str, k: int) -> Candidates:
        return self._stage.similar(item_id, k)

    def version(self) -> str:
        return self._stage.version

    def ready(self) -> str:
        return self._stage.ready()

    def reload(self) -> str:
        """Load what the alias names now, warm it, then switch; the old stage stays for a switch back."""
        fresh = self._load()
        if fresh.version != self._stage.version:
            self._previous, self._stage = self._stage, fresh
        exempt_loaded_objects()
        return self._stage.version


def exempt_loaded_objects() -> None:
    """Keep what a replica has loaded out of the garbage collector's full passes.

    Models, indexes and item records are ~1.6M tracked objects in a replica serving 1M items, all as
    long-lived as the replica: a full collection walked them in ~0.4 s, stalling every request in
    flight. Called after each load; what an earlier call froze is unfrozen first, so whatever a reload
    dropped is still collected. Not in Serve's local testing mode, which runs in the caller's process.
    """
    if not _in_replica():
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _in_replica() -> bool:
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Ranking:
    """Candidate scoring with dynamic batching: concurrent requests share one feature read.

    `load` builds the champion's stage; `load_variant(ref)` a registered version or alias for experiments;
    `load_shadow` the shadow scorer that re-scores the champion's requests off the response path.
    """

    def __init__(
        self,
        load: Callable[[], RankingStage],
        settings: ServeConfig,
        load_variant: Callable[[str], RankingStage] | None = None,
        load_shadow: Callable[[], ShadowScorer] | None = None,
    ) -> None:
        self._rankers = Rankers(load, load_variant, load_shadow)
        # The decorator's sizes are placeholders; the configured ones apply from here on.
        batcher: Any = self._rank_batch
        batcher.set_max_batch_size(settings.ranking_max_batch_size)
        batcher.set_batch_wait_timeout_s(settings.ranking_batch_wait_timeout_s)
        exempt_loaded_objects()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _rank_batch(self, requests: list[RankRequest]) -> list[Candidates | Exception]:
        out = self._rankers.rank_batch(requests)
        self._rankers.submit_shadow(requests, out)  # after the answers, in a worker thread
        return out

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates:
        request = (user_id, candidates, model)
        if _in_replica():
            result = await self._rank_batch(request)
        else:  # Serve's local testing mode has no replica context, which @serve.batch needs
            result = (await self._rank_batch.__wrapped__(self, [request]))[0]  # type: ignore[attr-defined]
        if isinstance(result, Exception):
            raise result
        return result

    def version(self) -> str:
        return self._rankers.version

    def load(self, ref: str) -> str:
        return self._rankers.load(ref)

    def reload(self) -> str:
        version = self._rankers.reload()
        exempt_loaded_objects()
        return version


class _RetrievalHandle:
    """`RetrievalBackend` over a deployment handle."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def candidates(
        self, user_id: str, n: int, k: int, session_item_ids: Sequence[str] = (), debug: bool = False
    ) -> Candidates:
        result: Candidates = await self._handle.candidates.remote(user_id, n, k, session_item_ids, debug)
        return result

    async def popular(self, n: int) -> Candidates:
        result: Candidates = await self._handle.popular.remote(n)
        return result

    async def similar(self, item_id: str, k: int) -> Candidates:
        result: Candidates = await self._handle.similar.remote(item_id, k)
        return result

    async def version(self) -> str:
        return str(await self._handle.version.remote())

    async def ready(self) -> str:
        return str(await self._handle.ready.remote())

    async def reload(self) -> str:
        return str(await self._handle.reload.remote())


class _FusedRetrieval(LocalRetrieval):
    """Retrieval inside the ingress process: no handle hop; `reload` swaps the stage in place."""

    def __init__(self, load: Callable[[], RetrievalStage]) -> None:
        super().__init__(load())
        self._load = load
        self._previous: RetrievalStage | None = None

    async def reload(self) -> str:
        fresh = await asyncio.to_thread(self._load)
        if fresh.version != self._stage.version:
            self._previous, self._stage = self._stage, fresh
        return self._stage.version


class _RankingHandle:
    """`RankingBackend` over a deployment handle."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates:
        result: Candidates = await self._handle.rank.remote(user_id, candidates, model)
        return result

    async def version(self) -> str:
        return str(await self._handle.version.remote())

    async def load(self, ref: str) -> str:
        return str(await self._handle.load.remote(ref))

    async def reload(self) -> str:
        return str(await self._handle.reload.remote())


def ingress_state(settings: ServeConfig, state_dir: Path | None) -> IngressState:
    """Cache, sessions, event log and experiments of one ingress replica, as configured."""
    state = StateDir(state_dir) if state_dir is not None else None
    return IngressState(
        cache=PredictionCache(settings.cache_ttl_s, settings.cache_max_entries)
        if settings.cache_ttl_s > 0
        else None,
        sessions=SessionStore(settings.session_items, settings.session_ttl_s),
        event_log=EventLog(state.events) if state is not None else None,
        experiments=(
            ExperimentWatcher(state.experiments_file, settings.experiments_check_s)
            if state is not None
            else None
        ),
        exploration=settings.exploration,
        max_events_per_batch=settings.max_events_per_batch,
    )


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class Ingress:
    """The HTTP entry point: validates requests and composes retrieval and ranking.

    Retrieval is a deployment handle (graph "split") or a stage loader run in this process ("fused",
    "single"); ranking a deployment handle, or a `Rankers` loader run in this process ("single").
    """

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        retrieval: DeploymentHandle[Any] | Callable[[], RetrievalStage],
        ranking: DeploymentHandle[Any] | Callable[[], Rankers],
        settings: ServeConfig,
        state_dir: Path | None = None,
        champion_versions: Callable[[], dict[str, str | None]] | None = None,
        shared_sessions: Callable[[], SharedSessions] | None = None,
        shared_shown: Callable[[], ShownWindow | None] | None = None,
    ) -> None:
        self._settings = settings
        self._request_type = request_model(settings.max_k)
        self._served = ServedLog(StateDir(state_dir).root / SERVED_FOLDER) if state_dir is not None else None
        retrieval_backend: _RetrievalHandle | _FusedRetrieval = (
            _RetrievalHandle(retrieval)
            if isinstance(retrieval, DeploymentHandle)
            else _FusedRetrieval(retrieval)
        )
        self._retrieval = retrieval_backend
        self._ranking: _RankingHandle | InProcessRanking = (
            _RankingHandle(ranking)
            if isinstance(ranking, DeploymentHandle)
            else InProcessRanking(ranking(), settings.ranking_in_thread)
        )
        self._recommender = Recommender(
            retrieval_backend,
            self._ranking,
            n_candidates=settings.n_candidates,
            max_k=settings.max_k,
            ranking_timeout_s=settings.ranking_timeout_s,
            rerank=settings.rerank,
            state=ingress_state(settings, state_dir),
            max_in_flight=settings.max_in_flight,
        )
        if shared_sessions is not None:
            try:
                self._recommender.state.shared_sessions = await asyncio.to_thread(shared_sessions)
            except Exception:
                logger.exception("online sessions unavailable: this replica keeps sessions of its own")
        if shared_shown is not None:
            try:
                self._recommender.state.shared_shown = await asyncio.to_thread(shared_shown)
            except Exception:
                logger.exception("shared no-repeat window unavailable: this replica keeps its own")
        await self._recommender.warm_up()
        # Experiment models this replica has asked its ranking to load.
        self._variant_refs: set[str] = set()
        self._variants_task: asyncio.Task[None] | None = None
        watcher = self._recommender.state.experiments
        if watcher is not None:
            await self._load_new_variants(watcher)  # variants already running when this replica starts
            self._variants_task = asyncio.get_running_loop().create_task(
                self._follow_variants(watcher, settings.experiments_check_s)
            )
        # Follows the champion aliases (e.g. `recsys rollback`); the task is kept so it is not collected.
        self._champion_task: asyncio.Task[None] | None = None
        if champion_versions is not None and settings.champion_poll_s > 0:
            poller = ChampionPoller(
                champion_versions, self._serving_versions, self._reload, settings.champion_poll_s
            )
            self._champion_task = asyncio.get_running_loop().create_task(poller.run())
        exempt_loaded_objects()

    async def _load_variant(self, ref: str) -> str:
        version = await self._ranking.load(ref)
        self._variant_refs.add(ref)
        return version

    async def _load_new_variants(self, watcher: ExperimentWatcher) -> None:
        for ref in sorted(watcher.models() - self._variant_refs):
            try:
                await self._load_variant(ref)
            except Exception:
                logger.exception("could not load experiment model %r", ref)
                self._variant_refs.add(ref)  # said once; `POST /admin/reload` asks again

    async def _follow_variants(self, watcher: ExperimentWatcher, every_s: float) -> None:
        """Load each model the experiments file comes to name: `PUT /admin/experiments` loads it in the
        replica it reached before writing the file, and the other ingress replicas learn it from here
        (until then their requests for it are ranked by the champion)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._load_new_variants(watcher)
            except Exception:  # the file unreadable: the watcher keeps the last good experiments
                logger.exception("could not follow the experiments file")

    async def _serving_versions(self) -> dict[str, str | None]:
        retrieval, ranking = await asyncio.gather(self._retrieval.version(), self._ranking.version())
        return {"retrieval": retrieval, "ranking": ranking}

    async def _reload(self) -> dict[str, str]:
        retrieval, ranking = await asyncio.gather(self._retrieval.reload(), self._ranking.reload())
        await self._recommender.warm_up()  # the popularity fallback of the new retrieval model
        exempt_loaded_objects()
        return {"retrieval": retrieval, "ranking": ranking}

    def __serve_build_asgi_app__(self) -> FastAPI:
        watcher = self._recommender.state.experiments
        actions = admin_actions(watcher, self._reload, self._load_variant) if watcher is not None else None
        return create_api(
            self._recommender, self._settings.max_k, self._settings.admin_token, actions, self._served
        )

    async def recommend(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The `POST /recommend` logic for handle callers (and local testing mode), as JSON-ready data."""
        request = self._request_type.model_validate(payload)
        return (await serve_recommendation(self._recommender, request, self._served)).model_dump(mode="json")

    async def events(self, raw: bytes) -> dict[str, Any]:
        return (await self._recommender.events(raw)).model_dump(mode="json")

    async def healthz(self) -> dict[str, Any]:
        return (await self._recommender.health()).model_dump(mode="json")


def build_graph(
    retrieval_loader: Callable[[], RetrievalStage],
    ranking_loader: Callable[[], RankingStage],
    settings: ServeConfig,
    state_dir: Path | None = None,
    ranking_variant_loader: Callable[[str], RankingStage] | None = None,
    champion_versions: Callable[[], dict[str, str | None]] | None = None,
    shadow_loader: Callable[[], ShadowScorer] | None = None,
    shared_sessions: Callable[[], SharedSessions] | None = None,
    shared_shown: Callable[[], ShownWindow | None] | None = None,
) -> serve.Application:
    """The deployment graph over any stage loaders (tests pass small in-process models).

    Args:
        state_dir: Where the event log and the experiments file are; None keeps neither.
        ranking_variant_loader: Loads a ranker by registered version or alias, for experiments.
        champion_versions: The versions the champion aliases name now; the ingress polls it every
            `settings.champion_poll_s` and reloads when one moved. None: no polling.
        shadow_loader: Builds the shadow scorer of the ranking replicas; None: no shadow scoring.
        shared_sessions: Opens the sessions every ingress replica shares (online store); None: each
            replica keeps its own.
        shared_shown: Opens the no-repeat window every ingress replica shares; None (or a loader
            answering None): each replica keeps its own.
    """

    def ingress(num_cpus: float) -> Any:
        return Ingress.options(  # type: ignore[attr-defined]
            ray_actor_options=replica_options(num_cpus),
            max_ongoing_requests=settings.ingress_max_ongoing_requests,
            num_replicas=settings.ingress_replicas,
        )

    if settings.graph == "single":
        rankers = partial(Rankers, ranking_loader, ranking_variant_loader, shadow_loader)
        return ingress(0.5).bind(  # type: ignore[no-any-return]
            retrieval_loader, rankers, settings, state_dir, champion_versions, shared_sessions, shared_shown
        )
    ranking = Ranking.options(  # type: ignore[attr-defined]
        ray_actor_options=replica_options(0.5),
        max_ongoing_requests=settings.ranking_max_ongoing_requests,
    ).bind(ranking_loader, settings, ranking_variant_loader, shadow_loader)
    if settings.graph == "fused":
        return ingress(0.5).bind(  # type: ignore[no-any-return]
            retrieval_loader, ranking, settings, state_dir, champion_versions, shared_sessions, shared_shown
        )
    return ingress(0.1).bind(  # type: ignore[no-any-return]
        Retrieval.options(ray_actor_options=replica_options(0.5)).bind(retrieval_loader),  # type: ignore[attr-defined]
        ranking,
        settings,
        state_dir,
        champion_versions,
        shared_sessions,
        shared_shown,
    )


def build_app(config: PipelineConfig) -> serve.Application:
    """The application serving the registered champions of `config.state_dir`."""
    return build_graph(
        partial(load_retrieval_stage, config),
        partial(load_ranking_stage, config),
        config.serve,
        config.state_dir,
        partial(load_ranking_stage, config),
        partial(registered_champions, config),
        partial(load_shadow_scorer, config) if config.serve.shadow_ranker is not None else None,
        partial(load_shared_sessions, config),
        partial(load_shared_shown, config),
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
            # The HTTP proxy routes to the ingress like a handle does: a local cluster's processes
            # (proxy and controller too) inherit these from here; the environment may override them.
            for name, value in SERVE_LEVERS.items():
                os.environ.setdefault(name, value)
            # A cluster named by RAY_ADDRESS brings its own resources and its own ingress (its processes
            # read their environment, not ours); a local one gets two CPUs and `serve.http_ingress`.
            local = not os.environ.get("RAY_ADDRESS")
            if local:
                os.environ.update(ingress_environment(config.serve.http_ingress))
            num_cpus = 2 if local else None
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    with console.status("deploying retrieval, ranking and ingress"):
        serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{config.serve.host}:{config.serve.port}"
        health = wait_healthy(url)
    summary = ServeSummary(url, round(time.perf_counter() - started, 2), dict(health["model_version"]))
    routes = "POST /recommend, POST /events, GET /healthz, /readyz, /metrics"
    console.print(f"[green]serving[/green] {url} ({routes}), {summary.startup_s:.1f} s")
    if blocking:
        # SIGTERM (a service manager, a container runtime) stops it as Ctrl-C does: Serve shuts down,
        # HAProxy with it, instead of being left holding the port.
        if threading.current_thread() is threading.main_thread():  # only there can it be handled
            signal.signal(signal.SIGTERM, signal.default_int_handler)
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
