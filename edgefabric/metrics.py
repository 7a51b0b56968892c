"""Prometheus metrics of one serving process, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServingMetrics"]

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """Request counts and latency per model, version and code; dynamic batcher metrics."""

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
        self.batch_queue_depth = Gauge(
            "edgefabric_batch_queue_depth",
            "Requests waiting in the dynamic batcher, by priority level (1 = highest)",
            ["model", "version", "priority"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgefabric_batch_size_rows",
            "Rows per batch the dynamic batcher started",
            ["model", "version"],
            buckets=_BATCH_ROWS_BUCKETS,
            registry=self.registry,
        )
        self.batch_queue_time = Histogram(
            "edgefabric_batch_queue_seconds",
            "Time a request waited in the dynamic batcher before its batch started",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.compute_time = Histogram(
            "edgefabric_inference_compute_seconds",
            "Time one model execution took (input copy, run, output copy), once per batch",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_shed = Counter(
            "edgefabric_batch_shed",
            "Requests the dynamic batcher refused or dropped without running, by reason",
            ["model", "version", "reason"],
            registry=self.registry,
        )

    def observe(self, model: str, version: str, code: str, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(model, version, code).inc()
        if code == "OK":
            self.latency.labels(model, version).observe(seconds)

    def set_queue_depth(self, model: str, version: str, priority: int, depth: int) -> None:
        """Requests waiting at one priority level of a model version's batcher."""
        self.batch_queue_depth.labels(model, version, str(priority)).set(depth)

    def observe_batch(
        self, model: str, version: str, rows: int, queue_seconds: Sequence[float]
    ) -> None:
        """One batch started: its rows and how long each of its requests waited."""
        self.batch_size.labels(model, version).observe(rows)
        queue_time = self.batch_queue_time.labels(model, version)
        for seconds in queue_seconds:
            queue_time.observe(seconds)

    def observe_compute(self, model: str, version: str, seconds: float) -> None:
        """One model execution (a whole batch) took ``seconds``."""
        self.compute_time.labels(model, version).observe(seconds)

    def count_shed(self, model: str, version: str, reason: str) -> None:
        """One request the batcher refused or dropped without running it.

        ``reason``: ``queue_full``, ``deadline_admission``, ``queue_timeout`` or ``deadline``.
        """
        self.batch_shed.labels(model, version, reason).inc()

    def serve_http(self, address: str, port: int) -> int:
        """Expose ``/metrics`` over HTTP; returns the bound port (``port`` 0 picks one)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)
