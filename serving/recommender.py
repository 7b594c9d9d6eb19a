"""The ingress logic: compose retrieval and ranking into one answer, and degrade instead of failing.

Fallback chain, in order: popularity for users the retrieval model does not know (`unknown_user`);
retrieval order when ranking fails or is late (`ranking_failed`, `ranking_timeout`); the popularity list
fetched at start-up when retrieval itself fails (`retrieval_failed`). A valid request always gets an
answer unless retrieval fails before a single popularity list was fetched.

Re-ranking (`serving.reranking`) runs in the ranking deployment, where the candidates' features are;
the ingress keeps what only it sees, the items each user was just shown, and removes those (and the
blocklist) from every list before it is ranked or returned, on fallback paths too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Protocol

from serving.reranking import RecentlyShown, RerankConfig
from serving.schemas import (
    HealthResponse,
    ModelVersion,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
)
from serving.stages import Candidates, RankingStage, RetrievalStage

logger = logging.getLogger(__name__)

CONTROL = "control"


class ServiceUnavailableError(RuntimeError):
    """No stage could answer; the API turns this into a 503."""


class RetrievalBackend(Protocol):
    """The retrieval stage as the ingress sees it: in-process in tests, a deployment handle under Serve."""

    async def candidates(self, user_id: str, n: int, k: int) -> Candidates: ...

    async def popular(self, n: int) -> Candidates: ...

    async def version(self) -> str: ...


class RankingBackend(Protocol):
    """The ranking stage as the ingress sees it."""

    async def rank(self, user_id: str, candidates: Candidates) -> Candidates: ...

    async def version(self) -> str: ...


class LocalRetrieval:
    """A `RetrievalBackend` that calls a stage in this process."""

    def __init__(self, stage: RetrievalStage) -> None:
        self._stage = stage

    async def candidates(self, user_id: str, n: int, k: int) -> Candidates:
        return self._stage.candidates(user_id, n, k)

    async def popular(self, n: int) -> Candidates:
        return self._stage.popular(n)

    async def version(self) -> str:
        return self._stage.version


class LocalRanking:
    """A `RankingBackend` that calls a stage in this process."""

    def __init__(self, stage: RankingStage) -> None:
        self._stage = stage

    async def rank(self, user_id: str, candidates: Candidates) -> Candidates:
        return self._stage.rank(user_id, candidates)

    async def version(self) -> str:
        return self._stage.version


class Recommender:
    """Answers recommendation requests from a retrieval and a ranking backend.

    Args:
        retrieval: Candidate generation.
        ranking: Candidate scoring.
        n_candidates: How many candidates retrieval hands to ranking (at least `k`).
        max_k: The largest `k` a request may ask for; the start-up popularity list has this length.
        ranking_timeout_s: How long to wait for ranking before answering in retrieval order.
        rerank: Its blocklist and no-repeat window are applied here; None applies neither.
    """

    def __init__(
        self,
        retrieval: RetrievalBackend,
        ranking: RankingBackend,
        n_candidates: int,
        max_k: int,
        ranking_timeout_s: float = 1.0,
        rerank: RerankConfig | None = None,
    ) -> None:
        self._retrieval = retrieval
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

    async def warm_up(self) -> None:
        """Fetch the last-resort popularity list; a failure here is logged, not fatal."""
        try:
            self._popular = await self._retrieval.popular(self._max_k)
        except Exception:
            logger.exception("could not fetch the popularity fallback list")

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        """The top `request.k` items for the user, with the versions and fallback that produced them."""
        response = await self._recommend(request)
        if self._recent is not None:
            self._recent.record(request.user_id, [item.item_id for item in response.items])
        return response

    async def _recommend(self, request: RecommendRequest) -> RecommendResponse:
        request_id = uuid.uuid4().hex
        banned = self._blocklist | (self._recent.items(request.user_id) if self._recent else frozenset())
        n = max(self._n_candidates, request.k)
        # A popularity answer is only k long: ask for enough that k remain once banned items are gone.
        k_fetch = min(request.k + len(banned), n)
        try:
            candidates = (await self._retrieval.candidates(request.user_id, n, k_fetch)).without(banned)
        except Exception:
            logger.exception("retrieval failed for request %s", request_id)
            if self._popular is None:
                raise ServiceUnavailableError("retrieval is unavailable and no fallback is loaded") from None
            return _response(request_id, request, self._popular.without(banned), None, "retrieval_failed")
        if candidates.fallback_reason is not None:
            return _response(request_id, request, candidates, None, candidates.fallback_reason)
        try:
            ranked = await asyncio.wait_for(
                self._ranking.rank(request.user_id, candidates), timeout=self._ranking_timeout_s
            )
        except TimeoutError:
            logger.warning("ranking timed out (%.2f s) for %s", self._ranking_timeout_s, request_id)
            return _response(request_id, request, candidates, None, "ranking_timeout")
        except Exception:
            logger.exception("ranking failed for request %s", request_id)
            return _response(request_id, request, candidates, None, "ranking_failed")
        return _response(request_id, request, ranked, candidates.model_version, None)

    async def health(self) -> HealthResponse:
        """Both stages answer with their model versions; raises `ServiceUnavailableError` otherwise."""
        try:
            retrieval, ranking = await asyncio.gather(self._retrieval.version(), self._ranking.version())
        except Exception as err:
            raise ServiceUnavailableError(f"a stage is not answering: {type(err).__name__}") from err
        return HealthResponse(status="ok", model_version=ModelVersion(retrieval=retrieval, ranking=ranking))


def _response(
    request_id: str,
    request: RecommendRequest,
    chosen: Candidates,
    retrieval_version: str | None,
    fallback_reason: str | None,
) -> RecommendResponse:
    """Build the response; when ranking answered, `chosen` carries the ranker's version."""
    top = chosen.top(request.k)
    items = [
        RecommendedItem(item_id=item_id, score=score, position=position)
        for position, (item_id, score) in enumerate(zip(top.item_ids, top.scores, strict=True), start=1)
    ]
    if retrieval_version is None:
        version = ModelVersion(retrieval=chosen.model_version, ranking=None)
    else:
        version = ModelVersion(retrieval=retrieval_version, ranking=chosen.model_version)
    return RecommendResponse(
        request_id=request_id,
        user_id=request.user_id,
        items=items,
        model_version=version,
        experiment_variant=CONTROL,
        fallback=fallback_reason is not None,
        fallback_reason=fallback_reason,
    )
