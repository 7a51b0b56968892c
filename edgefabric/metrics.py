"""Prometheus metrics of one serving process, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

__all__ = ["ServingMetrics"]

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


class ServingMetrics:
    """Request counts and latency per model, version and gRPC status code."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgefabric_inference_requests",
            "Inference requests answered, by outcome",
            ["model", "version", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgefabric_inference_latency_seconds",
            "Time from request arrival to answer",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def observe(self, model: str, version: str, code: str, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(model, version, code).inc()
        if code == "OK":
            self.latency.labels(model, version).observe(seconds)

    def serve_http(self, address: str, port: int) -> int:
        """Expose ``/metrics`` over HTTP; returns the bound port (``port`` 0 picks one)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)
