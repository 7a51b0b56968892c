"""Fuzzing the KServe v2 request decoder: any ModelInferRequest decodes or is refused clearly.

``request_from_proto`` must return a request whose arrays have exactly the shapes asked for, or
raise InvalidInputError / UnsupportedError; never another exception, never a hang, and never
build more than the limits allow (shapes reach 2**63-1 and 70 dimensions here, contents stay
small, so a decoder that allocated by shape would fail the deadline or run out of memory).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.message import DecodeError
from hypothesis import assume, given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from edgefabric.errors import InvalidInputError, UnsupportedError
from edgefabric.inference import InferenceResponse
from edgefabric.kserve.converters import request_from_proto, response_to_proto
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.kserve.limits import DEFAULT_LIMITS, RequestLimits
from tests.fuzz.profile import FUZZ

pytestmark = pytest.mark.unit

CLEAR_ERRORS = (InvalidInputError, UnsupportedError)
NAMES = [*DATATYPES, "FLOAT", "", "fp32", "BYTES\x00", "STRING"]
EDGE_DIMS = [2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63), -1]
dims = st.one_of(st.integers(-2, 6), st.sampled_from(EDGE_DIMS))
shapes = st.one_of(
    st.lists(dims, max_size=5),
    st.lists(st.integers(0, 2), min_size=30, max_size=70),  # ranks numpy cannot hold
)
TYPED_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=16),
}
PARAMETER_KINDS = {
    "bool_param": st.booleans(),
    "int64_param": st.integers(-(2**63), 2**63 - 1),
    "uint64_param": st.integers(0, 2**64 - 1),
    "string_param": st.text(max_size=8),
    "double_param": st.floats(),
}


def _count(shape: list[int]) -> int | None:
    """Elements of ``shape`` when small enough to build contents for, else None."""
    if any(d < 0 for d in shape):
        return None
    count = int(np.prod(shape, dtype=object)) if shape else 1
    return count if count <= 64 else None


@st.composite
def length_prefixed(draw: st.DrawFn, count: int) -> bytes:
    """BYTES contents of ``count`` elements, sometimes with a lying or cut length prefix."""
    elements = draw(st.lists(st.binary(max_size=8), min_size=count, max_size=count))
    parts = []
    for element in elements:
        length = len(element)
        if draw(st.integers(0, 20)) == 0:
            length = draw(st.sampled_from([len(element) + 1, 2**32 - 1, 2**31, 0]))
        parts.append(struct.pack("<I", length) + element)
    raw = b"".join(parts)
    cut = draw(st.sampled_from([None, None, None, -1, -3, 2]))
    return raw if cut is None else raw[:cut]


@st.composite
def raw_contents(draw: st.DrawFn, datatype: str, shape: list[int]) -> bytes:
    count = _count(shape)
    known = DATATYPES.get(datatype)
    if count is None or known is None or draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=256))
    if known.itemsize is None:
        return draw(length_prefixed(count))
    size = count * known.itemsize + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
    return draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Requests that are mostly well-formed, each with a few things wrong (or not)."""
    msg = pb.ModelInferRequest(model_name=draw(st.sampled_from(["m"] * 8 + ["", "m" * 100])))
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        datatype = draw(st.sampled_from(NAMES))
        shape = draw(shapes)
        tensor = msg.inputs.add(
            name=draw(st.sampled_from(["x", "y", "", "x" * 200])), datatype=datatype, shape=shape
        )
        if draw(st.integers(0, 15)) == 0:
            tensor.parameters["shared_memory_region"].string_param = "r"
        if use_raw:
            msg.raw_input_contents.append(draw(raw_contents(datatype, shape)))
            continue
        known = DATATYPES.get(datatype)
        count = _count(shape)
        field = (
            known.contents_field
            if known is not None and known.contents_field and draw(st.integers(0, 4))
            else draw(st.sampled_from(sorted(TYPED_VALUES)))
        )
        size = count if count is not None else draw(st.integers(0, 8))
        values = draw(st.lists(TYPED_VALUES[field], min_size=size, max_size=size + 1))
        getattr(tensor.contents, field).extend(values)
    if draw(st.integers(0, 8)) == 0:
        msg.raw_input_contents.append(b"\x00" * 4)  # one raw entry too many (or the only one)
    for _ in range(draw(st.integers(0, 3))):
        output = msg.outputs.add(name=draw(st.sampled_from(["y", "z", "y"])))
        if draw(st.integers(0, 10)) == 0:
            output.parameters["classification"].int64_param = 3
    keys = st.sampled_from(["priority", "timeout", "sequence_id", "k"])
    for key in draw(st.lists(keys, max_size=2)) if draw(st.integers(0, 3)) == 0 else ():
        kind = draw(st.sampled_from(sorted(PARAMETER_KINDS)))
        setattr(msg.parameters[key], kind, draw(PARAMETER_KINDS[kind]))
    return msg


small_limits = st.builds(
    RequestLimits,
    max_inputs=st.integers(1, 4),
    max_outputs=st.integers(1, 3),
    max_rank=st.integers(1, 6),
    max_tensor_elements=st.integers(1, 64),
    max_bytes_elements=st.integers(1, 64),
    max_bytes_element_bytes=st.integers(1, 16),
)


def check_decodes_or_refuses(msg: pb.ModelInferRequest, limits: RequestLimits) -> None:
    try:
        decoded = request_from_proto(msg, now_s=0.0, time_remaining_s=1.0, limits=limits)
    except CLEAR_ERRORS as error:
        message = str(error)
    else:
        message = ""
    if message:
        assert len(message) < 1000, "client-chosen text must not flood the message"
        return
    assert len(decoded.inputs) == len(msg.inputs) <= limits.max_inputs
    for tensor in msg.inputs:
        array = decoded.inputs[tensor.name]
        assert array.shape == tuple(tensor.shape)
        assert array.size <= limits.max_tensor_elements
        assert array.dtype == DATATYPES[tensor.datatype].numpy
    response = InferenceResponse(model_name="m", model_version="1", outputs=decoded.inputs)
    assert len(response_to_proto(response).raw_output_contents) == len(decoded.inputs)


@FUZZ
@given(infer_requests())
def test_adversarial_requests_decode_or_are_refused_clearly(msg: pb.ModelInferRequest) -> None:
    check_decodes_or_refuses(msg, DEFAULT_LIMITS)


@FUZZ
@given(infer_requests(), small_limits)
def test_every_limit_holds_or_is_refused_clearly(
    msg: pb.ModelInferRequest, limits: RequestLimits
) -> None:
    check_decodes_or_refuses(msg, limits)


@FUZZ
@given(st.binary(max_size=512))
def test_random_wire_bytes_decode_or_are_refused_clearly(payload: bytes) -> None:
    try:
        msg = pb.ModelInferRequest.FromString(payload)
    except DecodeError:
        return  # gRPC's deserializer answers these before the servicer runs
    check_decodes_or_refuses(msg, DEFAULT_LIMITS)


SAMPLE_TYPES = {
    "BOOL": st.booleans(),
    "INT8": st.integers(-128, 127),
    "UINT16": st.integers(0, 2**16 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "UINT64": st.integers(0, 2**64 - 1),
    "FP16": st.floats(width=16, allow_nan=False),
    "FP32": st.floats(width=32, allow_nan=False),
    "FP64": st.floats(allow_nan=False),
    "BYTES": st.binary(max_size=12),
}


@st.composite
def client_tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    name = draw(st.sampled_from(sorted(SAMPLE_TYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    count = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(SAMPLE_TYPES[name], min_size=count, max_size=count))
    if name == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = values
        return name, array.reshape(shape)
    return name, np.array(values, dtype=DATATYPES[name].numpy).reshape(shape)


@FUZZ
@given(client_tensors())
def test_what_tritonclient_sends_decodes_to_the_same_array(sample: tuple[str, np.ndarray]) -> None:
    name, array = sample
    assume(name != "BYTES" or array.size > 0 or array.ndim > 0)
    tensor = triton.InferInput("x", list(array.shape), name)
    tensor.set_data_from_numpy(array)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.append(tensor._get_tensor())
    msg.raw_input_contents.append(tensor._get_content())
    decoded = request_from_proto(msg, now_s=0.0, time_remaining_s=None).inputs["x"]
    assert decoded.shape == array.shape
    if name == "BYTES":
        assert decoded.tolist() == array.tolist()
    else:
        np.testing.assert_array_equal(decoded, array)
