"""One trace from the gateway to an edge agent over MQTT 5 user properties.

The fabric of tests/integration/test_edge_relay.py: mosquitto, ``store serve``, an agent with
no inbound port serving mlp:1 through its relay, a gateway with ``--pool edge=mqtt://...``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import GatewayThread
from tests.integration.test_edge_agent import Fabric, fabric, store_home  # noqa: F401
from tests.integration.test_edge_relay import gateway_for, portless, serving, wait_pool  # noqa: F401

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"


def test_the_trace_continues_on_the_edge_agent(
    spans: InMemorySpanExporter,
    portless: Fabric,  # noqa: F811
    start_gateway: Callable[..., GatewayThread],
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    gateway = gateway_for(start_gateway, portless.broker, empty)
    wait_pool(gateway, serving("mlp"))
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    with triton.InferenceServerClient(gateway.address) as client:
        spans.clear()
        client.infer("mlp", [tensor], headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"})

    finished = spans.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    [route] = [s for s in finished if s.name == "route"]
    assert route.attributes is not None
    assert route.attributes["edgefabric.pool"] == "edge"
    [on_device] = [s for s in finished if s.name == "relay"]
    assert on_device.kind is SpanKind.SERVER
    assert on_device.parent is not None
    assert on_device.parent.is_remote  # it came through the broker, in MQTT user properties
    assert on_device.parent.span_id == route.context.span_id
    assert any(s.parent and s.parent.span_id == on_device.context.span_id for s in finished)
