"""Reloads, version policies, graceful drain and SIGTERM, against the running gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from edgefabric.samples import mlp_model, write_model
from tests.integration.gated import GatedRuntime

pytestmark = pytest.mark.integration


def mlp_input(rows: int = 1) -> triton.InferInput:
    tensor = triton.InferInput("x", [rows, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 16), np.float32))
    return tensor


def set_policy(repository: Path, policy: str) -> None:
    config = repository / "mlp" / "config.pbtxt"
    text = config.read_text().replace("version_policy { latest { num_versions: 1 } }", policy)
    config.write_text(text)


def test_load_new_version_without_dropping_in_flight_requests(start_gateway, writable_repository):
    runtime = GatedRuntime()
    running = start_gateway(writable_repository, runtime=runtime)
    with triton.InferenceServerClient(running.address) as client:
        in_flight = running.submit(_infer_async, running.address)
        runtime.gate.wait_entered()
        write_model(writable_repository, "mlp", mlp_model(hidden=48), version=2)
        client.load_model("mlp")  # swaps to version 2 while version 1 still runs a request
        assert client.get_model_metadata("mlp").versions == ["2"]
        first_version = runtime.loaded[("mlp", 1)]
        assert not first_version.closed  # drained, not dropped
        runtime.gate.opened.set()
        assert in_flight.result(timeout=30) == "1"
        assert client.infer("mlp", [mlp_input()]).get_response().model_version == "2"
    assert first_version.closed


async def _infer_async(address: str) -> str:
    async with triton_aio.InferenceServerClient(address) as client:
        result = await client.infer("mlp", [mlp_input()])
        return str(result.get_response().model_version)


def test_version_policy_all_and_specific(start_gateway, writable_repository):
    write_model(writable_repository, "mlp", mlp_model(), version=2)
    write_model(writable_repository, "mlp", mlp_model(), version=3)
    set_policy(writable_repository, "version_policy { all { } }")
    running = start_gateway(writable_repository)
    with triton.InferenceServerClient(running.address) as client:
        assert client.get_model_metadata("mlp").versions == ["3", "2", "1"]
        assert (
            client.infer("mlp", [mlp_input()], model_version="2").get_response().model_version
            == "2"
        )
        assert client.infer("mlp", [mlp_input()]).get_response().model_version == "3"
        set_policy(writable_repository, "version_policy { all { } }")
        config = writable_repository / "mlp" / "config.pbtxt"
        config.write_text(
            config.read_text().replace(
                "version_policy { all { } }", "version_policy { specific { versions: [1, 3] } }"
            )
        )
        client.load_model("mlp")
        assert client.get_model_metadata("mlp").versions == ["3", "1"]
        assert client.is_model_ready("mlp", "1")
        assert not client.is_model_ready("mlp", "2")
        with pytest.raises(InferenceServerException, match="not loaded"):
            client.infer("mlp", [mlp_input()], model_version="2")


def test_latest_policy_serves_newest_by_default(start_gateway, writable_repository):
    write_model(writable_repository, "mlp", mlp_model(), version=5)
    running = start_gateway(writable_repository)
    with triton.InferenceServerClient(running.address) as client:
        assert client.get_model_metadata("mlp").versions == ["5"]


def test_load_with_config_override(start_gateway, writable_repository):
    running = start_gateway(writable_repository)
    with triton.InferenceServerClient(running.address) as client:
        client.load_model("stats", config='{"max_batch_size": 4}')
        assert client.get_model_config("stats").config.max_batch_size == 4
        tensor = triton.InferInput("x", [5, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((5, 8), np.float32))
        with pytest.raises(InferenceServerException, match=r"outside 1\.\.4"):
            client.infer("stats", [tensor])


def test_failed_reload_keeps_the_old_version_serving(start_gateway, writable_repository):
    running = start_gateway(writable_repository)
    with triton.InferenceServerClient(running.address) as client:
        (writable_repository / "mlp" / "2").mkdir()
        (writable_repository / "mlp" / "2" / "model.onnx").write_bytes(b"\x00garbage")
        with pytest.raises(InferenceServerException, match="could not load"):
            client.load_model("mlp")
        assert client.infer("mlp", [mlp_input()]).get_response().model_version == "1"


def test_stop_drains_in_flight_requests_and_reports_not_serving(start_gateway, sample_repository):
    runtime = GatedRuntime()
    running = start_gateway(sample_repository, runtime=runtime)
    address = running.address
    in_flight = running.submit(_infer_async, address)
    runtime.gate.wait_entered()
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopping = running.submit(running.gateway.stop, 30.0)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert not running.gateway.data.ready()
        assert not stopping.done()  # waiting for the request in flight
        with pytest.raises(grpc.RpcError):  # no new RPCs while draining
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    runtime.gate.opened.set()
    assert in_flight.result(timeout=30) == "1"
    stopping.result(timeout=30)
    with (
        triton.InferenceServerClient(address) as client,
        pytest.raises(InferenceServerException, match=r"UNAVAILABLE|connect"),
    ):
        client.is_server_live(client_timeout=2)


def test_sigterm_drains_and_exits_cleanly(sample_repository):
    command = [
        sys.executable, "-m", "edgefabric.cli", "gateway", "serve",
        "--model-repository", str(sample_repository), "--grpc-port", "0", "--metrics-port", "-1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        address = line.rsplit(" ", 1)[1].strip()
        with triton.InferenceServerClient(address) as client:
            assert client.infer("mlp", [mlp_input()]).as_numpy("logits").shape == (1, 8)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 0
