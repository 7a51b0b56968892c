"""Request limits: oversized or absurd tensors are refused with a message naming the limit.

A gateway with small limits shows each one (INVALID_ARGUMENT, what was asked, what the server
takes, which setting); the default gateway shows that shapes numpy cannot hold are bad input,
not internal errors, and that a stream reads no further than ``max_stream_in_flight``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from queue import Queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from edgefabric.inference import Tensors
from edgefabric.kserve.limits import RequestLimits
from edgefabric.runtime.base import RunTimings
from edgefabric.runtime.onnx import OrtModel
from tests.conftest import GatewayThread, settings_for
from tests.integration.gated import Gate, GatedModel, GatedRuntime

pytestmark = pytest.mark.integration

SMALL = {
    "max_inputs": 2,
    "max_outputs": 2,
    "max_rank": 4,
    "max_tensor_elements": 4096,
    "max_bytes_elements": 8,
    "max_bytes_element_bytes": 64,
}


@pytest.fixture(scope="module")
def small(sample_repository: Path) -> Iterator[GatewayThread]:
    running = GatewayThread(settings_for(sample_repository, **SMALL))
    yield running
    running.close()


@pytest.fixture(scope="module")
def small_stub(small: GatewayThread) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(small.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def default_stub(
    shared_gateway: GatewayThread,
) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(shared_gateway.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def refused(stub, request: pb.ModelInferRequest) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    return str(raised.value.details())


def fp32_request(shape: Sequence[int], name: str = "x", model: str = "mlp") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=list(shape))
    request.raw_input_contents.append(bytes(4 * int(np.prod(shape))))
    return request


def text_input(strings: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(strings)], "BYTES")
    tensor.set_data_from_numpy(np.array(strings, dtype=np.object_))
    return tensor


def triton_refusal(address: str, model: str, inputs, outputs=None) -> str:
    with (
        triton.InferenceServerClient(address) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.infer(model, inputs, outputs=outputs, client_timeout=30)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT", raised.value.message()
    return str(raised.value.message())


# --- each limit, on a gateway with small ones -------------------------------------------


def test_requests_within_the_limits_are_served(small: GatewayThread) -> None:
    with triton.InferenceServerClient(small.address) as client:
        tensor = triton.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
        assert client.infer("mlp", [tensor]).as_numpy("logits").shape == (2, 8)
        strings = [b"a" * 64, b"bc", b""]
        answer = client.infer("text", [text_input(strings)]).as_numpy("same")
        assert answer.tolist() == strings


def test_too_many_inputs(small_stub) -> None:
    request = fp32_request([1, 16])
    for name in ("y", "z"):
        request.inputs.add(name=name, datatype="FP32", shape=[1])
        request.raw_input_contents.append(bytes(4))
    assert refused(small_stub, request) == (
        "request has 3 inputs, more than the 2 this server accepts (max_inputs)"
    )


def test_too_many_requested_outputs(small: GatewayThread) -> None:
    tensor = triton.InferInput("x", [1, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 8), np.float32))
    outputs = [triton.InferRequestedOutput(name) for name in ("total", "peak", "argmax")]
    message = triton_refusal(small.address, "stats", [tensor], outputs)
    assert message == (
        "request has 3 requested outputs, more than the 2 this server accepts (max_outputs)"
    )


def test_rank_over_the_limit(small_stub) -> None:
    assert refused(small_stub, fp32_request([1, 1, 1, 1, 16])) == (
        "input 'x': shape has 5 dimensions, more than the 4 this server accepts (max_rank)"
    )


def test_tensor_elements_over_the_limit(small: GatewayThread) -> None:
    tensor = triton.InferInput("x", [300, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((300, 16), np.float32))
    message = triton_refusal(small.address, "mlp", [tensor])
    assert message == (
        "input 'x': shape [300,16] has 4800 elements, more than the 4096 this server accepts "
        "per tensor (max_tensor_elements); send smaller batches"
    )


def test_a_zero_dimension_does_not_hide_a_huge_one(small_stub) -> None:
    request = fp32_request([0, 2**40])
    assert refused(small_stub, request) == (
        f"input 'x': shape [0,{2**40}] spans {2**40} (zero dimensions aside) elements, more "
        "than the 4096 this server accepts per tensor (max_tensor_elements); send smaller batches"
    )


def test_too_many_bytes_elements(small: GatewayThread) -> None:
    message = triton_refusal(small.address, "text", [text_input([b"s"] * 9)])
    assert message == (
        "request has 9 BYTES elements, more than the 8 this server accepts "
        "(max_bytes_elements); send fewer strings per request"
    )


def test_bytes_element_over_the_size_limit(small: GatewayThread) -> None:
    message = triton_refusal(small.address, "text", [text_input([b"ok", b"a" * 65])])
    assert message == (
        "input 'text': BYTES element 1 is 65 bytes, more than the 64 this server accepts "
        "per element (max_bytes_element_bytes)"
    )


def test_typed_bytes_element_over_the_size_limit(small_stub) -> None:
    request = pb.ModelInferRequest(model_name="text")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"a" * 100)
    assert "BYTES element 0 is 100 bytes, more than the 64" in refused(small_stub, request)


def test_limits_apply_on_a_stream_too(small: GatewayThread) -> None:
    answers: Queue[tuple[object, object]] = Queue()
    with triton.InferenceServerClient(small.address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("text", [text_input([b"s"] * 9)], request_id="big")
        client.async_stream_infer("text", [text_input([b"s"])], request_id="fine")
        got = [answers.get(timeout=30) for _ in range(2)]
        client.stop_stream()
    errors = [str(error) for result, error in got if error is not None]
    results = [result for result, error in got if error is None]
    assert len(errors) == 1
    assert "request has 9 BYTES elements" in errors[0]
    assert [r.get_response().id for r in results] == ["fine"]  # type: ignore[attr-defined]


# --- the default limits ------------------------------------------------------------------


def test_rank_numpy_cannot_hold_is_bad_input_not_internal(default_stub) -> None:
    # numpy stops at 64 dimensions; before the limit this reached reshape() and was INTERNAL.
    message = refused(default_stub, fp32_request([1] * 65))
    assert "shape has 65 dimensions, more than the 32 this server accepts" in message


def test_empty_tensor_with_an_absurd_extent_is_bad_input(default_stub) -> None:
    # [0, 2**62] holds nothing, but numpy refused to describe it ("array is too big").
    message = refused(default_stub, fp32_request([0, 2**62]))
    assert "max_tensor_elements" in message


def test_a_message_of_empty_strings_is_refused_before_it_is_split(default_stub) -> None:
    count = (1 << 20) + 1
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="text", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(bytes(4 * count))
    assert refused(default_stub, request) == (
        f"request has {count} BYTES elements, more than the {1 << 20} this server accepts "
        "(max_bytes_elements); send fewer strings per request"
    )


def test_client_chosen_names_are_cut_in_messages(default_stub) -> None:
    request = fp32_request([1] * 65, name="n" * 100_000)
    message = refused(default_stub, request)
    assert message.startswith("input '" + "n" * 63)
    assert len(message) < 300


def test_limits_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, sample_repository: Path
) -> None:
    monkeypatch.setenv("EDGEFABRIC_GATEWAY_MAX_TENSOR_ELEMENTS", "1000")
    monkeypatch.setenv("EDGEFABRIC_GATEWAY_MAX_STREAM_IN_FLIGHT", "7")
    limits = settings_for(sample_repository).request_limits()
    assert limits == RequestLimits(max_tensor_elements=1000, max_stream_in_flight=7)
    with pytest.raises(ValueError, match="max_rank"):
        settings_for(sample_repository, max_rank=65)


# --- stream backpressure -----------------------------------------------------------------


class CountingModel(GatedModel):
    """Counts executions that reached the gate."""

    def __init__(self, inner: OrtModel, gate: Gate, counter: Counter) -> None:
        super().__init__(inner, gate)
        self._counter = counter

    async def infer(
        self, inputs: Tensors, output_names: Sequence[str]
    ) -> tuple[Tensors, RunTimings]:
        self._counter.bump()
        return await super().infer(inputs, output_names)


class Counter:
    def __init__(self, fires_at: int) -> None:
        self._lock = threading.Lock()
        self.value = 0
        self.reached = threading.Event()
        self.exceeded = threading.Event()
        self._fires_at = fires_at

    def bump(self) -> None:
        with self._lock:
            self.value += 1
            if self.value >= self._fires_at:
                self.reached.set()
            if self.value > self._fires_at:
                self.exceeded.set()


class CountingRuntime(GatedRuntime):
    def __init__(self, fires_at: int) -> None:
        super().__init__()
        self.counter = Counter(fires_at)

    def load(self, path: Path, config: mc.ModelConfig) -> GatedModel:
        return CountingModel(self._inner.load(path, config), self.gate, self.counter)


def test_a_stream_reads_no_further_than_max_stream_in_flight(
    start_gateway, sample_repository: Path
) -> None:
    runtime = CountingRuntime(fires_at=3)
    running = start_gateway(sample_repository, runtime=runtime, max_stream_in_flight=3)
    answers: Queue[tuple[object, object]] = Queue()
    with triton.InferenceServerClient(running.address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        tensor = triton.InferInput("x", [1, 16], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
        for index in range(10):
            client.async_stream_infer("mlp", [tensor], request_id=str(index))
        assert runtime.counter.reached.wait(30)
        # Without the limit all ten are read and reach the gate within milliseconds.
        assert not runtime.counter.exceeded.wait(0.5)
        runtime.gate.opened.set()
        got = [answers.get(timeout=30) for _ in range(10)]
        client.stop_stream()
    assert all(error is None for _, error in got)
    assert runtime.counter.value == 10
