"""Shadow scoring: a challenger ranker scores the champion's candidates, logged for offline comparison.

The challenger never changes an answer. The ranking replica hands it a batch's candidates only after the
champion's answers are computed and returned, and its scoring runs in a worker thread, so a request does
not wait for it (it shares the replica's CPU, which a busy machine will notice in throughput, not in the
answer's latency). One row per (request, candidate) goes to ``<state>/shadow/date=YYYY-MM-DD.<writer>.jsonl``
(a file per day and writing process):

    request_id, user_id, item_id, champion_version, champion_score, champion_position,
    challenger_version, challenger_score, logged_at
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.stages import Candidates, RankingStage

logger = logging.getLogger(__name__)

SHADOW_COLUMNS = (
    "request_id",
    "user_id",
    "item_id",
    "champion_version",
    "champion_score",
    "champion_position",
    "challenger_version",
    "challenger_score",
    "logged_at",
)


def shadow_records(
    request_id: str,
    user_id: str,
    candidates: Candidates,
    ranked: Candidates,
    challenger_scores: np.ndarray,
    challenger_version: str,
    logged_at: datetime,
) -> list[dict[str, Any]]:
    """One row per candidate: the champion's score and position (after re-ranking) beside the challenger's.

    >>> c = Candidates(["a", "b"], [0.9, 0.8], "7")
    >>> ranked = Candidates(["b", "a"], [2.0, 1.0], "3")
    >>> when = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rows = shadow_records("r", "u", c, ranked, np.array([0.5, 0.1]), "4", when)
    >>> [(r["item_id"], r["champion_score"], r["champion_position"], r["challenger_score"]) for r in rows]
    [('a', 1.0, 2, 0.5), ('b', 2.0, 1, 0.1)]
    """
    if len(challenger_scores) != len(candidates.item_ids):
        raise ValueError(
            f"{len(challenger_scores)} challenger scores for {len(candidates.item_ids)} candidates"
        )
    placed = {
        item: (score, position)
        for position, (item, score) in enumerate(zip(ranked.item_ids, ranked.scores, strict=True), start=1)
    }
    stamp = logged_at.isoformat()
    rows = []
    for item, challenger in zip(candidates.item_ids, challenger_scores.tolist(), strict=True):
        champion, position = placed.get(item, (None, None))
        rows.append(
            {
                "request_id": request_id,
                "user_id": user_id,
                "item_id": item,
                "champion_version": ranked.model_version,
                "champion_score": champion,
                "champion_position": position,
                "challenger_version": challenger_version,
                "challenger_score": float(challenger),
                "logged_at": stamp,
            }
        )
    return rows


class ShadowLog:
    """Append-only JSON Lines files under `folder`, one per UTC day and writing process.

    A file per process: ingress replicas of the "single" graph each score shadows, and appends of two
    processes to one file may interleave inside a line once a batch outgrows one write.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writer = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()

    def append(self, rows: Sequence[dict[str, Any]], now: datetime | None = None) -> None:
        if not rows:
            return
        day = (now or datetime.now(UTC)).date().isoformat()
        text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with (self.folder / f"date={day}.{self._writer}.jsonl").open("a", encoding="utf-8") as out:
                out.write(text)

    def read(self) -> pd.DataFrame:
        """Every logged row (all days), in the order written per day."""
        files = sorted(self.folder.glob("date=*.jsonl")) if self.folder.exists() else []
        frames = [pd.read_json(path, lines=True, dtype=False) for path in files if path.stat().st_size]
        if not frames:
            return pd.DataFrame(columns=list(SHADOW_COLUMNS))
        return pd.concat(frames, ignore_index=True)[list(SHADOW_COLUMNS)]


class ShadowScorer:
    """Scores champion-ranked requests with the challenger, in a worker thread, and logs the comparison.

    Args:
        stage: The challenger's ranking stage (its own model; the replica's feature reader).
        log: Where the rows go.
    """

    def __init__(self, stage: RankingStage, log: ShadowLog) -> None:
        self.stage = stage
        self.log = log
        self._tasks: set[asyncio.Task[int]] = set()

    @property
    def version(self) -> str:
        return self.stage.version

    def score(self, requests: Sequence[tuple[str, Candidates, Candidates]]) -> int:
        """Score `(user_id, candidates, champion's answer)` triples and log them; the rows written.

        Requests without a `request_id` in their candidates' details, or with no candidates, are skipped.
        """
        kept = [r for r in requests if r[1].item_ids and r[1].details.get("request_id")]
        if not kept:
            return 0
        scored = self.stage.score_many([(user_id, cands) for user_id, cands, _ in kept])
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for (user_id, cands, ranked), scores in zip(kept, scored, strict=True):
            if isinstance(scores, Exception):
                logger.warning("shadow ranker %s failed: %s", self.version, scores)
                continue
            request_id = str(cands.details["request_id"])
            rows.extend(shadow_records(request_id, user_id, cands, ranked, scores, self.version, now))
        self.log.append(rows, now)
        return len(rows)

    def submit(self, requests: Sequence[tuple[str, Candidates, Candidates]]) -> asyncio.Task[int] | None:
        """Score and log in a worker thread, after the caller has returned its answers; None when idle."""
        if not requests:
            return None
        task = asyncio.get_running_loop().create_task(self._run(list(requests)))
        self._tasks.add(task)  # kept until done, so it is not collected mid-flight
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, requests: list[tuple[str, Candidates, Candidates]]) -> int:
        await asyncio.sleep(0)  # let the batch's answers go out first
        try:
            return await asyncio.to_thread(self.score, requests)
        except Exception:
            logger.exception("shadow scoring failed")
            return 0

    async def drain(self) -> None:
        """Wait for the scoring already submitted (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
