"""Early admission through a real gRPC server: a refusal is a status, sent before decoding."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from edgefabric.cli import build_parser
from edgefabric.dataplane import DataPlane
from edgefabric.kserve.admission import AdmissionConfig
from edgefabric.kserve.server import ServerOptions, start_server
from edgefabric.models.repository import ModelRepository
from edgefabric.samples import mlp_model, write_model
from tests.conftest import settings_for
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


def test_gateway_settings_cap_calls_in_flight(start_gateway, tmp_path: Path) -> None:
    """``admission_max_in_flight`` (``--admission-max-in-flight``) reaches the server."""
    write_model(tmp_path, "mlp", mlp_model())
    runtime = GatedRuntime()
    running = start_gateway(
        tmp_path, runtime=runtime, admission_max_in_flight=1, admission_min_in_flight=1
    )
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())

    async def scenario() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            held = asyncio.ensure_future(stub(request, timeout=30))
            await asyncio.to_thread(runtime.gate.wait_entered)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub(request, timeout=30)
            finally:
                runtime.gate.opened.set()
            await held
            return refused.value

    refused = asyncio.run(scenario())
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit (max_in_flight)" in (refused.details() or "")


def test_admission_flags_parse_and_bad_values_are_explained(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["gateway", "serve", "--model-repository", str(tmp_path), "--admission-max-in-flight",
         "64", "--admission-min-in-flight", "8"]
    )  # fmt: skip
    given = {k: v for k, v in vars(args).items() if v is not None}
    settings = settings_for(tmp_path, **{k: given[k] for k in given if k.startswith("admission")})
    assert (settings.admission_max_in_flight, settings.admission_min_in_flight) == (64, 8)
    for field, bad in (("admission_min_in_flight", 0), ("admission_max_in_flight", -1)):
        with pytest.raises(ValidationError, match=field):
            settings_for(tmp_path, **{field: bad})
