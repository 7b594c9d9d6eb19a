"""The served-response log, and the per-variant bookkeeping of every `POST /recommend` answer.

Events carry the `request_id` of the answer they react to but not its experiment variants; this log
holds them, one JSON line per answer (cached answers included, each under its own request id):

    request_id, user_id, served_at (ISO 8601, UTC), experiments (experiment -> variant), item_ids,
    probabilities, fallback_reason, cached

`probabilities` is the ranker's calibrated P(engaged) of each item, aligned with `item_ids`, or null when
no calibrated ranker ordered the answer (a fallback, a ranker without calibration); calibration
monitoring (`monitoring.calibration`) joins it to the clicks. Lines written before it existed lack it.

so the event log joins to what was served by `request_id` (the live canary counts impressions and clicks
per variant this way). Each ingress process appends to a file of its own,
`<state>/served/date=YYYY-MM-DD/<pid>-<random>.jsonl`, so replicas never interleave lines. A line is
written (not fsync'd) as the answer goes out: a crash may lose the last lines, which costs an observation
a few impressions, not correctness. A reader takes complete lines only (`ServedTail`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from serving.recommender import FEATURE_STORE_UNAVAILABLE, Recommender
from serving.schemas import RecommendRequest, RecommendResponse

logger = logging.getLogger(__name__)

SERVED_FOLDER = "served"
# Fallbacks that mean a stage failed (count as the variant's errors); `unknown_user` is a designed path.
STAGE_FAILURES = frozenset(
    {"retrieval_failed", "ranking_failed", "ranking_timeout", FEATURE_STORE_UNAVAILABLE}
)


def served_row(response: RecommendResponse, served_at: datetime) -> dict[str, Any]:
    """The log line of one answer.

    >>> from serving.schemas import ModelVersion, RecommendedItem
    >>> answer = RecommendResponse(request_id="r1", user_id="u1", model_version=ModelVersion(
    ...     retrieval="7", ranking="4"), items=[RecommendedItem(item_id="i3", score=1.0, position=1)],
    ...     experiments={"canary": "canary"})
    >>> served_row(answer, datetime(2026, 3, 1, tzinfo=UTC))["served_at"]
    '2026-03-01T00:00:00+00:00'
    """
    return {
        "request_id": response.request_id,
        "user_id": response.user_id,
        "served_at": served_at.astimezone(UTC).isoformat(),
        "experiments": response.experiments,
        "item_ids": [item.item_id for item in response.items],
        "probabilities": response.probabilities,
        "fallback_reason": response.fallback_reason,
        "cached": response.cached,
    }


class ServedLog:
    """Appends one line per answer to this process's file of the day (opened once, flushed per line)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        self._lock = threading.Lock()
        self._day: str | None = None
        self._handle: TextIO | None = None

    def record(self, response: RecommendResponse, now: datetime | None = None) -> None:
        """Log an answer; a disk error is logged, never raised (the answer has been computed)."""
        moment = now or datetime.now(UTC)
        line = json.dumps(served_row(response, moment), separators=(",", ":")) + "\n"
        day = moment.astimezone(UTC).date().isoformat()
        try:
            with self._lock:
                if day != self._day or self._handle is None:
                    self._open(day)
                assert self._handle is not None
                self._handle.write(line)
                self._handle.flush()
        except OSError:
            logger.exception("could not log served response %s", response.request_id)

    def _open(self, day: str) -> None:
        if self._handle is not None:
            self._handle.close()
        folder = self.folder / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        self._handle = (folder / self._name).open("a", encoding="utf-8")
        self._day = day

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class ServedTail:
    """Reads the lines appended to a served log since the last call, complete lines only."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._offsets: dict[Path, int] = {}

    def read_new(self, since_day: str = "") -> Iterator[dict[str, Any]]:
        """New rows of every file in partitions dated `since_day` (YYYY-MM-DD) or later."""
        for path in sorted(self.folder.glob("date=*/*.jsonl")):
            if path.parent.name.removeprefix("date=") < since_day:
                continue
            start = self._offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(start)
                chunk = handle.read()
            end = chunk.rfind(b"\n") + 1  # a line being written has no newline yet: read it next time
            self._offsets[path] = start + end
            for line in chunk[:end].splitlines():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("skipping a malformed line of %s", path)


async def serve_recommendation(
    recommender: Recommender, request: RecommendRequest, served_log: ServedLog | None = None
) -> RecommendResponse:
    """`recommender.recommend`, timed and counted per experiment variant, and logged when it answers.

    A variant's error is an answer that raised (the API's 5xx) or fell back after a stage failed.
    """
    started = time.perf_counter()
    try:
        response = await recommender.recommend(request)
    except Exception:
        variants = recommender.assignment(request.user_id).variants
        recommender.metrics.observe_variants(variants, time.perf_counter() - started, failed=True)
        raise
    failed = response.fallback_reason in STAGE_FAILURES
    recommender.metrics.observe_variants(response.experiments, time.perf_counter() - started, failed)
    if served_log is not None:
        served_log.record(response)
    return response
