"""The gateway's ``/metrics``: routing by pool and outcome, pool health, compute latency.

Two real gateways on 127.0.0.1:0: the front one routes ``far`` to the other (pool ``edge``) and
serves ``near`` itself; tritonclient talks to the front only. Scrapes are parsed with
``prometheus_client``'s own text parser.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from edgefabric.samples import mlp_model, write_model
from tests.conftest import GatewayThread
from tests.integration.test_metrics_fleet import scrape, value

pytestmark = pytest.mark.integration


def _repository(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_model(root, name, mlp_model())
    return root


def _infer(client: triton.InferenceServerClient, model: str) -> None:
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    client.infer(model, [tensor], client_timeout=10)


def test_route_requests_pool_health_and_latency_are_exported(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    backend = start_gateway(_repository(tmp_path / "b", "far"))
    front = start_gateway(
        _repository(tmp_path / "f", "near"),
        pools=(f"edge=grpc://{backend.address}",),
        metrics_port=0,
    )
    port = front.gateway.metrics_port
    assert port is not None
    with triton.InferenceServerClient(front.address) as client:
        for _ in range(3):
            _infer(client, "far")
        _infer(client, "near")
        seen = scrape(port)
        assert value(seen, "edgefabric_pool_up", pool="edge") == 1
        assert value(seen, "edgefabric_pool_up", pool="local") == 1
        ok = {"model": "far", "version": "", "pool": "edge", "code": "OK"}
        assert value(seen, "edgefabric_route_requests_total", **ok) == 3
        assert value(seen, "edgefabric_route_request_seconds_count", model="far", pool="edge") == 3
        # The local model: end-to-end and compute latency from the gateway's own session.
        assert value(seen, "edgefabric_inference_latency_seconds_count", model="near", version="1")
        assert value(seen, "edgefabric_inference_compute_seconds_count", model="near", version="1")

        backend.call(backend.gateway.stop, 0.0)
        with pytest.raises(InferenceServerException):
            _infer(client, "far")
    seen = scrape(port)
    assert value(seen, "edgefabric_pool_up", pool="edge") == 0
    down = {"model": "far", "version": "", "pool": "edge", "code": "UNAVAILABLE"}
    assert value(seen, "edgefabric_route_requests_total", **down) == 1


def test_batched_model_reports_compute_once_per_batch(
    start_gateway: Callable[..., GatewayThread], sample_repository: Path
) -> None:
    running = start_gateway(sample_repository, metrics_port=0)
    with triton.InferenceServerClient(running.address) as client:
        _infer(client, "mlp")
    assert running.gateway.metrics_port is not None
    seen = scrape(running.gateway.metrics_port)
    assert value(seen, "edgefabric_inference_compute_seconds_count", model="mlp", version="1") == 1
    assert value(seen, "edgefabric_pool_up", pool="local") == 1
