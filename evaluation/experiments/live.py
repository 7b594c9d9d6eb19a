"""What a live canary observes of a running serving deployment since its stage began.

Per variant of the canary's experiment:

- impressions and requests from the served-response log (`serving.served`: one line per answer with its
  variants and items), answers served since the stage began;
- clicks from the event log (`POST /events`), joined to those answers by `request_id`: a click counts
  once per (request, item) and only for an item that answer showed, as `monitoring.business` counts CTR;
- p99 latency, errors and requests from the ingress's `/metrics` (`recsys_variant_latency_seconds`,
  `recsys_variant_errors_total`): the difference between the scrape taken when the stage began and the
  latest one, p99 interpolated in the histogram buckets as Prometheus' `histogram_quantile` does. Below
  `MIN_REQUESTS_FOR_P99` canary requests the p99 is left unknown (NaN, which the state machine does not
  judge): the 99th percentile of fewer than 100 requests is the slowest one, and on a shared machine one
  slow request would roll a healthy canary back.

The joins and the arithmetic are plain functions; `LiveSource` only reads files and scrapes over HTTP.
The scrape is of one ingress replica: with several behind the URL, successive scrapes may answer from
different replicas, so point the canary at a single-replica ingress (the default) or at one replica.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from evaluation.experiments.canary import Observation
from serving.served import ServedTail

logger = logging.getLogger(__name__)

LATENCY_METRIC = "recsys_variant_latency_seconds"
ERRORS_METRIC = "recsys_variant_errors"  # the parser names a counter family without `_total`
_EVENT_COLUMNS = ["event_type", "request_id", "item_id"]
MIN_REQUESTS_FOR_P99 = 100


@dataclass(frozen=True)
class ArmTraffic:
    """One variant's answers in the window: requests, items shown, shown items clicked."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0


class WindowCounts:
    """Impressions and clicks per variant of one experiment, for answers served at or after `since`.

    Feed it answers (`add_served`) before the events that may refer to them (`add_events`); a click
    whose answer is not in the window (another experiment, an earlier stage) is ignored.
    """

    def __init__(self, experiment: str, since: datetime) -> None:
        self.experiment = experiment
        self.since = since
        self._shown: dict[str, tuple[str, frozenset[str]]] = {}  # request_id -> (variant, items)
        self._clicked: set[tuple[str, str]] = set()
        self._arms: dict[str, list[int]] = {}  # variant -> [requests, impressions, clicks]

    def add_served(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            variant = (row.get("experiments") or {}).get(self.experiment)
            if variant is None or row["request_id"] in self._shown:
                continue
            if datetime.fromisoformat(row["served_at"]) < self.since:
                continue
            items = frozenset(row["item_ids"])
            self._shown[row["request_id"]] = (variant, items)
            arm = self._arms.setdefault(variant, [0, 0, 0])
            arm[0] += 1
            arm[1] += len(items)

    def add_clicks(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Clicked (request_id, item_id) pairs."""
        for request_id, item_id in pairs:
            shown = self._shown.get(request_id)
            if shown is None or item_id not in shown[1] or (request_id, item_id) in self._clicked:
                continue
            self._clicked.add((request_id, item_id))
            self._arms[shown[0]][2] += 1

    def counts(self) -> dict[str, ArmTraffic]:
        return {variant: ArmTraffic(*arm) for variant, arm in self._arms.items()}


def click_pairs(events: Mapping[str, Iterable[Any]]) -> list[tuple[str, str]]:
    """(request_id, item_id) of the click events among `events` (columns event_type, request_id, item_id)."""
    return [
        (str(request), str(item))
        for kind, request, item in zip(
            events["event_type"], events["request_id"], events["item_id"], strict=True
        )
        if kind == "click" and request is not None
    ]


def arm_counts(
    served: Iterable[Mapping[str, Any]],
    events: Mapping[str, Iterable[Any]],
    experiment: str,
    since: datetime,
) -> dict[str, ArmTraffic]:
    """Impressions and clicks per variant of `experiment` for answers served since `since`.

    >>> at = "2026-03-01T12:00:00+00:00"
    >>> served = [{"request_id": "r1", "served_at": at, "experiments": {"x": "canary"},
    ...            "item_ids": ["a", "b"]}]
    >>> clicks = {"event_type": ["click", "click", "view"], "request_id": ["r1", "r1", "r1"],
    ...           "item_id": ["a", "a", "b"]}
    >>> arm_counts(served, clicks, "x", datetime(2026, 3, 1, tzinfo=UTC))
    {'canary': ArmTraffic(requests=1, impressions=2, clicks=1)}
    """
    window = WindowCounts(experiment, since)
    window.add_served(served)
    window.add_clicks(click_pairs(events))
    return window.counts()


@dataclass(frozen=True)
class VariantHealth:
    """One variant's latency histogram (cumulative counts per upper bound, +Inf last) and errors."""

    buckets: tuple[tuple[float, float], ...]
    requests: float
    errors: float


def parse_variant_health(text: str, experiment: str) -> dict[str, VariantHealth]:
    """Per variant of `experiment`, its latency buckets, request count and errors from Prometheus text."""
    buckets: dict[str, dict[float, float]] = {}
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (LATENCY_METRIC, ERRORS_METRIC):
            continue
        for sample in family.samples:
            if sample.labels.get("experiment") != experiment or "variant" not in sample.labels:
                continue
            variant = sample.labels["variant"]
            if sample.name == f"{LATENCY_METRIC}_bucket":
                buckets.setdefault(variant, {})[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{LATENCY_METRIC}_count":
                requests[variant] = sample.value
            elif sample.name == f"{ERRORS_METRIC}_total":
                errors[variant] = sample.value
    return {
        variant: VariantHealth(
            tuple(sorted(buckets.get(variant, {}).items())),
            requests.get(variant, 0.0),
            errors.get(variant, 0.0),
        )
        for variant in set(buckets) | set(requests) | set(errors)
    }


def health_since(now: VariantHealth, before: VariantHealth | None) -> VariantHealth:
    """The window between two scrapes; a count that went down means the replica restarted (counted from 0).

    >>> before = VariantHealth(((0.1, 4.0), (math.inf, 5.0)), 5.0, 1.0)
    >>> health_since(VariantHealth(((0.1, 10.0), (math.inf, 12.0)), 12.0, 1.0), before)
    VariantHealth(buckets=((0.1, 6.0), (inf, 7.0)), requests=7.0, errors=0.0)
    """
    if before is None or now.requests < before.requests or now.errors < before.errors:
        return now
    old = dict(before.buckets)
    return VariantHealth(
        tuple((bound, count - old.get(bound, 0.0)) for bound, count in now.buckets),
        now.requests - before.requests,
        now.errors - before.errors,
    )


def histogram_quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as Prometheus).

    The first bucket starts at 0; a quantile in the +Inf bucket is the largest finite bound; NaN when
    the histogram is empty.

    >>> histogram_quantile(0.5, ((0.1, 2.0), (0.2, 4.0), (math.inf, 4.0)))
    0.1
    >>> histogram_quantile(0.99, ((0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)))
    0.198
    """
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                finite = [b for b, _ in buckets if not math.isinf(b)]
                return finite[-1] if finite else math.nan
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return math.nan


def live_observation(
    arms: Mapping[str, ArmTraffic],
    health: Mapping[str, VariantHealth],
    canary: str = "canary",
    control: str = "control",
) -> Observation | None:
    """The canary's observation, or None while either variant has no request in the window; the p99 is
    NaN below `MIN_REQUESTS_FOR_P99` canary requests."""
    if min(health[v].requests if v in health else 0.0 for v in (canary, control)) <= 0:
        return None
    seen, base = arms.get(canary, ArmTraffic()), arms.get(control, ArmTraffic())
    window = health[canary]
    p99 = histogram_quantile(0.99, window.buckets) if window.requests >= MIN_REQUESTS_FOR_P99 else math.nan
    return Observation(
        ctr_canary=seen.clicks / seen.impressions if seen.impressions else 0.0,
        ctr_control=base.clicks / base.impressions if base.impressions else 0.0,
        impressions_canary=seen.impressions,
        impressions_control=base.impressions,
        p99_ms=p99 * 1000.0,
        error_rate=window.errors / window.requests,
        requests_canary=int(window.requests),
    )


class _EventTail:
    """Click pairs from event-log files not read before, written at or after the window began."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._seen: set[Path] = set()

    def read_new(self, since_ns: int) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for path in sorted(self.folder.glob("event_date=*/part-*.parquet")):
            if path in self._seen:
                continue
            self._seen.add(path)
            stamp = path.name.split("-")[1]  # `part-<time_ns>-<uuid>.parquet` (serving.events.EventLog)
            if stamp.isdigit() and int(stamp) < since_ns:
                continue  # written before the window: no click on the window's answers
            columns = pq.read_table(path, columns=_EVENT_COLUMNS).to_pydict()
            pairs.extend(click_pairs(columns))
        return pairs


class LiveSource:
    """Observes a running deployment: its served log and event log on disk, its `/metrics` over HTTP.

    Args:
        client: HTTP client whose base URL is the serving deployment.
        served_folder: The deployment's served-response log (`<state>/served`).
        events_folder: Its event log (`<state>/events`).
        experiment: The canary's experiment; `canary` and `control` name its variants.
        clock: Wall seconds (the served log's timestamps are wall time).
    """

    def __init__(
        self,
        client: httpx.Client,
        served_folder: Path,
        events_folder: Path,
        experiment: str,
        canary: str = "canary",
        control: str = "control",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.experiment = experiment
        self.canary, self.control = canary, control
        self._clock = clock
        self._served = ServedTail(served_folder)
        self._events = _EventTail(events_folder)
        self._since = clock()
        self._window = WindowCounts(experiment, datetime.fromtimestamp(self._since, UTC))
        self._baseline: dict[str, VariantHealth] | None = None

    def scrape(self) -> dict[str, VariantHealth] | None:
        """The experiment's variants in `/metrics` now; None (and a warning) when it does not answer."""
        try:
            response = self.client.get("/metrics", timeout=10.0)
        except httpx.HTTPError as err:
            logger.warning("cannot scrape /metrics: %s", err)
            return None
        if response.status_code != 200:
            logger.warning("/metrics answered HTTP %s", response.status_code)
            return None
        return parse_variant_health(response.text, self.experiment)

    def restart(self) -> None:
        """A new stage: count from now on (answers served from now, metrics from this scrape)."""
        self._since = self._clock()
        self._window = WindowCounts(self.experiment, datetime.fromtimestamp(self._since, UTC))
        self._baseline = self.scrape()

    def observe(self) -> Observation | None:
        """The observation since `restart`, or None without evidence (no traffic, or no scrape yet)."""
        since = datetime.fromtimestamp(self._since, UTC)
        self._window.add_served(self._served.read_new(since.date().isoformat()))
        self._window.add_clicks(self._events.read_new(int(self._since * 1e9)))
        now = self.scrape()
        if now is None:
            return None
        if self._baseline is None:  # the stage's first scrape failed: the window's metrics start here
            self._baseline = now
            return None
        health = {v: health_since(h, self._baseline.get(v)) for v, h in now.items()}
        return live_observation(self._window.counts(), health, self.canary, self.control)

    @property
    def counts(self) -> dict[str, ArmTraffic]:
        """Impressions and clicks per variant in the window so far."""
        return self._window.counts()
