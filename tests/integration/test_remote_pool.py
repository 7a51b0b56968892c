"""A remote KServe v2 pool against real edgefabric gateways (in-process and in another process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from edgefabric.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    TransportError,
)
from edgefabric.samples import MLP_CONFIG, mlp_model, write_model
from gateway.pools.remote import RemoteKServePool
from tests.integration.gated import GatedRuntime

pytestmark = pytest.mark.integration

QUEUE_OF_ONE = """\
name: "queued"
max_batch_size: 8
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
"""


@asynccontextmanager
async def started(
    address: str, name: str = "backend", **options: Any
) -> AsyncIterator[RemoteKServePool]:
    pool = RemoteKServePool(name, address, **options)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


async def until(pool: RemoteKServePool, condition: Callable[[], bool], timeout_s: float = 10.0):
    """Wait for ``condition`` to hold after one of the pool's changes (no polling)."""
    changed = asyncio.Event()
    remove = pool.add_listener(changed.set)
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await changed.wait()
                changed.clear()
    finally:
        remove()


def mlp_request(shape=(2, 16), seed: int = 0) -> pb.ModelInferRequest:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    request = pb.ModelInferRequest(model_name="mlp", id=f"req-{seed}")
    request.inputs.add(name="x", datatype="FP32", shape=list(shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def established_to(port: int) -> int:
    """Open TCP connections whose far end is ``port`` on this host (Linux /proc)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def test_discovery_reports_the_backends_models_with_metadata_and_config(
    start_gateway, sample_repository
):
    backend = start_gateway(sample_repository)
    with triton.InferenceServerClient(backend.address) as client:
        listed = {m.name for m in client.get_model_repository_index().models}
        direct_metadata = client.get_model_metadata("mlp")

    async def scenario() -> None:
        async with started(backend.address) as pool:
            assert pool.healthy
            models = pool.models()
            assert set(models) == listed
            mlp = models["mlp"]
            assert mlp.versions == ("1",)
            assert mlp.metadata == direct_metadata
            assert mlp.config is not None
            assert mlp.config.max_batch_size == 64
            assert [i.name for i in mlp.config.input] == ["x"]
            assert await pool.model_ready("mlp")
            assert await pool.metadata("mlp", "1") == direct_metadata
            assert (await pool.config("mlp")).name == "mlp"

    asyncio.run(scenario())


def test_infer_forwards_the_message_and_answers_as_the_backend_does(
    start_gateway, sample_repository
):
    backend = start_gateway(sample_repository)
    request = mlp_request()
    x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(2, 16)
    with triton.InferenceServerClient(backend.address) as client:
        tensor = triton.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(x)
        direct = client.infer("mlp", [tensor], request_id=request.id).get_response()
    words = pb.ModelInferRequest(model_name="identity_bytes")
    words.inputs.add(name="input", datatype="BYTES", shape=[1, 2])
    words.raw_input_contents.append(b"\x02\x00\x00\x00hi\x05\x00\x00\x00there")

    async def scenario() -> None:
        async with started(backend.address) as pool:
            assert await pool.infer(request, timeout_s=10) == direct
            echoed = await pool.infer(words, timeout_s=None)
            assert echoed.raw_output_contents == words.raw_input_contents
            stats = pool.stats()
            assert (stats.requests, stats.failures, stats.in_flight) == (2, 0, 0)
            assert stats.latency_ewma_s is not None
            assert stats.latency_ewma_s > 0

    asyncio.run(scenario())


def test_backend_errors_map_to_project_errors_keeping_the_backends_message(
    start_gateway, sample_repository
):
    backend = start_gateway(sample_repository)
    unknown = mlp_request()
    unknown.model_name = "nope"
    with (
        triton.InferenceServerClient(backend.address) as client,
        pytest.raises(InferenceServerException) as direct,
    ):
        client.get_model_metadata("nope")

    async def scenario() -> None:
        async with started(backend.address) as pool:
            with pytest.raises(ModelNotFoundError, match="nope"):
                await pool.infer(unknown, timeout_s=10)
            with pytest.raises(ModelNotFoundError) as metadata:
                await pool.metadata("nope")
            assert str(metadata.value) in str(direct.value.message())
            with pytest.raises(InvalidInputError) as bad_shape:
                await pool.infer(mlp_request(shape=(2, 15)), timeout_s=10)
            assert str(bad_shape.value) == "input 'x': expected shape [-1,16], got [2,15]"
            assert not await pool.model_ready("nope")
            assert pool.healthy  # the request's own faults eject nothing
            assert pool.stats().failures == 0

    asyncio.run(scenario())


def test_shed_request_is_overloaded_with_the_backends_retry_hint(start_gateway, tmp_path):
    write_model(tmp_path, "queued", mlp_model(), config=QUEUE_OF_ONE)
    runtime = GatedRuntime()
    backend = start_gateway(tmp_path, runtime=runtime)
    request = mlp_request(shape=(1, 16))
    request.model_name = "queued"

    async def scenario() -> list[object]:
        async with started(backend.address) as pool:
            try:
                first = asyncio.ensure_future(pool.infer(request, timeout_s=10))
                await asyncio.get_running_loop().run_in_executor(None, runtime.gate.wait_entered)
                # One more waits in the queue of one; the other is shed, whichever comes first.
                others = [asyncio.ensure_future(pool.infer(request, timeout_s=10)) for _ in "ab"]
                await asyncio.wait(others, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                runtime.gate.opened.set()
            outcomes = await asyncio.gather(first, *others, return_exceptions=True)
            assert pool.stats().failures == 1
            assert pool.healthy  # overload is not "down"
            return outcomes

    outcomes = asyncio.run(scenario())
    shed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(shed) == 1
    assert isinstance(shed[0], OverloadedError)
    assert "queue" in str(shed[0])
    assert shed[0].retry_after_ms > 0


def test_deadline_is_passed_to_the_backend(start_gateway, sample_repository):
    runtime = GatedRuntime()
    backend = start_gateway(sample_repository, runtime=runtime)

    async def scenario() -> None:
        async with started(backend.address) as pool:
            try:
                with pytest.raises(DeadlineExceededError):
                    await pool.infer(mlp_request(), timeout_s=0.2)
                assert runtime.gate.entered.is_set()  # it reached the backend and was held
                with pytest.raises(DeadlineExceededError, match="no time left"):
                    await pool.infer(mlp_request(), timeout_s=0.0)
            finally:
                runtime.gate.opened.set()
            assert pool.healthy
            stats = pool.stats()
            assert (stats.failures, stats.in_flight) == (2, 0)

    asyncio.run(scenario())


def test_lost_backend_is_a_transport_error_naming_the_pool_and_ejects_it(
    start_gateway, sample_repository
):
    backend = start_gateway(sample_repository)

    async def scenario() -> None:
        # No active check runs during the test: ejection here is passive.
        async with started(backend.address, "east", health_interval_s=600) as pool:
            await pool.infer(mlp_request(), timeout_s=10)
            backend.call(backend.gateway.stop, 0.0)
            with pytest.raises(TransportError, match="pool 'east'"):
                await pool.infer(mlp_request(), timeout_s=10)
            assert not pool.healthy
            assert pool.stats().failures == 1
            assert "pool 'east'" in pool.stats().last_error

    asyncio.run(scenario())


def test_health_loop_admits_a_late_backend_ejects_it_when_down_and_readmits_it(
    start_gateway, sample_repository
):
    first = start_gateway(sample_repository)
    port = first.gateway.port
    first.call(first.gateway.stop, 0.0)  # the backend is down when the pool starts

    async def scenario() -> None:
        async with started(f"grpc://127.0.0.1:{port}", health_interval_s=0.05) as pool:
            assert not pool.healthy
            assert pool.models() == {}
            second = start_gateway(sample_repository, grpc_port=port)
            await until(pool, lambda: pool.healthy and "mlp" in pool.models())
            second.call(second.gateway.stop, 0.0)
            await until(pool, lambda: not pool.healthy)  # found by the active check
            start_gateway(sample_repository, grpc_port=port)
            await until(pool, lambda: pool.healthy)
            response = await pool.infer(mlp_request(), timeout_s=10)
            assert response.model_name == "mlp"

    asyncio.run(scenario())


def test_requests_spread_over_separate_connections(start_gateway, sample_repository):
    backend = start_gateway(sample_repository)

    async def scenario() -> None:
        async with started(backend.address, channels=3) as pool:
            for seed in range(6):
                await pool.infer(mlp_request(seed=seed), timeout_s=10)
            assert pool.stats().per_channel == (2, 2, 2)
            assert established_to(backend.gateway.port) == 3  # not one shared connection

    asyncio.run(scenario())


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[str]:
    """``edgefabric gateway serve`` in its own process over an mlp repository; yields host:port."""
    write_model(tmp_path, "mlp", mlp_model(), config=MLP_CONFIG)
    command = [
        sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", "gateway", "serve",
        "--model-repository", str(tmp_path), "--grpc-port", "0", "--metrics-port", "-1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "edgefabric gateway listening on" in line, line
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def test_gateway_in_another_process_serves_as_a_pool(gateway_process):
    request = mlp_request(shape=(3, 16), seed=5)
    with triton.InferenceServerClient(gateway_process) as client:
        tensor = triton.InferInput("x", [3, 16], "FP32")
        tensor.set_data_from_numpy(
            np.frombuffer(request.raw_input_contents[0], np.float32).reshape(3, 16)
        )
        direct = client.infer("mlp", [tensor], request_id=request.id).get_response()

    async def scenario() -> None:
        async with started(gateway_process, "process") as pool:
            assert set(pool.models()) == {"mlp"}
            assert await pool.infer(request, timeout_s=10) == direct

    asyncio.run(scenario())
