"""Gateway metrics beyond :class:`~edgefabric.metrics.ServingMetrics`: pools and routing.

``ServingMetrics`` already counts what the gateway's own sessions answer (requests by model,
version and code; end-to-end, queue and compute latency; batch sizes, queue depth, sheds). This
adds what the router sees: each attempt at a pool, and whether each pool is up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["GatewayMetrics", "PoolHealth"]

PoolHealth = Callable[[], Mapping[str, bool]]
"""Pool name -> whether it is up now (read at every scrape)."""

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


class _PoolUp(Collector):
    def __init__(self, health: PoolHealth) -> None:
        self._health = health

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("edgefabric_pool_up", "1 when the pool is healthy", labels=["pool"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "edgefabric_pool_up", "1 when the pool is healthy", labels=["pool"]
        )
        for pool, up in sorted(self._health().items()):
            family.add_metric([pool], 1.0 if up else 0.0)
        yield family


class GatewayMetrics:
    """Routing metrics, registered in the gateway's registry next to ``ServingMetrics``."""

    def __init__(self, registry: CollectorRegistry, pool_health: PoolHealth) -> None:
        self.route_requests = Counter(
            "edgefabric_route_requests",
            "Attempts the router sent to a pool, by model, version asked, pool and outcome",
            ["model", "version", "pool", "code"],
            registry=registry,
        )
        self.route_latency = Histogram(
            "edgefabric_route_request_seconds",
            "Time one attempt at a pool took, from send to answer or failure",
            ["model", "pool"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        registry.register(_PoolUp(pool_health))

    def observe_route(self, model: str, version: str, pool: str, code: str, seconds: float) -> None:
        """One attempt at ``pool`` ended with ``code`` (a gRPC status name) after ``seconds``."""
        self.route_requests.labels(model, version, pool, code).inc()
        self.route_latency.labels(model, pool).observe(seconds)
