"""The gateway through the real tritonclient: every RPC a Triton user calls, every datatype."""

from __future__ import annotations

import asyncio
import queue
import urllib.request
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from edgefabric.samples import IDENTITY_TYPES, mlp_model

pytestmark = pytest.mark.integration

NUMPY_OF = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@pytest.fixture(scope="module")
def client(shared_gateway):
    with triton.InferenceServerClient(shared_gateway.address) as c:
        yield c


def mlp_input(rows: int = 3) -> tuple[triton.InferInput, np.ndarray]:
    x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor, x


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "edgefabric"
    assert "model_repository" in metadata.extensions


def test_model_metadata_and_configs(client):
    assert client.is_model_ready("mlp")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata("mlp")
    assert meta.versions == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("logits", "FP32", [-1, 8])
    ]
    from_file = client.get_model_config("mlp").config
    assert from_file.max_batch_size == 64
    assert from_file.instance_group[0].kind == from_file.instance_group[0].KIND_CPU
    derived = client.get_model_config("cnn").config  # no config.pbtxt: derived from the graph
    assert derived.platform == "onnxruntime_onnx"
    assert derived.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in derived.input] == [("image", [3, 32, 32])]


def test_infer_matches_in_process_onnx_runtime(client):
    tensor, x = mlp_input(5)
    result = client.infer("mlp", [tensor], request_id="r-1")
    session = ort.InferenceSession(mlp_model().SerializeToString())
    (expected,) = session.run(["logits"], {"x": x})
    np.testing.assert_array_equal(result.as_numpy("logits"), expected)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r-1", "mlp", "1")


def test_requested_output_subset_keeps_order_and_alignment(client):
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    tensor = triton.InferInput("x", [2, 8], "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [triton.InferRequestedOutput("argmax"), triton.InferRequestedOutput("total")]
    result = client.infer("stats", [tensor], outputs=outputs)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["argmax", "total"]
    assert len(response.raw_output_contents) == 2
    np.testing.assert_array_equal(result.as_numpy("argmax"), [[7], [7]])
    np.testing.assert_array_equal(result.as_numpy("total"), x.sum(axis=1, keepdims=True))
    assert result.as_numpy("peak") is None


@pytest.mark.parametrize("datatype", [d for d in IDENTITY_TYPES if d != "BYTES"])
def test_every_fixed_width_datatype_round_trips_raw(client, datatype):
    x = np.arange(6).reshape(2, 3) % 2 if datatype == "BOOL" else np.arange(6).reshape(2, 3)
    x = x.astype(NUMPY_OF[datatype])
    tensor = triton.InferInput("input", [2, 3], datatype)
    tensor.set_data_from_numpy(x)
    result = client.infer(f"identity_{datatype.lower()}", [tensor])
    output = result.get_response().outputs[0]
    assert (output.datatype, list(output.shape)) == (datatype, [2, 3])
    raw = result.get_response().raw_output_contents[0]
    assert raw == x.tobytes()


def test_bytes_tensors_with_length_prefixes(client):
    words = np.array([b"edge", b"", b"fabric"], dtype=np.object_)
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(words)
    result = client.infer("text", [tensor])
    assert result.as_numpy("upper").tolist() == [b"EDGE", b"", b"FABRIC"]
    assert result.as_numpy("same").tolist() == [b"edge", b"", b"fabric"]


TYPED_CONTENTS = [
    ("BOOL", "bool_contents", [True, False, True, True]),
    ("UINT8", "uint_contents", [0, 1, 254, 255]),
    ("UINT16", "uint_contents", [0, 1, 2, 65535]),
    ("UINT32", "uint_contents", [0, 1, 2, 2**32 - 1]),
    ("UINT64", "uint64_contents", [0, 1, 2, 2**64 - 1]),
    ("INT8", "int_contents", [-128, 0, 1, 127]),
    ("INT16", "int_contents", [-(2**15), 0, 1, 2**15 - 1]),
    ("INT32", "int_contents", [-(2**31), 0, 1, 2**31 - 1]),
    ("INT64", "int64_contents", [-(2**63), 0, 1, 2**63 - 1]),
    ("FP32", "fp32_contents", [0.5, -1.25, 3.0, 1e-3]),
    ("FP64", "fp64_contents", [0.5, -1.25, 3.0, 1e-300]),
    ("BYTES", "bytes_contents", [b"a", b"", b"ccc", b"dd"]),
]


@pytest.fixture(scope="module")
def stub(shared_gateway):
    with grpc.insecure_channel(shared_gateway.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(("datatype", "field", "values"), TYPED_CONTENTS)
def test_typed_contents_are_accepted_for_every_datatype_that_has_them(
    stub, datatype, field, values
):
    request = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=[2, 2])
    getattr(tensor.contents, field).extend(values)
    response = stub.ModelInfer(request)
    if datatype == "BYTES":
        expected = b"".join(len(v).to_bytes(4, "little") + v for v in values)
    else:
        expected = np.array(values, dtype=NUMPY_OF[datatype]).tobytes()
    assert response.raw_output_contents[0] == expected


def test_priority_timeout_and_custom_parameters_are_accepted(client):
    tensor, _ = mlp_input()
    result = client.infer(
        "mlp",
        [tensor],
        priority=1,
        timeout=5_000_000,
        client_timeout=30,
        parameters={"tenant": "plant-7", "trace": True, "attempt": 2},
    )
    assert result.as_numpy("logits").shape == (3, 8)


def test_stream_answers_each_request_and_reports_errors_in_band(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index in range(3):
            tensor, _ = mlp_input(index + 1)
            client.async_stream_infer("mlp", [tensor], request_id=f"s-{index}")
        bad = triton.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        got = [answers.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    results = {r.get_response().id: r for r, e in got if e is None}
    errors = [e for r, e in got if e is not None]
    assert sorted(results) == ["s-0", "s-1", "s-2"]
    assert results["s-2"].as_numpy("logits").shape == (3, 8)
    assert len(errors) == 1
    assert "input 'x'" in errors[0].message()


def test_asyncio_client(shared_gateway):
    async def call() -> tuple[bool, np.ndarray]:
        async with triton_aio.InferenceServerClient(shared_gateway.address) as aio_client:
            tensor, _ = mlp_input(2)
            ready = await aio_client.is_model_ready("mlp")
            result = await aio_client.infer("mlp", [tensor])
            return ready, result.as_numpy("logits")

    ready, logits = asyncio.run(call())
    assert ready
    assert logits.shape == (2, 8)


def test_statistics_count_requests_rows_and_batches(client):
    before = client.get_inference_statistics("stats").model_stats[0]
    x = np.ones((4, 8), np.float32)
    tensor = triton.InferInput("x", [4, 8], "FP32")
    tensor.set_data_from_numpy(x)
    client.infer("stats", [tensor])
    client.infer("stats", [tensor])
    after = client.get_inference_statistics("stats").model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.inference_count - before.inference_count == 8
    assert after.execution_count - before.execution_count == 2
    assert after.last_inference > 0
    assert any(b.batch_size == 4 for b in after.batch_stats)
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} >= {"mlp", "stats", "cnn"}


def test_repository_index_lists_ready_models(client):
    index = client.get_model_repository_index()
    states = {(m.name, m.state) for m in index.models}
    assert ("mlp", "READY") in states
    assert ("identity_bf16", "READY") in states


def test_standard_health_service_and_reflection(shared_gateway):
    with grpc.insecure_channel(shared_gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflection.ServerReflectionInfo(iter([request])))
        names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_shared_memory_rpcs_are_unimplemented(client):
    with pytest.raises(InferenceServerException) as raised:
        client.get_system_shared_memory_status()
    assert raised.value.status() == "StatusCode.UNIMPLEMENTED"


def test_prometheus_metrics_endpoint(start_gateway, sample_repository: Path):
    running = start_gateway(sample_repository, metrics_port=0)
    with triton.InferenceServerClient(running.address) as c:
        tensor, _ = mlp_input()
        c.infer("mlp", [tensor])
    url = f"http://127.0.0.1:{running.gateway.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    assert 'edgefabric_inference_requests_total{code="OK",model="mlp",version="1"} 1.0' in text
