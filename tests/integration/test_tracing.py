"""OpenTelemetry tracing: one trace per request across a gateway and a remote pool.

The client sends a W3C ``traceparent``; the front gateway continues that trace, the router's
attempt at the remote pool carries it on in gRPC metadata, and the backend gateway's spans join
the same trace as children of that attempt. Spans are collected with the SDK's in-memory
exporter.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from edgefabric.samples import mlp_model, write_model
from edgefabric.telemetry import tracing
from tests.conftest import GatewayThread

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


def _repository(root: Path, name: str) -> Path:
    root.mkdir(parents=True)
    write_model(root, name, mlp_model())
    return root


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def test_one_trace_spans_the_gateway_and_the_remote_pool(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    backend = start_gateway(_repository(tmp_path / "b", "far"))
    front = start_gateway(
        _repository(tmp_path / "f", "near"), pools=(f"edge=grpc://{backend.address}",)
    )
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    with triton.InferenceServerClient(front.address) as client:
        spans.clear()
        client.infer("far", [tensor], headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"})
    finished = spans.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    servers = _by_name(finished, "ModelInfer")
    assert len(servers) == 2
    assert all(s.kind is SpanKind.SERVER for s in servers)
    [entry] = [
        s for s in servers if s.parent and format(s.parent.span_id, "016x") == CLIENT_SPAN_ID
    ]
    assert entry.parent is not None
    assert entry.parent.is_remote
    [route] = _by_name(finished, "route")
    assert route.parent is not None
    assert route.parent.span_id == entry.context.span_id
    assert route.attributes is not None
    assert route.attributes["edgefabric.pool"] == "edge"
    [far] = [s for s in servers if s is not entry]
    # The backend's server span hangs off the front's attempt: the hop carried the context.
    assert far.parent is not None
    assert far.parent.is_remote
    assert far.parent.span_id == route.context.span_id
    inner = [s for s in finished if s.parent and s.parent.span_id == far.context.span_id]
    assert [s.name for s in inner] in (["batch"], ["execute"])


def test_a_request_without_traceparent_starts_its_own_trace(
    start_gateway: Callable[..., GatewayThread],
    sample_repository: Path,
    spans: InMemorySpanExporter,
) -> None:
    running = start_gateway(sample_repository)
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    with triton.InferenceServerClient(running.address) as client:
        spans.clear()
        client.infer("mlp", [tensor])
    finished = spans.get_finished_spans()
    [server] = _by_name(finished, "ModelInfer")
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["edgefabric.model"] == "mlp"
    assert len({s.context.trace_id for s in finished}) == 1


def test_tracing_off_never_imports_opentelemetry(sample_repository: Path) -> None:
    script = f"""
import asyncio, sys
import numpy as np
import tritonclient.grpc.aio as triton
from gateway.app import Gateway
from gateway.settings import GatewaySettings

async def main():
    gateway = Gateway(GatewaySettings(
        model_repository={str(sample_repository)!r}, grpc_port=0, metrics_port=-1))
    await gateway.start()
    client = triton.InferenceServerClient(f"127.0.0.1:{{gateway.port}}")
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    await client.infer("mlp", [tensor])
    await client.close()
    await gateway.stop(0)

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
print("loaded:", loaded)
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("loaded: []")


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_endpoint_setting_exports_spans_to_a_collector(
    start_gateway: Callable[..., GatewayThread], sample_repository: Path
) -> None:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        running = start_gateway(sample_repository, otlp_endpoint=f"http://127.0.0.1:{port}")
        assert tracing.enabled()
        tensor = triton.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
        with triton.InferenceServerClient(running.address) as client:
            client.infer("mlp", [tensor])
        running.call(running.gateway.stop, 0.0)  # flushes the exporter, turns tracing off
        assert not tracing.enabled()
        assert collector.received.wait(30)
    finally:
        server.stop(grace=None)
    resource_spans = [rs for request in collector.requests for rs in request.resource_spans]
    services = {
        attribute.value.string_value
        for rs in resource_spans
        for attribute in rs.resource.attributes
        if attribute.key == "service.name"
    }
    assert services == {"edgefabric-gateway"}
    names = {span.name for rs in resource_spans for scope in rs.scope_spans for span in scope.spans}
    assert "ModelInfer" in names
