"""Prometheus metrics of the ingress, served as text at `GET /metrics`.

Each `ServingMetrics` keeps its values in its own memory and renders them through its own registry, so
several apps in one process (tests) never share a count. prometheus_client's `Counter` and friends
cannot promise that: importing Feast sets `PROMETHEUS_MULTIPROC_DIR`, and when that happens before
prometheus_client is first imported every metric of the process keeps its value in a per-process file
keyed by name and labels, so a fresh registry would start from the counts of the one before it.
Stage latencies are histograms: p50/p95/p99 come from
`histogram_quantile(0.99, sum by (le, stage) (rate(recsys_stage_latency_seconds_bucket[5m])))`.
Stage timings measured inside the retrieval and ranking replicas travel back with their answer and are
observed here, so one scrape of the ingress sees the whole graph.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Buckets around the stage budgets of the spec (5-50 ms), up to the 1 s ranking deadline.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
)
# Per variant: finer around the canary's p99 limit, with 180 ms an edge, so `histogram_quantile` puts a
# p99 above 180 ms exactly when more than 1% of the requests took longer than 180 ms.
VARIANT_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.18,
    0.2,
    0.25,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = CONTENT_TYPE_LATEST

S = TypeVar("S")


class _Family(Generic[S]):
    """A metric's series by label values; an unlabelled metric is its own single series."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}
        self._lock = threading.Lock()
        if not self.labelnames:  # shown at zero before its first use, as prometheus_client does
            self._series[()] = self._new_series()

    def _new_series(self) -> S:
        raise NotImplementedError

    def labels(self, **labels: object) -> S:
        """The series of these label values (created at zero on first use), like prometheus_client's."""
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {list(self.labelnames)}, got {sorted(labels)}")
        key = tuple(str(labels[name]) for name in self.labelnames)
        with self._lock:
            if key not in self._series:
                self._series[key] = self._new_series()
            return self._series[key]

    def series(self) -> list[tuple[tuple[str, ...], S]]:
        with self._lock:
            return list(self._series.items())


class Value:
    """One counter or gauge series: a float behind a lock."""

    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)


class Distribution:
    """One histogram series: observations per bucket (not cumulative) and their sum.

    >>> d = Distribution((1.0, 2.0))
    >>> for x in (0.5, 1.0, 1.5, 9.0):
    ...     d.observe(x)
    >>> d.cumulative(), d.total
    ([('1.0', 2.0), ('2.0', 3.0), ('+Inf', 4.0)], 12.0)
    """

    def __init__(self, upper_bounds: Sequence[float]) -> None:
        self.upper_bounds = tuple(float(b) for b in upper_bounds)
        self.counts = [0.0] * (len(self.upper_bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        # Upper bounds are inclusive (le), so a value equal to a bound falls in that bound's bucket.
        at = bisect.bisect_left(self.upper_bounds, amount)
        with self._lock:
            self.counts[at] += 1
            self.total += amount

    def cumulative(self) -> list[tuple[str, float]]:
        with self._lock:
            counts = list(self.counts)
        # str(float) writes these plain decimal bounds as Prometheus does (0.005, 1.0).
        bounds = [str(b) for b in self.upper_bounds] + ["+Inf"]
        running, out = 0.0, []
        for bound, count in zip(bounds, counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class CounterFamily(_Family[Value]):
    def _new_series(self) -> Value:
        return Value()

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)


class GaugeFamily(_Family[Value]):
    def _new_series(self) -> Value:
        return Value()


class HistogramFamily(_Family[Distribution]):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.buckets = tuple(buckets)  # before super().__init__, which may create the first series
        super().__init__(name, documentation, labelnames)

    def _new_series(self) -> Distribution:
        return Distribution(self.buckets)

    def observe(self, amount: float) -> None:
        self.labels().observe(amount)


class ServingMetrics(Collector):
    """The counters and histograms of one ingress replica."""

    def __init__(self) -> None:
        self.stage_latency = HistogramFamily(
            "recsys_stage_latency_seconds",
            "Latency of one serving stage (request = the whole answer).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
        )
        # Names and labels as docs/monitoring.md lists them (the dashboard and alerts query these).
        self.requests = CounterFamily(
            "recsys_requests_total",
            "Answered HTTP requests; status is ok (< 400), rejected (4xx) or error (5xx).",
            ["route", "status"],
        )
        self.errors = CounterFamily(
            "recsys_errors_total",
            "Stage failures (each answered by a fallback or an error).",
            ["stage", "reason"],
        )
        self.cache_hits = CounterFamily(
            "recsys_cache_hits_total", "Lookups answered from the cache.", ["cache"]
        )
        self.cache_misses = CounterFamily(
            "recsys_cache_misses_total", "Lookups that went to the stages.", ["cache"]
        )
        self.fallbacks = CounterFamily(
            "recsys_fallback_total", "Answers given by a fallback, by reason.", ["reason"]
        )
        self.queue_depth = GaugeFamily(
            "recsys_queue_depth", "Requests waiting for a deployment's answer.", ["deployment"]
        )
        self.missing_features = CounterFamily(
            "recsys_missing_features_total",
            "Feature values absent from the online store and replaced by defaults.",
            ["stage"],
        )
        self.batch_size = HistogramFamily(
            "recsys_ranking_batch_size",
            "Requests ranked together by one @serve.batch call.",
            [],
            buckets=BATCH_BUCKETS,
        )
        self.events = CounterFamily("recsys_events_total", "Events received at POST /events.", ["result"])
        self.experiment_assignments = CounterFamily(
            "recsys_experiment_assignments_total",
            "Requests per experiment variant.",
            ["experiment", "variant"],
        )
        self.exploration = CounterFamily(
            "recsys_explored_items_total", "Shown items chosen by exploration.", []
        )
        # What a live canary judges: latency and errors of each experiment variant (`serving.served`).
        self.variant_latency = HistogramFamily(
            "recsys_variant_latency_seconds",
            "Latency of POST /recommend per experiment variant, failed requests included.",
            ["experiment", "variant"],
            buckets=VARIANT_LATENCY_BUCKETS,
        )
        self.variant_errors = CounterFamily(
            "recsys_variant_errors_total",
            "POST /recommend per experiment variant that failed (5xx) or fell back after a stage failed.",
            ["experiment", "variant"],
        )
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def count_request(self, route: str, code: int) -> None:
        status = "ok" if code < 400 else "rejected" if code < 500 else "error"
        self.requests.labels(route=route, status=status).inc()

    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_latency.labels(stage=stage).observe(ms / 1000.0)

    def observe_variants(self, variants: Mapping[str, str], seconds: float, failed: bool) -> None:
        """One /recommend answer of these variants (experiment -> variant)."""
        for experiment, variant in variants.items():
            self.variant_latency.labels(experiment=experiment, variant=variant).observe(seconds)
            errors = self.variant_errors.labels(experiment=experiment, variant=variant)  # at 0 from the first
            if failed:
                errors.inc()

    def collect(self) -> Iterator[Metric]:
        """The families in Prometheus' own types, for the registry to render."""
        counters = [self.requests, self.errors, self.cache_hits, self.cache_misses, self.fallbacks]
        counters += [self.missing_features, self.events, self.experiment_assignments, self.exploration]
        counters.append(self.variant_errors)
        for counter in counters:
            family = CounterMetricFamily(counter.name, counter.documentation, labels=counter.labelnames)
            for key, value in counter.series():
                family.add_metric(key, value.value)
            yield family
        gauge = GaugeMetricFamily(
            self.queue_depth.name, self.queue_depth.documentation, labels=self.queue_depth.labelnames
        )
        for key, value in self.queue_depth.series():
            gauge.add_metric(key, value.value)
        yield gauge
        for histogram in (self.stage_latency, self.batch_size, self.variant_latency):
            out = HistogramMetricFamily(histogram.name, histogram.documentation, labels=histogram.labelnames)
            for key, distribution in histogram.series():
                out.add_metric(key, distribution.cumulative(), distribution.total)
            yield out

    def render(self) -> bytes:
        return generate_latest(self.registry)
