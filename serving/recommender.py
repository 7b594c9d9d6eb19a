"""The ingress logic: compose retrieval and ranking into one answer, and degrade instead of failing.

Fallback chain, in order: popularity for users the retrieval model does not know and whose session says
nothing (`unknown_user`); retrieval order when ranking fails or is late (`ranking_failed`,
`ranking_timeout`); the popularity list fetched at start-up when retrieval itself fails
(`retrieval_failed`), or at once when this replica already has `max_in_flight` requests in retrieval
and ranking (`overloaded`: load shedding, so that past capacity requests are still answered instead of
queueing behind work that would finish too late). A failed stage is reported as
`feature_store_unavailable` when its cause is the online store being down. A valid request always gets
an answer unless retrieval fails before a single popularity list was fetched.

Re-ranking (`serving.reranking`) runs in the ranking deployment, where the candidates' features are;
the ingress keeps what only it sees: the items each user was just shown (removed, with the blocklist and
the request's exclusions, from every list before it is ranked or returned, on fallback paths too), the
user's session (`serving.session`), the prediction cache (`serving.cache`), experiment assignments
(`serving.experiments`), exploration (`serving.exploration`) and the metrics (`serving.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from recsys.features.store import FeatureStoreUnavailable
from serving.cache import PredictionCache
from serving.events import EventLog, events_frame, parse_events
from serving.experiments import CHAMPION, Assignment, ExperimentWatcher, assign_all
from serving.exploration import ExplorationConfig, explore
from serving.metrics import ServingMetrics
from serving.reranking import RecentlyShown, RerankConfig
from serving.schemas import (
    EventsResponse,
    HealthResponse,
    ModelVersion,
    ReadyResponse,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RejectedEvent,
    SimilarItemsResponse,
)
from serving.session import ENGAGED_EVENT_TYPES, SessionStore, SharedSessions
from serving.shown import ShownWindow
from serving.stages import (
    DEADLINE_DETAIL,
    POSITIONS_DETAIL,
    Candidates,
    RankingStage,
    RetrievalStage,
    probabilities_of,
)

logger = logging.getLogger(__name__)

CONTROL = "control"
# The fallback reason when a stage failed because the online feature store is down.
FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
# The fallback reason of a request shed because the replica already holds `max_in_flight` requests.
OVERLOADED = "overloaded"
# Served lists whose propensities are kept for the impressions that refer to them (by request_id).
_PROPENSITY_REQUESTS = 50_000
# After a failed read or write of a shared store (session read or push, no-repeat window), this replica
# uses its own state for this long before trying again: a store that is down costs one timeout, not one
# per request.
SHARED_STORE_RETRY_S = 5.0


class ServiceUnavailableError(RuntimeError):
    """No stage could answer; the API turns this into a 503."""


def _fallback_reason(err: BaseException, otherwise: str) -> str:
    """`feature_store_unavailable` when the online store is down (seen through Ray's wrappers too), so
    on-call tells a store outage from a broken model; `otherwise` for any other failure."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, FeatureStoreUnavailable):
            return FEATURE_STORE_UNAVAILABLE
        seen = getattr(seen, "cause", None) or seen.__cause__
    return otherwise


class RetrievalBackend(Protocol):
    """The retrieval stage as the ingress sees it: in-process in tests, a deployment handle under Serve."""

    async def candidates(
        self, user_id: str, n: int, k: int, session_item_ids: Sequence[str] = (), debug: bool = False
    ) -> Candidates: ...

    async def popular(self, n: int) -> Candidates: ...

    async def version(self) -> str: ...


class RankingBackend(Protocol):
    """The ranking stage as the ingress sees it; `model` names a variant's ranker (None: the champion)."""

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates: ...

    async def version(self) -> str: ...


class LocalRetrieval:
    """A `RetrievalBackend` that calls a stage in this process."""

    def __init__(self, stage: RetrievalStage) -> None:
        self._stage = stage

    async def candidates(
        self, user_id: str, n: int, k: int, session_item_ids: Sequence[str] = (), debug: bool = False
    ) -> Candidates:
        return self._stage.candidates(user_id, n, k, session_item_ids, debug)

    async def popular(self, n: int) -> Candidates:
        return self._stage.popular(n)

    async def version(self) -> str:
        return self._stage.version

    async def ready(self) -> str:
        return self._stage.ready()

    async def similar(self, item_id: str, k: int) -> Candidates:
        return self._stage.similar(item_id, k)


class LocalRanking:
    """A `RankingBackend` that calls a stage in this process; `variants` are rankers by model ref."""

    def __init__(self, stage: RankingStage, variants: dict[str, RankingStage] | None = None) -> None:
        self._stage = stage
        self._variants = variants or {}

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates:
        stage = self._variants.get(model, self._stage) if model not in (None, CHAMPION) else self._stage
        return stage.rank(user_id, candidates)

    async def version(self) -> str:
        return self._stage.version


@dataclass
class IngressState:
    """What the ingress remembers between requests; every part is optional (None switches it off)."""

    cache: PredictionCache[RecommendResponse] | None = None
    # Sessions in the online store, shared by all replicas; `sessions` (this replica's own) answers
    # only when they cannot be read, and keeps the same items for that case.
    shared_sessions: SharedSessions | None = None
    sessions: SessionStore | None = None
    # The no-repeat window in the online store's Redis, shared by all replicas; this replica's own
    # window (kept alongside) answers only when it cannot be read.
    shared_shown: ShownWindow | None = None
    event_log: EventLog | None = None
    experiments: ExperimentWatcher | None = None
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    max_events_per_batch: int = 1000
    seed: int | None = None


class Recommender:
    """Answers recommendation requests from a retrieval and a ranking backend.

    Args:
        retrieval: Candidate generation.
        ranking: Candidate scoring.
        n_candidates: How many candidates retrieval hands to ranking (at least `k`).
        max_k: The largest `k` a request may ask for; the start-up popularity list has this length.
        ranking_timeout_s: How long to wait for ranking before answering in retrieval order.
        rerank: Its blocklist and no-repeat window are applied here; None applies neither.
        state: Cache, sessions, event log, experiments, exploration and metrics; the defaults keep
            none of them but the metrics.
        max_in_flight: Requests this replica takes into retrieval and ranking at once; past it a request
            gets the start-up popularity list (`overloaded`). 0: no limit.
    """

    def __init__(
        self,
        retrieval: RetrievalBackend,
        ranking: RankingBackend,
        n_candidates: int,
        max_k: int,
        ranking_timeout_s: float = 1.0,
        rerank: RerankConfig | None = None,
        state: IngressState | None = None,
        max_in_flight: int = 0,
    ) -> None:
        self._retrieval = retrieval
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._ranking = ranking
        self._n_candidates = n_candidates
        self._max_k = max_k
        self._ranking_timeout_s = ranking_timeout_s
        self._popular: Candidates | None = None
        self._blocklist = rerank.blocklist if rerank is not None else frozenset()
        self._recent = (
            RecentlyShown(rerank.no_repeat_responses, rerank.recent_users)
            if rerank is not None and rerank.enabled and rerank.no_repeat_responses > 0
            else None
        )
        self.state = state or IngressState()
        self.metrics = self.state.metrics
        self._rng = np.random.default_rng(self.state.seed)
        self._propensities: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._shared_retry_at = {"session_read": 0.0, "session_push": 0.0, "shown": 0.0}

    async def warm_up(self) -> None:
        """Fetch the last-resort popularity list; a failure here is logged, not fatal."""
        try:
            self._popular = await self._retrieval.popular(self._max_k)
        except Exception:
            logger.exception("could not fetch the popularity fallback list")

    def assignment(self, user_id: str) -> Assignment:
        experiments = self.state.experiments
        return assign_all(user_id, experiments.current()) if experiments else Assignment({}, CHAMPION)

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        """The top `request.k` items for the user, with the versions and fallback that produced them."""
        started = time.perf_counter()
        assignment = self.assignment(request.user_id)
        popular = self._popular
        if popular is not None and 0 < self._max_in_flight <= self._in_flight:
            response = self._shed(request, assignment, popular)
        else:
            response = await self._answer(request, assignment)
        if self._recent is not None and not response.cached:
            # A shed answer touches no store, this replica's window aside.
            shared = response.fallback_reason != OVERLOADED
            self._record_shown(request.user_id, [item.item_id for item in response.items], shared)
        self._remember_propensities(response)
        for name, variant in assignment.variants.items():
            self.metrics.experiment_assignments.labels(experiment=name, variant=variant).inc()
        self.metrics.stage_latency.labels(stage="request").observe(time.perf_counter() - started)
        return response

    def _shed(
        self, request: RecommendRequest, assignment: Assignment, popular: Candidates
    ) -> RecommendResponse:
        """The popularity list at once (`overloaded`): `max_in_flight` requests are already in.

        Past capacity, taking one more request in only lengthens every queue (its retrieval runs on this
        replica's event loop, its ranking waits behind the others') until answers come after their
        client gave up; this answer costs next to nothing and keeps the replica answering. It reads no
        store, so of the session only the request's own items are left out of it.
        """
        banned = self._banned(request, self._request_session(request), shared=False)
        build = _ResponseBuilder(uuid.uuid4().hex, request, assignment, self)
        return build(popular.without(banned), None, OVERLOADED)

    async def _answer(self, request: RecommendRequest, assignment: Assignment) -> RecommendResponse:
        """The cached answer, or retrieval and ranking counted among the requests in flight."""
        cache = self.state.cache if not request.debug else None
        # The session is part of the key: an event that changed it, whichever replica took it, makes
        # every replica's cached answer for the old session unreachable.
        session = self._session_items(request)
        context = (*request.context_key(), assignment.model, tuple(session))
        cached = cache.get(request.user_id, context) if cache is not None else None
        if cache is not None:
            counter = self.metrics.cache_hits if cached is not None else self.metrics.cache_misses
            counter.labels(cache="prediction").inc()
        if cached is not None:
            return cached.model_copy(update={"request_id": uuid.uuid4().hex, "cached": True})
        self._in_flight += 1
        try:
            response = await self._recommend(request, assignment, session)
        finally:
            self._in_flight -= 1
        if cache is not None and not response.fallback:
            cache.put(request.user_id, context, response)
        return response

    def _stored_session(self, user_id: str) -> list[str]:
        """The user's session items from the online store; this replica's own when it does not answer."""
        shared = self.state.shared_sessions
        if shared is not None and self._shared_ready("session_read"):
            started = time.perf_counter()
            try:
                items = shared.items(user_id)
            except Exception as err:
                logger.warning("online session read failed (%s); using this replica's sessions", err)
                self._shared_failed("session_read", err)
            else:
                self.metrics.stage_latency.labels(stage="session_read").observe(time.perf_counter() - started)
                return items
        return self.state.sessions.items(user_id) if self.state.sessions else []

    @staticmethod
    def _request_session(request: RecommendRequest) -> list[str]:
        """The session items the request itself names."""
        current = [request.current_item_id] if request.current_item_id is not None else []
        return [*request.session_item_ids, *current]

    def _session_items(self, request: RecommendRequest) -> list[str]:
        items = [*self._stored_session(request.user_id), *self._request_session(request)]
        return list(dict.fromkeys(items))  # one vote per item, order kept

    def _banned(self, request: RecommendRequest, session: list[str], shared: bool = True) -> frozenset[str]:
        """Items this answer must not hold: blocklisted, just shown (by any replica unless `shared` is
        False: then by this one), excluded, or in the session."""
        recent = self._shown(request.user_id, shared) if self._recent else frozenset()
        return self._blocklist | recent | frozenset(request.exclude_item_ids) | frozenset(session)

    def _shared_ready(self, stage: str) -> bool:
        """Whether the shared store may be tried for `stage`: not within a few seconds of its failure."""
        return time.monotonic() >= self._shared_retry_at[stage]

    def _shared_failed(self, stage: str, err: Exception) -> None:
        """Count a failure of the shared store at `stage`; this replica's own state answers for a while."""
        self.metrics.errors.labels(stage=stage, reason=type(err).__name__).inc()
        self._shared_retry_at[stage] = time.monotonic() + SHARED_STORE_RETRY_S

    def _shared_shown(self) -> ShownWindow | None:
        """The replicas' shared no-repeat window, unless it failed within the last few seconds."""
        shared = self.state.shared_shown
        return shared if shared is not None and self._shared_ready("shown") else None

    def _shown_failed(self, err: Exception) -> None:
        logger.warning("shared no-repeat window failed (%s); using this replica's own", err)
        self._shared_failed("shown", err)

    def _shown(self, user_id: str, shared_too: bool) -> frozenset[str]:
        """What the user's last answers showed: from every replica, or from this one's when the shared
        window does not answer (or is not to be read)."""
        assert self._recent is not None
        shared = self._shared_shown() if shared_too else None
        if shared is not None:
            try:
                return shared.items(user_id)
            except Exception as err:
                self._shown_failed(err)
        return self._recent.items(user_id)

    def _record_shown(self, user_id: str, item_ids: list[str], shared_too: bool) -> None:
        assert self._recent is not None
        self._recent.record(user_id, item_ids)
        shared = self._shared_shown() if shared_too else None
        if shared is not None:
            try:
                shared.record(user_id, item_ids)
            except Exception as err:
                self._shown_failed(err)

    async def _recommend(
        self, request: RecommendRequest, assignment: Assignment, session: list[str]
    ) -> RecommendResponse:
        request_id = uuid.uuid4().hex
        banned = self._banned(request, session)
        n = max(self._n_candidates, request.k)
        # A popularity answer is only k long: ask for enough that k remain once banned items are gone.
        k_fetch = min(request.k + len(banned), n)
        build = _ResponseBuilder(request_id, request, assignment, self)
        started = time.perf_counter()
        try:
            # Backends written before sessions existed take three arguments: pass more only when needed.
            extra: tuple[Any, ...] = (session, request.debug) if session or request.debug else ()
            found = await self._retrieval.candidates(request.user_id, n, k_fetch, *extra)
        except Exception as err:
            logger.exception("retrieval failed for request %s", request_id)
            self.metrics.errors.labels(stage="retrieval", reason=type(err).__name__).inc()
            if self._popular is None:
                raise ServiceUnavailableError("retrieval is unavailable and no fallback is loaded") from None
            return build(self._popular.without(banned), None, _fallback_reason(err, "retrieval_failed"))
        build.record(found, "retrieval", started)
        candidates = found.without(banned)
        if candidates.fallback_reason is not None:
            return build(candidates, None, candidates.fallback_reason)
        started = time.perf_counter()
        variant = (assignment.model,) if assignment.model != CHAMPION else ()
        queue = self.metrics.queue_depth.labels(deployment="ranking")
        queue.inc()
        try:
            # The request id travels with the candidates so shadow scoring can log against it; the
            # surface so a multi-task ranker mixes its heads for it; the deadline and the positions the
            # answer can show so ranking skips late work and re-ranks no further than the answer reaches.
            limits = {
                DEADLINE_DETAIL: time.monotonic() + self._ranking_timeout_s,
                POSITIONS_DETAIL: self._positions(request.k),
            }
            sent = candidates.with_details(request_id=request_id, surface=request.surface, **limits)
            ranked = await asyncio.wait_for(
                self._ranking.rank(request.user_id, sent, *variant), timeout=self._ranking_timeout_s
            )
        except TimeoutError:
            logger.warning("ranking timed out (%.2f s) for %s", self._ranking_timeout_s, request_id)
            self.metrics.errors.labels(stage="ranking", reason="timeout").inc()
            return build(candidates, None, "ranking_timeout")
        except Exception as err:
            logger.exception("ranking failed for request %s", request_id)
            self.metrics.errors.labels(stage="ranking", reason=type(err).__name__).inc()
            return build(candidates, None, _fallback_reason(err, "ranking_failed"))
        finally:
            queue.dec()
        build.record(ranked, "ranking", started)
        return build(ranked, candidates.model_version, None)

    def _positions(self, k: int) -> int:
        """How many leading positions of the ranked list the answer can show: exploration draws from
        its pool."""
        exploration = self.state.exploration
        return k if exploration.policy == "off" else max(k, exploration.pool)

    def _remember_propensities(self, response: RecommendResponse) -> None:
        if self.state.exploration.policy == "off":
            return
        self._propensities[response.request_id] = {i.item_id: i.propensity for i in response.items}
        while len(self._propensities) > _PROPENSITY_REQUESTS:
            self._propensities.popitem(last=False)

    async def events(self, raw: bytes) -> EventsResponse:
        """Validate, store durably, update sessions and drop cached answers of the users concerned.

        Raises:
            EventBatchError: the body is not a batch of events.
            ServiceUnavailableError: no event log is configured.
        """
        if self.state.event_log is None:
            raise ServiceUnavailableError("this service keeps no event log")
        batch = parse_events(raw, self.state.max_events_per_batch)
        self.metrics.events.labels(result="rejected").inc(len(batch.rejected))
        if batch.accepted:
            propensities = [
                self._propensities.get(e.request_id, {}).get(e.item_id) if e.request_id else None
                for e in batch.accepted
            ]
            frame = events_frame(batch.accepted, datetime.now(UTC), propensities)
            # fsync blocks for milliseconds: keep it off the event loop that serves recommendations.
            await asyncio.to_thread(self.state.event_log.append, frame)
            self.metrics.events.labels(result="accepted").inc(len(batch.accepted))
            # Pushed before cached answers are dropped, so no answer cached in between misses the events.
            await self._share_sessions(batch.accepted)
            self._apply_to_sessions(batch.accepted)
        return EventsResponse(
            accepted=len(batch.accepted),
            rejected=[RejectedEvent(index=r.index, error=r.error) for r in batch.rejected],
        )

    async def _share_sessions(self, events: Sequence[Any]) -> None:
        """Push the users' new session rows to the online store; a failure is logged, not raised (the
        events are in the log, and this replica's sessions still get them)."""
        shared = self.state.shared_sessions
        if shared is None or not self._shared_ready("session_push"):
            return
        started = time.perf_counter()
        try:
            await asyncio.to_thread(shared.record, events)
        except Exception as err:
            logger.exception("could not push session rows to the online store")
            self._shared_failed("session_push", err)
        else:
            self.metrics.stage_latency.labels(stage="session_push").observe(time.perf_counter() - started)

    def _apply_to_sessions(self, events: Sequence[Any]) -> None:
        by_user: dict[str, list[str]] = {}
        for event in sorted(events, key=lambda e: e.event_ts):
            by_user.setdefault(event.user_id, [])
            if event.event_type in ENGAGED_EVENT_TYPES:
                by_user[event.user_id].append(event.item_id)
        for user_id, items in by_user.items():
            if self.state.sessions is not None and items:
                self.state.sessions.record(user_id, items)
            if self.state.cache is not None:
                self.state.cache.invalidate_user(user_id)

    async def similar(self, item_id: str, k: int) -> SimilarItemsResponse:
        """The items nearest to `item_id` in the retrieval embedding; `UnknownItemError` when unknown."""
        similar = getattr(self._retrieval, "similar", None)
        if similar is None:
            raise ServiceUnavailableError("this retrieval backend has no item index")
        found: Candidates = await similar(item_id, k)
        items = [
            RecommendedItem(item_id=i, score=s, position=p)
            for p, (i, s) in enumerate(zip(found.item_ids, found.scores, strict=True), start=1)
        ]
        return SimilarItemsResponse(item_id=item_id, items=items, model_version=found.model_version)

    async def health(self) -> HealthResponse:
        """Both stages answer with their model versions; raises `ServiceUnavailableError` otherwise."""
        try:
            retrieval, ranking = await asyncio.gather(self._retrieval.version(), self._ranking.version())
        except Exception as err:
            raise ServiceUnavailableError(f"a stage is not answering: {type(err).__name__}") from err
        return HealthResponse(status="ok", model_version=ModelVersion(retrieval=retrieval, ranking=ranking))

    async def ready(self) -> ReadyResponse:
        """Models loaded and the online store answering a read; raises `ServiceUnavailableError` otherwise."""
        health = await self.health()
        checks = {"models": "ok", "online_store": "ok", "popularity_fallback": "ok"}
        probe = getattr(self._retrieval, "ready", None)
        if probe is not None:
            try:
                await probe()
            except Exception as err:
                raise ServiceUnavailableError(
                    f"online store not reachable: {type(err).__name__}: {str(err)[:200]}"
                ) from err
        if self._popular is None:
            raise ServiceUnavailableError("the popularity fallback list is not loaded")
        if self.state.experiments is not None and self.state.experiments.error:
            checks["experiments"] = f"keeping the previous file: {self.state.experiments.error[:200]}"
        return ReadyResponse(status="ready", model_version=health.model_version, checks=checks)


class _ResponseBuilder:
    """Turns the chosen list into a response: exploration, propensities, metrics and debug details."""

    def __init__(
        self, request_id: str, request: RecommendRequest, assignment: Assignment, owner: Recommender
    ) -> None:
        self.request_id = request_id
        self.request = request
        self.assignment = assignment
        self.owner = owner
        self.timings: dict[str, float] = {}
        self.debug: dict[str, Any] = {}

    def record(self, found: Candidates, stage: str, started: float) -> None:
        """Observe a stage's own timings, its missing-feature count and its batch size."""
        metrics = self.owner.metrics
        self.timings[stage] = round((time.perf_counter() - started) * 1000.0, 3)
        inner = dict(found.details.get("timings_ms", {}))
        metrics.observe_stages({stage: self.timings[stage], **inner})
        self.timings.update(inner)
        missing = int(found.details.get("missing_features", 0))
        if missing:
            metrics.missing_features.labels(stage=stage).inc(missing)
        if "batch_size" in found.details:
            metrics.batch_size.observe(found.details["batch_size"])
        if self.request.debug:
            for key in ("user_features", "item_features", "session_profile", "cold_start", "batch_size"):
                if key in found.details:
                    self.debug[key] = found.details[key]
            self.debug.setdefault("missing_features", {})[stage] = missing

    def __call__(
        self, chosen: Candidates, retrieval_version: str | None, fallback_reason: str | None
    ) -> RecommendResponse:
        """Build the response; when ranking answered, `chosen` carries the ranker's version."""
        owner = self.owner
        if fallback_reason is not None:
            owner.metrics.fallbacks.labels(reason=fallback_reason).inc()
        ids, scores, propensities = explore(
            chosen.item_ids, chosen.scores, self.request.k, owner.state.exploration, owner._rng
        )
        explored = sum(1 for item, ranked in zip(ids, chosen.item_ids, strict=False) if item != ranked)
        if explored:
            owner.metrics.exploration.inc(explored)
        items = [
            RecommendedItem(item_id=item_id, score=score, position=position, propensity=propensity)
            for position, (item_id, score, propensity) in enumerate(
                zip(ids, scores, propensities, strict=True), start=1
            )
        ]
        if retrieval_version is None:
            version = ModelVersion(retrieval=chosen.model_version, ranking=None)
        else:
            version = ModelVersion(retrieval=retrieval_version, ranking=chosen.model_version)
        debug = None
        if self.request.debug:
            debug = {"timings_ms": self.timings, "ranker_model": self.assignment.model, **self.debug}
        response = RecommendResponse(
            request_id=self.request_id,
            user_id=self.request.user_id,
            items=items,
            model_version=version,
            experiment_variant=self.assignment.label,
            experiments=self.assignment.variants,
            fallback=fallback_reason is not None,
            fallback_reason=fallback_reason,
            debug=debug,
        )
        if retrieval_version is not None:  # ranked: the ranker may have attached its probabilities
            response.set_probabilities(probabilities_of(chosen, ids))
        return response
