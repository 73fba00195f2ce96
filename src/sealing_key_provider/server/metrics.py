"""Prometheus metrics for ``/metrics``, in a registry of our own.

A private :class:`CollectorRegistry` (not prometheus-client's global one) keeps two providers in one
process (the tests run several) from sharing or clashing counters, and keeps library-imported
collectors out of our output. Labels are bounded sets: the protocol (``legacy``/``http``) and the
outcome code (``OK`` or a stable error code), never addresses or measurements, so the series count
cannot grow with traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..collateral.cache import CacheStats
from ..provider import QuoteStats

PROTOCOLS: Final = ("legacy", "http", "https")
OK: Final = "OK"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Request latency buckets (seconds): a warm request is a few ms, a cold collateral fetch up to seconds.
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _CacheCollector(Collector):
    """Collateral cache hits/misses, read from the cache's own counters at scrape time."""

    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        hits = CounterMetricFamily(
            "skp_collateral_cache_hits", "Collateral lookups answered from the in-memory cache."
        )
        hits.add_metric([], s.hits)
        misses = CounterMetricFamily(
            "skp_collateral_cache_misses", "Collateral lookups that went to the PCCS / PCS."
        )
        misses.add_metric([], s.misses)
        errors = CounterMetricFamily(
            "skp_collateral_fetch_errors", "Collateral fetches from the PCCS / PCS that failed."
        )
        errors.add_metric([], s.errors)
        entries = GaugeMetricFamily("skp_collateral_cache_entries", "Collateral sets held in the cache.")
        entries.add_metric([], s.entries)
        stale = CounterMetricFamily(
            "skp_collateral_stale_served",
            "Lookups answered with cached collateral past cache_max_age (its refresh failed) that is "
            "still valid: every document before its nextUpdate.",
        )
        stale.add_metric([], s.stale)
        yield from (hits, misses, errors, entries, stale)


class _QuoteCollector(Collector):
    """``skp_quote_generation_seconds``: every SGX quote the provider made, read from the provider's
    own counters, so quotes made before the server existed (start-up, first attestation) and off the
    request path (renewal) count as well as per-request ones: quotes per request = count / requests."""

    def __init__(self, stats: QuoteStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        counts, total = self._stats.snapshot()
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self._stats.buckets, counts, strict=False):
            running += count
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", running + counts[-1]))
        family = HistogramMetricFamily(
            "skp_quote_generation_seconds",
            "Time to generate each of the provider's own SGX quotes (start-up, attestation, renewal and "
            "per-request quotes).",
        )
        family.add_metric([], buckets, total)
        yield family


class Metrics:
    """Every metric the server exports; one instance per running server."""

    def __init__(
        self, cache_stats: Callable[[], CacheStats] | None = None, quote_stats: QuoteStats | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "skp_requests",
            "Key requests by protocol and outcome code (OK or the stable error code).",
            ("protocol", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "skp_request_duration_seconds",
            "Time from a complete request to its answer, by protocol.",
            ("protocol",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "skp_requests_in_flight",
            "Key requests being processed (holding a concurrency slot or waiting for one).",
            registry=self.registry,
        )
        self.connections = Gauge(
            "skp_open_connections",
            "Open client connections by listener (both count against server.max_connections).",
            ("protocol",),
            registry=self.registry,
        )
        # Children resolved once: ``labels()`` costs a lock and a dict lookup per call, on every request.
        self._outcomes: dict[tuple[str, str], Counter] = {}
        self._latency = {protocol: self.latency.labels(protocol) for protocol in PROTOCOLS}
        self.open_connections = {protocol: self.connections.labels(protocol) for protocol in PROTOCOLS}
        for protocol in PROTOCOLS:
            self._outcome(protocol, OK)
        if cache_stats is not None:
            self.registry.register(_CacheCollector(cache_stats))
        if quote_stats is not None:
            self.registry.register(_QuoteCollector(quote_stats))

    def _outcome(self, protocol: str, code: str) -> Counter:
        child = self._outcomes.get((protocol, code))
        if child is None:  # codes are a closed set (errors.py), so this dict stays small
            child = self._outcomes[(protocol, code)] = self.requests.labels(protocol, code)
        return child

    def observe(self, protocol: str, code: str, seconds: float) -> None:
        """Count one finished key request (granted: ``code`` is ``OK``)."""
        self._outcome(protocol, code).inc()
        latency = self._latency.get(protocol)
        (latency if latency is not None else self.latency.labels(protocol)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
