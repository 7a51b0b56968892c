"""protobuf <-> domain conversions, built with the same generated modules tritonclient uses."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import _utils as triton_utils
from tritonclient.grpc import service_pb2 as pb

from edgefabric.errors import InvalidInputError, UnsupportedError
from edgefabric.inference import InferenceResponse
from edgefabric.kserve.converters import (
    index_to_proto,
    metadata_to_proto,
    parameters_from_proto,
    request_from_proto,
    response_to_proto,
    statistics_to_proto,
)
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.models.repository import IndexEntry, ModelState
from edgefabric.models.signature import ModelSignature, TensorSpec
from edgefabric.runtime.base import RunTimings
from edgefabric.stats import VersionStats

pytestmark = pytest.mark.unit

NOW = 1000.0
TYPED = [name for name, dt in DATATYPES.items() if dt.contents_field is not None]
RAW_ONLY = [name for name, dt in DATATYPES.items() if dt.contents_field is None]
TYPED_VALUES: dict[str, list[object]] = {
    "BOOL": [True, False, False, True],
    "UINT8": [0, 7, 200, 255],
    "UINT16": [0, 7, 60000, 65535],
    "UINT32": [0, 7, 2**31, 2**32 - 1],
    "UINT64": [0, 7, 2**63, 2**64 - 1],
    "INT8": [-128, -7, 0, 127],
    "INT16": [-(2**15), -7, 0, 2**15 - 1],
    "INT32": [-(2**31), -7, 0, 2**31 - 1],
    "INT64": [-(2**63), -7, 0, 2**63 - 1],
    "FP32": [0.5, -1.25, 0.0, 2.0**100],
    "FP64": [0.1, -1e300, 0.0, 2.0**-1000],
    "BYTES": [b"a", b"", b"\xff\xfe", "héllo".encode()],
}


def _request(**kwargs: object) -> pb.ModelInferRequest:
    kwargs.setdefault("model_name", "m")
    return pb.ModelInferRequest(**kwargs)


def _decode(msg: pb.ModelInferRequest, time_remaining_s: float | None = None):
    return request_from_proto(msg, now_s=NOW, time_remaining_s=time_remaining_s)


def _sample(name: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if name == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [f"e{i}".encode() for i in range(count)]
        return array.reshape(shape)
    values = np.arange(count).reshape(shape)
    return (values % 2 if name == "BOOL" else values).astype(DATATYPES[name].numpy)


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return array.tobytes()


# --- inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATATYPES))
def test_raw_contents_for_every_datatype(name: str) -> None:
    array = _sample(name, (2, 3))
    msg = _request()
    msg.inputs.add(name="x", datatype=name, shape=[2, 3])
    msg.raw_input_contents.append(_raw(array))
    decoded = _decode(msg).inputs["x"]
    assert decoded.dtype == DATATYPES[name].numpy
    assert decoded.shape == (2, 3)
    assert decoded.tolist() == array.tolist()


@pytest.mark.parametrize("name", TYPED)
def test_typed_contents_for_every_datatype_that_allows_them(name: str) -> None:
    values = TYPED_VALUES[name]
    msg = _request()
    tensor = msg.inputs.add(name="x", datatype=name, shape=[2, 2])
    getattr(tensor.contents, str(DATATYPES[name].contents_field)).extend(values)
    decoded = _decode(msg).inputs["x"]
    assert decoded.dtype == DATATYPES[name].numpy
    assert decoded.shape == (2, 2)
    assert decoded.reshape(-1).tolist() == values


@pytest.mark.parametrize("name", RAW_ONLY)
def test_fp16_and_bf16_typed_contents_are_rejected(name: str) -> None:
    assert name in {"FP16", "BF16"}
    msg = _request()
    tensor = msg.inputs.add(name="x", datatype=name, shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInputError) as info:
        _decode(msg)
    assert str(info.value) == (
        f"input 'x': {name} travels only as raw_input_contents, not typed contents"
    )


def test_typed_values_in_the_wrong_field_count_as_missing() -> None:
    msg = _request()
    tensor = msg.inputs.add(name="x", datatype="FP32", shape=[2])
    tensor.contents.int_contents.extend([1, 2])
    with pytest.raises(InvalidInputError, match=r"shape \[2\] needs 2 FP32 values, got 0"):
        _decode(msg)


def test_typed_out_of_range_int8_is_invalid_input() -> None:
    msg = _request()
    tensor = msg.inputs.add(name="x", datatype="INT8", shape=[2])
    tensor.contents.int_contents.extend([1, 200])
    with pytest.raises(InvalidInputError, match="input 'x': values do not fit INT8"):
        _decode(msg)


def test_raw_and_typed_for_one_input_is_rejected() -> None:
    msg = _request()
    tensor = msg.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    msg.raw_input_contents.append(struct.pack("<f", 1.0))
    with pytest.raises(InvalidInputError) as info:
        _decode(msg)
    assert str(info.value) == (
        "input 'x': has both raw_input_contents and typed contents; send only one"
    )


@pytest.mark.parametrize("raw_count", [1, 3])
def test_raw_contents_count_must_match_inputs(raw_count: int) -> None:
    msg = _request()
    msg.inputs.add(name="a", datatype="FP32", shape=[1])
    msg.inputs.add(name="b", datatype="FP32", shape=[1])
    msg.raw_input_contents.extend([struct.pack("<f", 1.0)] * raw_count)
    with pytest.raises(
        InvalidInputError, match=f"raw_input_contents has {raw_count} entries for 2 inputs"
    ):
        _decode(msg)


def test_raw_length_mismatch_names_input_shape_and_sizes() -> None:
    msg = _request()
    msg.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    msg.raw_input_contents.append(b"\x00" * 20)
    with pytest.raises(InvalidInputError) as info:
        _decode(msg)
    assert str(info.value) == "input 'x': shape [2,3] needs 24 bytes of FP32, got 20"


def test_negative_dims_are_rejected() -> None:
    msg = _request()
    msg.inputs.add(name="x", datatype="FP32", shape=[-1, 3])
    msg.raw_input_contents.append(b"")
    with pytest.raises(InvalidInputError, match=r"input 'x': shape \[-1,3\] has a negative"):
        _decode(msg)


def test_raw_inputs_are_zero_copy_views() -> None:
    msg = _request()
    msg.inputs.add(name="x", datatype="FP32", shape=[4])
    msg.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    decoded = _decode(msg).inputs["x"]
    assert not decoded.flags.writeable
    base: object = decoded
    while isinstance(base, np.ndarray):
        assert not base.flags.owndata
        base = base.base
    assert isinstance(base, bytes)


def test_duplicate_input_names_are_rejected() -> None:
    msg = _request()
    for _ in range(2):
        tensor = msg.inputs.add(name="x", datatype="INT32", shape=[1])
        tensor.contents.int_contents.append(1)
    with pytest.raises(InvalidInputError, match=r"^input 'x' appears twice in the request$"):
        _decode(msg)


def test_unknown_input_datatype_names_the_valid_ones() -> None:
    msg = _request()
    msg.inputs.add(name="x", datatype="FLOAT", shape=[1])
    with pytest.raises(InvalidInputError, match=r"input 'x': unknown datatype 'FLOAT'.*FP32"):
        _decode(msg)


@pytest.mark.parametrize(
    "key", ["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"]
)
def test_shared_memory_inputs_are_unsupported(key: str) -> None:
    msg = _request()
    tensor = msg.inputs.add(name="x", datatype="FP32", shape=[1])
    if key == "shared_memory_region":
        tensor.parameters[key].string_param = "region0"
    else:
        tensor.parameters[key].int64_param = 4
    with pytest.raises(UnsupportedError, match="input 'x': shared memory is not supported"):
        _decode(msg)


def test_empty_model_name_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="model_name is empty"):
        _decode(pb.ModelInferRequest())


def test_identity_fields_are_carried() -> None:
    decoded = _decode(_request(model_name="mlp", model_version="3", id="req-7"))
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("mlp", "3", "req-7")
    assert decoded.inputs == {}
    assert decoded.requested_outputs == ()
    assert decoded.deadline_s is None


def test_a_request_built_by_tritonclient_decodes() -> None:
    x = triton.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    s = triton.InferInput("s", [2], "BYTES")
    s.set_data_from_numpy(np.array([b"a", b"\xff"], dtype=object))
    msg = triton_utils._get_inference_request(
        model_name="m",
        inputs=[x, s],
        model_version="2",
        request_id="r1",
        outputs=[triton.InferRequestedOutput("y"), triton.InferRequestedOutput("z")],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=3,
        timeout=500,
        parameters={"custom": "v"},
    )
    decoded = _decode(msg)
    np.testing.assert_array_equal(decoded.inputs["x"], np.arange(6).reshape(2, 3))
    assert decoded.inputs["s"].tolist() == [b"a", b"\xff"]
    assert decoded.requested_outputs == ("y", "z")
    assert decoded.priority == 3
    assert decoded.timeout_us == 500
    assert decoded.parameters == {"custom": "v"}
    assert decoded.deadline_s == pytest.approx(NOW + 0.0005)


# --- requested outputs ----------------------------------------------------------------------


def test_requested_outputs_keep_their_order() -> None:
    msg = _request()
    for name in ("b", "a", "c"):
        msg.outputs.add(name=name)
    assert _decode(msg).requested_outputs == ("b", "a", "c")


def test_classification_output_is_unsupported() -> None:
    msg = _request()
    msg.outputs.add(name="y").parameters["classification"].int64_param = 3
    with pytest.raises(UnsupportedError, match="output 'y': classification outputs"):
        _decode(msg)


def test_classification_zero_means_a_plain_output() -> None:
    msg = _request()
    msg.outputs.add(name="y").parameters["classification"].int64_param = 0
    assert _decode(msg).requested_outputs == ("y",)


def test_shared_memory_output_is_unsupported() -> None:
    msg = _request()
    msg.outputs.add(name="y").parameters["shared_memory_region"].string_param = "r"
    with pytest.raises(UnsupportedError, match="output 'y': shared memory is not supported"):
        _decode(msg)


def test_output_requested_twice_is_rejected() -> None:
    msg = _request()
    msg.outputs.add(name="y")
    msg.outputs.add(name="y")
    with pytest.raises(InvalidInputError, match="output 'y' is requested twice"):
        _decode(msg)


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int64_param", "uint64_param"])
@pytest.mark.parametrize(
    ("key", "attribute"), [("priority", "priority"), ("timeout", "timeout_us")]
)
def test_priority_and_timeout_accept_int64_and_uint64(kind: str, key: str, attribute: str) -> None:
    msg = _request()
    setattr(msg.parameters[key], kind, 42)
    decoded = _decode(msg)
    assert getattr(decoded, attribute) == 42
    assert key not in decoded.parameters


@pytest.mark.parametrize("key", ["priority", "timeout"])
@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("int64_param", -1),
        ("string_param", "5"),
        ("bool_param", True),
        ("double_param", 5.0),
    ],
)
def test_priority_and_timeout_reject_negative_and_non_integers(
    key: str, kind: str, value: object
) -> None:
    msg = _request()
    setattr(msg.parameters[key], kind, value)
    with pytest.raises(InvalidInputError) as info:
        _decode(msg)
    assert str(info.value).startswith(f"parameter {key!r}: expected a non-negative integer")
    assert str(info.value).endswith(f"got {value!r}")


def test_priority_and_timeout_default_to_zero() -> None:
    decoded = _decode(_request())
    assert decoded.priority == 0
    assert decoded.timeout_us == 0


def test_custom_parameters_pass_through_with_their_types() -> None:
    msg = _request()
    msg.parameters["flag"].bool_param = True
    msg.parameters["count"].int64_param = -3
    msg.parameters["big"].uint64_param = 2**64 - 1
    msg.parameters["ratio"].double_param = 0.25
    msg.parameters["tag"].string_param = "blue"
    msg.parameters["priority"].uint64_param = 2
    decoded = _decode(msg)
    assert decoded.parameters == {
        "flag": True,
        "count": -3,
        "big": 2**64 - 1,
        "ratio": 0.25,
        "tag": "blue",
    }
    assert type(decoded.parameters["flag"]) is bool


def test_parameter_without_a_value_is_rejected() -> None:
    msg = _request()
    msg.parameters["empty"].SetInParent()
    with pytest.raises(InvalidInputError, match="parameter 'empty' has no value"):
        _decode(msg)


def test_parameters_from_proto_reads_a_map() -> None:
    msg = _request()
    msg.parameters["a"].string_param = "x"
    assert parameters_from_proto(msg.parameters) == {"a": "x"}
    assert parameters_from_proto(_request().parameters) == {}


# --- deadline -------------------------------------------------------------------------------


def _with_timeout(timeout_us: int) -> pb.ModelInferRequest:
    msg = _request()
    msg.parameters["timeout"].uint64_param = timeout_us
    return msg


def test_no_deadline_without_budget_or_timeout() -> None:
    assert _decode(_request()).deadline_s is None


def test_deadline_from_grpc_budget_only() -> None:
    assert _decode(_request(), time_remaining_s=2.5).deadline_s == NOW + 2.5


def test_deadline_from_timeout_only() -> None:
    assert _decode(_with_timeout(250_000)).deadline_s == pytest.approx(NOW + 0.25)


def test_deadline_is_the_earlier_of_budget_and_timeout() -> None:
    timeout_wins = _decode(_with_timeout(250_000), time_remaining_s=2.0)
    assert timeout_wins.deadline_s == pytest.approx(NOW + 0.25)
    budget_wins = _decode(_with_timeout(5_000_000), time_remaining_s=0.5)
    assert budget_wins.deadline_s == pytest.approx(NOW + 0.5)


def test_zero_timeout_means_no_timeout() -> None:
    assert _decode(_with_timeout(0), time_remaining_s=3.0).deadline_s == NOW + 3.0


# --- responses ------------------------------------------------------------------------------


def test_response_outputs_and_raw_contents_stay_aligned() -> None:
    outputs = {
        "logits": np.arange(6, dtype=np.float32).reshape(2, 3),
        "text": np.array(["héllo", ""], dtype=object),
        "raw": np.array([b"\xff", b"ab"], dtype=object),
        "ids": np.array([[7], [9]], dtype=np.int64),
        "half": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        "scalar": np.array(True),
    }
    msg = response_to_proto(InferenceResponse("m", "2", id="r", outputs=outputs))
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "2", "r")
    assert [o.name for o in msg.outputs] == list(outputs)
    assert len(msg.raw_output_contents) == len(outputs)
    expected_types = ["FP32", "BYTES", "BYTES", "INT64", "BF16", "BOOL"]
    assert [o.datatype for o in msg.outputs] == expected_types
    assert [list(o.shape) for o in msg.outputs] == [[2, 3], [2], [2], [2, 1], [2], []]
    raw = dict(zip((o.name for o in msg.outputs), msg.raw_output_contents, strict=True))
    assert raw["logits"] == outputs["logits"].tobytes()
    assert raw["ids"] == outputs["ids"].tobytes()
    assert raw["text"] == b"\x06\x00\x00\x00h\xc3\xa9llo\x00\x00\x00\x00"
    assert raw["raw"] == b"\x01\x00\x00\x00\xff\x02\x00\x00\x00ab"
    assert raw["half"] == outputs["half"].view(np.uint16).tobytes()
    assert raw["scalar"] == b"\x01"
    assert not any(o.HasField("contents") for o in msg.outputs)


def test_tritonclient_reads_the_response_back() -> None:
    outputs = {
        "y": np.arange(4, dtype=np.float16).reshape(2, 2),
        "s": np.array([b"a", b"", b"\x00\xff"], dtype=object),
    }
    result = triton.InferResult(response_to_proto(InferenceResponse("m", "1", outputs=outputs)))
    np.testing.assert_array_equal(result.as_numpy("y"), outputs["y"])
    assert result.as_numpy("y").dtype == np.float16
    assert result.as_numpy("s").tolist() == [b"a", b"", b"\x00\xff"]


def test_empty_response() -> None:
    msg = response_to_proto(InferenceResponse("m", "1"))
    assert len(msg.outputs) == 0
    assert len(msg.raw_output_contents) == 0


# --- metadata, statistics, index ------------------------------------------------------------


def _signature(max_batch_size: int) -> ModelSignature:
    return ModelSignature(
        model_name="mlp",
        inputs=(
            TensorSpec("x", DATATYPES["FP32"], (16,)),
            TensorSpec("mask", DATATYPES["BOOL"], (-1, 4), optional=True),
        ),
        outputs=(TensorSpec("logits", DATATYPES["FP32"], (8,)),),
        max_batch_size=max_batch_size,
    )


def test_metadata_has_a_leading_batch_dimension_when_batching() -> None:
    msg = metadata_to_proto(_signature(8), [1, 3], "onnxruntime_onnx")
    assert msg.name == "mlp"
    assert list(msg.versions) == ["1", "3"]
    assert msg.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.inputs] == [
        ("x", "FP32", [-1, 16]),
        ("mask", "BOOL", [-1, -1, 4]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.outputs] == [
        ("logits", "FP32", [-1, 8])
    ]


def test_metadata_shapes_are_unchanged_without_batching() -> None:
    msg = metadata_to_proto(_signature(0), [1], "onnxruntime_onnx")
    assert [list(t.shape) for t in msg.inputs] == [[16], [-1, 4]]
    assert [list(t.shape) for t in msg.outputs] == [[8]]


def test_statistics_to_proto() -> None:
    stats = VersionStats()
    stats.record_execution(RunTimings(10, 20, 30, 40), rows=4, requests=2)
    stats.record_execution(RunTimings(1, 2, 3, 4), rows=1, requests=1)
    stats.success.add(500, 3)
    stats.fail.add(7)
    stats.last_inference_ms = 1234
    msg = statistics_to_proto("mlp", 3, stats)
    assert (msg.name, msg.version, msg.last_inference) == ("mlp", "3", 1234)
    assert (msg.inference_count, msg.execution_count) == (5, 2)
    infer = msg.inference_stats
    assert (infer.success.count, infer.success.ns) == (3, 500)
    assert (infer.fail.count, infer.fail.ns) == (1, 7)
    assert (infer.queue.count, infer.queue.ns) == (3, 21)
    assert (infer.compute_input.count, infer.compute_input.ns) == (3, 42)
    assert (infer.compute_infer.count, infer.compute_infer.ns) == (3, 63)
    assert (infer.compute_output.count, infer.compute_output.ns) == (3, 84)
    assert [b.batch_size for b in msg.batch_stats] == [1, 4]
    four = msg.batch_stats[1]
    assert (four.compute_input.count, four.compute_input.ns) == (1, 20)
    assert (four.compute_infer.count, four.compute_infer.ns) == (1, 30)
    assert (four.compute_output.count, four.compute_output.ns) == (1, 40)


def test_statistics_of_an_idle_version_are_zero() -> None:
    msg = statistics_to_proto("m", 1, VersionStats())
    assert msg.inference_count == 0
    assert msg.inference_stats.success.count == 0
    assert len(msg.batch_stats) == 0


def test_index_to_proto() -> None:
    entries = [
        IndexEntry("mlp", "1", ModelState.READY),
        IndexEntry("broken", "2", ModelState.UNAVAILABLE, reason="bad file"),
    ]
    msg = index_to_proto(entries)
    assert [(m.name, m.version, m.state, m.reason) for m in msg.models] == [
        ("mlp", "1", "READY", ""),
        ("broken", "2", "UNAVAILABLE", "bad file"),
    ]
    assert len(index_to_proto([]).models) == 0
