"""OpenTelemetry tracing of ModelStreamInfer: one server span per streamed request.

The client is tritonclient's bidirectional stream; spans are collected with the SDK's
in-memory exporter.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import GatewayThread

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"
WAIT_S = 30.0


def _stream(
    address: str, requests: list[tuple[str, str]], headers: dict[str, str] | None = None
) -> list[tuple[object, object]]:
    """Send ``(model, id)`` requests on one stream; the (result, error) of each, by id."""
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    with triton.InferenceServerClient(address) as client:
        client.start_stream(lambda result, error: answers.put((result, error)), headers=headers)
        for model, request_id in requests:
            client.async_stream_infer(model, [tensor], request_id=request_id)
        received = [answers.get(timeout=WAIT_S) for _ in requests]
        client.stop_stream()
    return received


def _stream_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The ``count`` stream spans, once all have ended (each ends before its answer is queued,
    so they are all there when the client has every answer)."""
    found = [s for s in exporter.get_finished_spans() if s.name == "ModelStreamInfer"]
    assert len(found) == count, [s.name for s in exporter.get_finished_spans()]
    return sorted(found, key=lambda s: str((s.attributes or {})["edgefabric.request_id"]))


def test_each_streamed_request_gets_its_own_span_under_the_streams_traceparent(
    start_gateway: Callable[..., GatewayThread],
    sample_repository: Path,
    spans: InMemorySpanExporter,
) -> None:
    running = start_gateway(sample_repository)
    spans.clear()
    answers = _stream(
        running.address,
        [("mlp", "r1"), ("mlp", "r2"), ("mlp", "r3")],
        headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"},
    )
    assert all(error is None for _, error in answers)
    streamed = _stream_spans(spans, 3)
    assert [s.attributes["edgefabric.request_id"] for s in streamed if s.attributes] == [
        "r1",
        "r2",
        "r3",
    ]
    assert len({s.context.span_id for s in streamed}) == 3
    for span in streamed:
        assert span.kind is SpanKind.SERVER
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.parent is not None
        assert span.parent.is_remote
        assert format(span.parent.span_id, "016x") == CLIENT_SPAN_ID
        assert span.attributes is not None
        assert span.attributes["edgefabric.model"] == "mlp"
    # the work of each request (batching or inline execution) hangs off its own span
    finished = spans.get_finished_spans()
    parents = {s.parent.span_id for s in finished if s.name in ("batch", "execute") and s.parent}
    assert parents <= {s.context.span_id for s in streamed}
    assert parents


def test_streamed_requests_without_traceparent_each_start_a_trace(
    start_gateway: Callable[..., GatewayThread],
    sample_repository: Path,
    spans: InMemorySpanExporter,
) -> None:
    running = start_gateway(sample_repository)
    spans.clear()
    _stream(running.address, [("mlp", "a"), ("mlp", "b")])
    streamed = _stream_spans(spans, 2)
    assert all(s.parent is None for s in streamed)
    assert len({s.context.trace_id for s in streamed}) == 2


def test_a_request_answered_with_an_in_band_error_marks_its_span_failed(
    start_gateway: Callable[..., GatewayThread],
    sample_repository: Path,
    spans: InMemorySpanExporter,
) -> None:
    running = start_gateway(sample_repository)
    spans.clear()
    answers = _stream(running.address, [("mlp", "good"), ("no-such-model", "lost")])
    assert sum(error is not None for _, error in answers) == 1
    good, lost = _stream_spans(spans, 2)
    assert good.status.status_code is StatusCode.UNSET
    assert lost.status.status_code is StatusCode.ERROR
    assert lost.attributes is not None
    assert lost.attributes["edgefabric.model"] == "no-such-model"
    assert any(event.name == "exception" for event in lost.events)
