"""A real Triton Inference Server as a remote pool of the gateway.

Triton is the ``nvidia-pytriton`` wheel's ``tritonserver`` (CPU, Python backend running the
ONNX model with ONNX Runtime; see tests/triton_server.py); the client is tritonclient talking
only to the gateway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from edgefabric.samples import mlp_model, stats_model, write_model
from tests.conftest import GatewayThread
from tests.triton_server import TritonServer, kill_triton, start_triton_server, triton_mlp

pytestmark = pytest.mark.integration

__all__ = ["triton_mlp"]  # the module-scoped fixture, imported for pytest

CLIENTS = 4
TIMEOUT_S = 10.0


def _x(seed: int, rows: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def _infer(client: triton.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result: np.ndarray | None = client.infer("mlp", [tensor], client_timeout=TIMEOUT_S).as_numpy(
        "logits"
    )
    assert result is not None
    return result


def _ort(model_path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits: np.ndarray = session.run(["logits"], {"x": x})[0]
    return logits


def test_gateway_serves_the_triton_model_and_answers_as_ort_does(
    start_gateway: Callable[..., GatewayThread], triton_mlp: TritonServer, tmp_path: Path
) -> None:
    repository = tmp_path / "front"
    write_model(repository, "stats", stats_model())  # local models stay next to Triton's
    front = start_gateway(repository, pools=(f"triton=grpc://{triton_mlp.address}",))
    with triton.InferenceServerClient(front.address) as client:
        assert {"mlp", "stats"} <= {m.name for m in client.get_model_repository_index().models}
        assert client.is_model_ready("mlp")
        metadata = client.get_model_metadata("mlp")
        assert [(i.name, i.datatype) for i in metadata.inputs] == [("x", "FP32")]
        assert client.get_model_config("mlp").config.backend == "python"
        for seed in range(5):
            x = _x(seed, rows=seed + 1)
            np.testing.assert_allclose(
                _infer(client, x), _ort(triton_mlp.model_path, x), rtol=1e-5, atol=1e-6
            )
    assert front.gateway.router is not None
    assert front.gateway.router.pools["triton"].stats().requests == 5


def test_killing_triton_mid_load_fails_every_request_over_to_the_local_pool(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    server = start_triton_server(write_model(tmp_path / "onnx", "mlp", mlp_model()), tmp_path / "t")
    try:
        front = start_gateway(
            write_model(tmp_path / "front", "mlp", mlp_model()).parents[2],
            pools=(f"triton=grpc://{server.address}",),
            routes=("mlp=triton:1,local",),  # Triton takes every request; local only on failover
        )
        router = front.gateway.router
        assert router is not None
        x = _x(1)
        expected = _ort(server.model_path, x)
        lock = threading.Lock()
        answered = threading.Condition(lock)
        successes = 0
        failures: list[BaseException] = []
        stop = threading.Event()

        def client_loop() -> None:
            nonlocal successes
            with triton.InferenceServerClient(front.address) as client:
                while not stop.is_set():
                    try:
                        got = _infer(client, x)
                        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
                    except BaseException as exc:  # every failure is reported
                        with lock:
                            failures.append(exc)
                        return
                    with answered:
                        successes += 1
                        answered.notify_all()

        def wait_for(count: int) -> int:
            with answered:
                assert answered.wait_for(lambda: successes >= count or failures, 60)
                return successes

        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            before = wait_for(100)
            served_by_triton = router.pools["triton"].stats().requests
            kill_triton(server)  # a crash, with requests in flight
            wait_for(before + 300)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert not failures, failures[:3]
        assert served_by_triton >= 50
        assert router.pools["triton"].stats().failures >= 1
        assert not router.pools["triton"].healthy
    finally:
        server.peer.stop()
