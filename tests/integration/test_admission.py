"""Early admission through a real gRPC server: a refusal is a status, sent before decoding."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from edgefabric.dataplane import DataPlane
from edgefabric.kserve.admission import AdmissionConfig
from edgefabric.kserve.server import ServerOptions, start_server
from edgefabric.models.repository import ModelRepository
from edgefabric.samples import mlp_model, write_model
from tests.integration.gated import GatedRuntime

pytestmark = pytest.mark.integration


def test_past_max_in_flight_is_refused_at_once_with_a_retry_hint(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    runtime = GatedRuntime()

    async def scenario() -> None:
        repository = ModelRepository(tmp_path, runtime)
        await repository.load_all()
        data = DataPlane(repository)
        admission = AdmissionConfig(max_in_flight=1, min_in_flight=1)
        server = await start_server(data, ServerOptions(admission=admission))
        try:
            async with triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
                tensor = triton_aio.InferInput("x", [1, 16], "FP32")
                tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
                held = asyncio.ensure_future(client.infer("mlp", [tensor]))
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, runtime.gate.wait_entered)
                with pytest.raises(InferenceServerException) as refused:
                    await client.infer("mlp", [tensor])
                # A request naming no model at all is refused before it is looked at.
                with pytest.raises(InferenceServerException) as undecoded:
                    await client.infer("no-such-model", [tensor])
                runtime.gate.opened.set()
                result = await held
                assert result.as_numpy("logits").shape[0] == 1
                await client.infer("mlp", [tensor])  # admitted again once the slot is free
        finally:
            runtime.gate.opened.set()
            await server.stop(1.0)
            repository.close()
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "1 requests in flight" in refused.value.message()
        assert "retry after" in refused.value.message()
        assert undecoded.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        shed = data.metrics.batch_shed.labels("", "", "admission_in_flight")._value.get()
        assert shed == 2

    asyncio.run(scenario())


def test_refusal_carries_retry_after_trailer(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    runtime = GatedRuntime()

    async def scenario() -> grpc.aio.AioRpcError:
        repository = ModelRepository(tmp_path, runtime)
        await repository.load_all()
        admission = AdmissionConfig(max_in_flight=1, min_in_flight=1)
        server = await start_server(DataPlane(repository), ServerOptions(admission=admission))
        request = triton_aio.service_pb2.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                call = channel.unary_unary(
                    "/inference.GRPCInferenceService/ModelInfer",
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=type(request).FromString,
                )
                held = asyncio.ensure_future(call(request))
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, runtime.gate.wait_entered)
                try:
                    await call(request)
                except grpc.aio.AioRpcError as exc:
                    error = exc
                else:
                    raise AssertionError("the second request was not refused")
                runtime.gate.opened.set()
                await held
                return error
        finally:
            runtime.gate.opened.set()
            await server.stop(1.0)
            repository.close()

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing: dict[str, str] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
    assert int(trailing["retry-after-ms"]) >= 1
