"""Gateway latency with tracing off vs on, at concurrency 1, and the cost of one hook when off.

Two gateway processes serve the same MLP: one with tracing off (the default: OpenTelemetry is
never imported), one with ``--otlp-endpoint`` pointing at an OTLP/gRPC sink this script runs
(so spans really are batched and exported). A raw gRPC stub sends one pre-encoded ModelInfer at
a time; the two gateways alternate in rounds so drift hits both alike. The off path's own cost
is also timed directly: a disabled ``tracing.span`` + ``grpc_metadata`` in a tight loop, times
the hooks one request passes. Prints one JSON object per result; writes
bench/results/tracing_overhead.json.

    .venv/bin/python -m bench.tracing_overhead [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from bench._common import emit, gateway_process, save, summarize
from edgefabric.samples import MLP_CONFIG, mlp_model, write_model
from edgefabric.telemetry import tracing

HOOKS_PER_REQUEST = 4  # ModelInfer span, batch (or execute) span, remote-pool metadata, route span


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that only counts spans."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, context: Any) -> Any:
        self.spans += sum(
            len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


def _request() -> bytes:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(x.tobytes())
    return bytes(request.SerializeToString())


def _measure(address: str, payload: bytes, requests: int, warmup: int) -> list[float]:
    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for _ in range(warmup):
            infer(payload, timeout=10)
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            infer(payload, timeout=10)
            latencies.append(time.perf_counter() - started)
    return latencies


def _off_hook_ns(calls: int = 200_000) -> float:
    """Nanoseconds one disabled hook costs (span enter/exit and a metadata check)."""
    assert not tracing.enabled()
    started = time.perf_counter_ns()
    for _ in range(calls):
        with tracing.span("x", attributes={"edgefabric.model": "mlp"}):
            tracing.grpc_metadata()
    return (time.perf_counter_ns() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    sink = _Sink()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, collector)
    collector_port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    payload = _request()
    latencies: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        write_model(repository, "mlp", mlp_model(), config=MLP_CONFIG)
        endpoint = f"http://127.0.0.1:{collector_port}"
        with (
            gateway_process(repository) as (off, _),
            gateway_process(repository, "--otlp-endpoint", endpoint) as (on, _),
        ):
            for round_index in range(args.rounds):
                order = ("off", "on") if round_index % 2 == 0 else ("on", "off")
                for name in order:
                    address = off if name == "off" else on
                    latencies[name] += _measure(address, payload, args.requests, warmup=200)
    collector.stop(grace=None)
    summary = {name: summarize(values) for name, values in latencies.items()}
    for name, stats in summary.items():
        emit({"bench": "tracing_overhead", "tracing": name, **stats}, results)
    hook_ns = _off_hook_ns()
    off_p50_us = summary["off"]["p50_ms"] * 1e3
    emit(
        {
            "bench": "tracing_overhead",
            "comparison": "on_vs_off",
            "p50_ratio": round(summary["on"]["p50_ms"] / summary["off"]["p50_ms"], 4),
            "added_p50_ms": round(summary["on"]["p50_ms"] - summary["off"]["p50_ms"], 4),
            "added_p99_ms": round(summary["on"]["p99_ms"] - summary["off"]["p99_ms"], 4),
            "spans_exported": sink.spans,
            "off_hook_ns": round(hook_ns, 1),
            "off_hooks_share_of_p50": round(HOOKS_PER_REQUEST * hook_ns / 1e3 / off_p50_us, 6),
            "requests_per_path": args.requests * args.rounds,
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
        },
        results,
    )
    print(f"wrote {save('tracing_overhead', results)}")


if __name__ == "__main__":
    main()
