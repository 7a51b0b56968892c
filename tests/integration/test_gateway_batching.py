"""Dynamic batching through the real gateway and tritonclient: merging, shedding, deadlines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb

from edgefabric.samples import mlp_model, write_model
from tests.integration.gated import GatedRuntime

pytestmark = pytest.mark.integration

BATCHED = """\
name: "batched"
max_batch_size: 8
dynamic_batching {{
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: {delay_us}
  default_queue_policy {{ max_queue_size: {queue} }}
}}
"""


def batched_repository(root: Path, *, delay_us: int = 5_000_000, queue: int = 0) -> Path:
    write_model(root, "batched", mlp_model(), config=BATCHED.format(delay_us=delay_us, queue=queue))
    return root


def rows(seed: int, count: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 16)).astype(np.float32)


async def infer_many(address: str, inputs: list[np.ndarray], **kwargs) -> list[np.ndarray]:
    async with triton_aio.InferenceServerClient(address) as client:

        async def one(x: np.ndarray) -> np.ndarray:
            tensor = triton_aio.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = await client.infer("batched", [tensor], **kwargs)
            logits: np.ndarray = result.as_numpy("logits")
            return logits

        return list(await asyncio.gather(*(one(x) for x in inputs)))


def test_concurrent_requests_merge_into_one_batch_with_identical_results(start_gateway, tmp_path):
    running = start_gateway(batched_repository(tmp_path))
    inputs = [rows(1, 1), rows(2, 2), rows(3, 1)]  # 4 rows: the preferred size launches at once
    outputs = asyncio.run(infer_many(running.address, inputs))
    session = ort.InferenceSession(mlp_model().SerializeToString())
    for x, got in zip(inputs, outputs, strict=True):
        (alone,) = session.run(["logits"], {"x": x})
        np.testing.assert_array_equal(got, alone)
    with triton.InferenceServerClient(running.address) as client:
        stats = client.get_inference_statistics("batched").model_stats[0]
    assert stats.execution_count == 1
    assert stats.inference_count == 4
    assert stats.inference_stats.success.count == 3
    assert [b.batch_size for b in stats.batch_stats] == [4]


def test_full_queue_is_resource_exhausted_with_retry_hint(start_gateway, tmp_path):
    runtime = GatedRuntime()
    running = start_gateway(batched_repository(tmp_path, delay_us=0, queue=1), runtime=runtime)
    request = pb.ModelInferRequest(model_name="batched")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(rows(0).tobytes())

    async def scenario() -> list[object]:
        async with grpc.aio.insecure_channel(running.address) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            first = asyncio.ensure_future(call(request))  # runs, held at the gate
            await asyncio.get_running_loop().run_in_executor(None, runtime.gate.wait_entered)
            # Two more: one waits in the queue (size 1), the other is shed, whichever is first.
            others = [asyncio.ensure_future(call(request)) for _ in range(2)]
            await asyncio.wait(others, return_when=asyncio.FIRST_EXCEPTION)
            runtime.gate.opened.set()
            return list(await asyncio.gather(first, *others, return_exceptions=True))

    outcomes = asyncio.run(scenario())
    shed = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    answers = [o.model_name for o in outcomes if isinstance(o, pb.ModelInferResponse)]
    assert len(shed) == 1
    assert shed[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue" in (shed[0].details() or "")
    trailing: dict[str, str] = dict(shed[0].trailing_metadata() or ())  # type: ignore[arg-type]
    assert int(trailing["retry-after-ms"]) > 0
    assert answers == ["batched", "batched"]  # nothing admitted was lost
