"""The rankers one process serves, apart from where that process sits in the graph.

`Rankers` holds the champion's ranking stage (and the one it replaced, kept warm for a switch back), the
experiment variants by model ref and the shadow scorer. The `Ranking` deployment holds one (graph shapes
"fused" and "split"); so does the ingress itself in the "single" shape, through `InProcessRanking`, which
runs ranking in a worker thread of the ingress process instead of behind a handle hop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from recsys.state import MissingStateError
from serving.shadow import ShadowScorer
from serving.stages import DEADLINE_DETAIL, Candidates, RankingStage

# One request to rank: user id, its candidates, and the experiment's model ref (None: the champion).
RankRequest = tuple[str, Candidates, str | None]


class Rankers:
    """Champion, previous champion, experiment variants and shadow scorer of one process.

    Args:
        load: Builds the champion's stage (called again by `reload`).
        load_variant: Builds the stage of a registered version or alias, for experiments.
        load_shadow: Builds the shadow scorer; None: no shadow scoring.
    """

    def __init__(
        self,
        load: Callable[[], RankingStage],
        load_variant: Callable[[str], RankingStage] | None = None,
        load_shadow: Callable[[], ShadowScorer] | None = None,
    ) -> None:
        self._load = load
        self._load_variant = load_variant
        self._stage = load()
        self._shadow = load_shadow() if load_shadow is not None else None
        self._previous: RankingStage | None = None
        self._variants: dict[str, RankingStage] = {}

    @property
    def version(self) -> str:
        return self._stage.version

    def rank_batch(self, requests: Sequence[RankRequest]) -> list[Candidates | Exception]:
        """Each request ranked by its model (one online read per model); failures in their places."""
        out: list[Candidates | Exception] = [ValueError("not ranked")] * len(requests)
        groups: dict[str | None, list[int]] = {}
        for j, (_, _, model) in enumerate(requests):
            groups.setdefault(model if model in self._variants else None, []).append(j)
        for model, rows in groups.items():
            stage = self._variants[model] if model is not None else self._stage
            try:
                ranked = stage.rank_many([(requests[j][0], requests[j][1]) for j in rows])
            except Exception as err:
                ranked = [err] * len(rows)
            for j, result in zip(rows, ranked, strict=True):
                out[j] = result
        return out

    def submit_shadow(
        self, requests: Sequence[RankRequest], results: Sequence[Candidates | Exception]
    ) -> None:
        """Hand the champion's answered requests to the shadow scorer (needs the caller's event loop)."""
        if self._shadow is None:
            return
        self._shadow.submit(
            [
                (user_id, candidates, result)
                for (user_id, candidates, model), result in zip(requests, results, strict=True)
                if isinstance(result, Candidates) and model not in self._variants
            ]
        )

    def load(self, ref: str) -> str:
        """Load (or re-load, when its alias moved) the ranker `ref` names; returns its version."""
        if self._load_variant is None:
            raise MissingStateError("this deployment cannot load model variants")
        stage = self._load_variant(ref)
        self._variants[ref] = stage
        return stage.version

    def reload(self) -> str:
        """Load what the champion alias names now, warm it, then switch; the old stage stays warm."""
        fresh = self._load()
        if fresh.version != self._stage.version:
            self._previous, self._stage = self._stage, fresh
        return self._stage.version


class InProcessRanking:
    """A `RankingBackend` over `Rankers` in this process.

    With `in_thread` (the default), ranking runs in one worker thread: the event loop keeps taking
    requests meanwhile, and a caller's deadline (`asyncio.wait_for`) still answers in retrieval order; a
    ranking not started by then is dropped from the thread's queue rather than computed for nobody.
    Without it, ranking runs on the event loop itself: no GIL hand-offs between the loop and the thread
    (with 1M items ~15-25% less CPU per request), but the deadline only stops rankings that have not
    started (one running holds the loop to its end), and past capacity every request waits for the loop
    (docs/serving.md, "The graph", measures both).
    """

    def __init__(self, rankers: Rankers, in_thread: bool = True) -> None:
        self._rankers = rankers
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranking") if in_thread else None

    async def rank(self, user_id: str, candidates: Candidates, model: str | None = None) -> Candidates:
        request = [(user_id, candidates, model)]
        if self._pool is None:
            # The caller's deadline cannot interrupt the loop while it ranks; a ranking that waited for
            # the loop past it is not started (as a late one is dropped from the thread's queue).
            deadline = candidates.details.get(DEADLINE_DETAIL)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the ranking deadline passed before ranking started")
            result = self._rankers.rank_batch(request)[0]
        else:
            loop = asyncio.get_running_loop()
            result = (await loop.run_in_executor(self._pool, self._rankers.rank_batch, request))[0]
        self._rankers.submit_shadow(request, [result])
        if isinstance(result, Exception):
            raise result
        return result

    async def version(self) -> str:
        return self._rankers.version

    async def load(self, ref: str) -> str:
        return await asyncio.to_thread(self._rankers.load, ref)

    async def reload(self) -> str:
        return await asyncio.to_thread(self._rankers.reload)
