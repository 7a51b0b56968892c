"""The gateway as a fabric: remote KServe v2 pools next to its own sessions, with failover.

Backends are real edgefabric gateways (in-process, on 127.0.0.1:0); the client is tritonclient
talking only to the front gateway.
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

pytestmark = pytest.mark.integration


def _repository(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_model(root, name, mlp_model())
    return root


def _infer(client: triton.InferenceServerClient, model: str, timeout_s: float = 10.0) -> np.ndarray:
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    result: np.ndarray | None = client.infer(model, [tensor], client_timeout=timeout_s).as_numpy(
        "logits"
    )
    assert result is not None
    return result


def test_remote_models_are_served_next_to_local_ones(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    backend = start_gateway(_repository(tmp_path / "b", "far"))
    front = start_gateway(
        _repository(tmp_path / "f", "near"), pools=(f"edge=grpc://{backend.address}",)
    )
    with triton.InferenceServerClient(front.address) as client:
        names = {m.name for m in client.get_model_repository_index().models}
        assert {"near", "far"} <= names
        assert client.is_model_ready("far")
        assert client.get_model_metadata("far").inputs[0].name == "x"
        expected = _infer(triton.InferenceServerClient(backend.address), "far")
        np.testing.assert_array_equal(_infer(client, "far"), expected)
        assert _infer(client, "near").shape == (2, 8)
        tensor = triton.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
        answered = client.infer("far", [tensor]).get_response().parameters
        assert answered["edgefabric.pool"].string_param == "edge"  # who answered a routed call
        with pytest.raises(InferenceServerException, match="nowhere"):
            _infer(client, "nowhere")


def test_requests_fail_over_when_a_pool_goes_down(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    first = start_gateway(_repository(tmp_path / "b1", "shared"))
    second = start_gateway(_repository(tmp_path / "b2", "shared"))
    front = start_gateway(
        _repository(tmp_path / "f"),
        pools=(f"one=grpc://{first.address}", f"two=grpc://{second.address}"),
    )
    with triton.InferenceServerClient(front.address) as client:
        for _ in range(20):
            assert _infer(client, "shared").shape == (2, 8)
        first.call(first.gateway.stop, 0.0)  # one backend dies: every request must still succeed
        for _ in range(50):
            assert _infer(client, "shared").shape == (2, 8)
