"""Bad input gets the right status and a message naming input, expectation and what arrived."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.gated import GatedRuntime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(shared_gateway):
    with grpc.insecure_channel(shared_gateway.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def mlp_request(shape=(2, 16), datatype="FP32", raw: bytes | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype=datatype, shape=list(shape))
    count = int(np.prod(shape))
    request.raw_input_contents.append(raw if raw is not None else bytes(4 * count))
    return request


def rejects(stub, request: pb.ModelInferRequest, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request)
    assert raised.value.code() == code, raised.value.details()
    return str(raised.value.details())


def test_wrong_datatype(stub):
    message = rejects(stub, mlp_request(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "input 'x': expected datatype FP32, got INT32"


def test_wrong_shape(stub):
    message = rejects(stub, mlp_request(shape=(2, 15)), grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "input 'x': expected shape [-1,16], got [2,15]"


def test_batch_over_max_batch_size(stub):
    message = rejects(stub, mlp_request(shape=(65, 16)), grpc.StatusCode.INVALID_ARGUMENT)
    assert "batch of 65 rows" in message
    assert "max_batch_size" in message


def test_raw_length_not_matching_shape(stub):
    request = mlp_request(raw=bytes(20))
    message = rejects(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "input 'x': shape [2,16] needs 128 bytes of FP32, got 20"


def test_missing_input(stub):
    request = pb.ModelInferRequest(model_name="mlp")
    message = rejects(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "model 'mlp': missing input 'x' (FP32 [-1,16])"


def test_unknown_input(stub):
    request = mlp_request()
    request.inputs.add(name="y", datatype="FP32", shape=[2, 16])
    request.raw_input_contents.append(bytes(128))
    message = rejects(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "unknown input 'y'" in message
    assert "['x']" in message


def test_both_raw_and_typed_contents(stub):
    request = mlp_request()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 32)
    message = rejects(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "both raw_input_contents and typed contents" in message


def test_unknown_datatype_name(stub):
    message = rejects(stub, mlp_request(datatype="FLOAT"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "unknown datatype 'FLOAT'" in message


def test_malformed_bytes_length_prefix(stub):
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="text", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(
        (3).to_bytes(4, "little") + b"abc" + (99).to_bytes(4, "little")
    )
    message = rejects(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "input 'text': BYTES element 1 declares 99 bytes but only 0 remain"


def test_bytes_that_are_not_utf8_for_a_string_model(stub):
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append((2).to_bytes(4, "little") + b"\xff\xfe")
    message = rejects(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "not valid UTF-8" in message


def test_unknown_model_is_not_found(stub):
    request = mlp_request()
    request.model_name = "resnet"
    message = rejects(stub, request, grpc.StatusCode.NOT_FOUND)
    assert "unknown model 'resnet'" in message


def test_unknown_version_is_not_found(stub):
    request = mlp_request()
    request.model_version = "7"
    message = rejects(stub, request, grpc.StatusCode.NOT_FOUND)
    assert message == "model 'mlp' has no version 7; loaded versions: [1]"


def test_bad_priority_parameter(stub):
    request = mlp_request()
    request.parameters["priority"].string_param = "high"
    message = rejects(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "parameter 'priority'" in message


def test_server_survives_every_bad_request(shared_gateway, stub):
    for request in (
        mlp_request(raw=b""),
        pb.ModelInferRequest(),
        mlp_request(shape=(-1, 16), raw=b""),
    ):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request)
    with triton.InferenceServerClient(shared_gateway.address) as client:
        assert client.is_server_live()
        assert client.is_model_ready("mlp")


def test_unloaded_model_is_unavailable(start_gateway, writable_repository: Path):
    running = start_gateway(writable_repository)
    with triton.InferenceServerClient(running.address) as client:
        client.unload_model("stats")
        assert not client.is_model_ready("stats")
        tensor = triton.InferInput("x", [1, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 8), np.float32))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("stats", [tensor])
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        assert "model 'stats' is UNAVAILABLE: unloaded" in raised.value.message()


def test_model_that_fails_to_load_is_unavailable_with_reason(start_gateway, writable_repository):
    (writable_repository / "cnn" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    running = start_gateway(writable_repository)
    with triton.InferenceServerClient(running.address) as client:
        assert client.is_model_ready("mlp")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["cnn"].state == "UNAVAILABLE"
        assert "could not load the model" in index["cnn"].reason
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_metadata("cnn")
        assert raised.value.status() == "StatusCode.UNAVAILABLE"


def test_message_over_size_limit(start_gateway, sample_repository):
    running = start_gateway(sample_repository, max_message_bytes=64 * 1024)
    with grpc.insecure_channel(running.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        big = mlp_request(shape=(64, 16), raw=bytes(4 * 64 * 16))
        big.raw_input_contents[0] = bytes(100 * 1024)
        message = rejects(stub, big, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "larger than max" in message
        assert stub.ModelInfer(mlp_request()).model_name == "mlp"


def test_unexpected_error_is_internal_with_correlation_id_and_no_trace(
    start_gateway, sample_repository
):
    runtime = GatedRuntime()
    runtime.gate.fail_with = RuntimeError("secret detail /etc/passwd")
    runtime.gate.opened.set()
    running = start_gateway(sample_repository, runtime=runtime)
    with grpc.insecure_channel(running.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = rejects(stub, mlp_request(), grpc.StatusCode.INTERNAL)
    assert message.startswith("internal error; correlation id ")
    assert "secret" not in message
    assert "Traceback" not in message


def test_deadline_exceeded_when_the_client_deadline_passes(start_gateway, sample_repository):
    runtime = GatedRuntime()
    running = start_gateway(sample_repository, runtime=runtime)
    with triton.InferenceServerClient(running.address) as client:
        tensor = triton.InferInput("x", [1, 16], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
        try:
            with pytest.raises(InferenceServerException) as raised:
                client.infer("mlp", [tensor], client_timeout=0.2)
        finally:
            runtime.gate.opened.set()
    assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"
