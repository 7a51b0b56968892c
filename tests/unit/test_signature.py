"""Validation of requests against a model's signature; every message names input, want, got."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import InvalidInputError
from edgefabric.inference import InferenceRequest
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.models.signature import ModelSignature, TensorSpec

pytestmark = pytest.mark.unit

FP32 = DATATYPES["FP32"]
INT64 = DATATYPES["INT64"]
BYTES = DATATYPES["BYTES"]


def _batched(max_batch_size: int = 8) -> ModelSignature:
    return ModelSignature(
        model_name="m",
        inputs=(
            TensorSpec("x", FP32, (4,)),
            TensorSpec("ids", INT64, (-1,)),
            TensorSpec("mask", FP32, (4,), optional=True),
        ),
        outputs=(TensorSpec("y", FP32, (2,)), TensorSpec("z", INT64, (1,))),
        max_batch_size=max_batch_size,
    )


def _fixed() -> ModelSignature:
    return ModelSignature(
        model_name="m",
        inputs=(TensorSpec("x", FP32, (2, -1)),),
        outputs=(TensorSpec("y", FP32, (2,)),),
        max_batch_size=0,
    )


def _request(
    inputs: dict[str, np.ndarray] | None = None, outputs: tuple[str, ...] = ()
) -> InferenceRequest:
    return InferenceRequest(model_name="m", inputs=inputs or {}, requested_outputs=outputs)


def _ok(rows: int = 2) -> dict[str, np.ndarray]:
    return {
        "x": np.zeros((rows, 4), np.float32),
        "ids": np.zeros((rows, 7), np.int64),
    }


def _message(signature: ModelSignature, request: InferenceRequest) -> str:
    with pytest.raises(InvalidInputError) as info:
        signature.validate(request)
    return str(info.value)


def test_a_valid_request_passes() -> None:
    signature = _batched()
    signature.validate(_request(_ok()))
    signature.validate(_request({**_ok(), "mask": np.zeros((2, 4), np.float32)}, ("z", "y")))
    signature.validate(_request(_ok(rows=8)))
    signature.validate(_request(_ok(rows=1)))


def test_unknown_input() -> None:
    message = _message(_batched(), _request({**_ok(), "extra": np.zeros((2, 4), np.float32)}))
    assert message == "model 'm': unknown input 'extra'; expected inputs: ['ids', 'mask', 'x']"


def test_missing_input_names_its_datatype_and_shape() -> None:
    message = _message(_batched(), _request({"x": np.zeros((2, 4), np.float32)}))
    assert message == "model 'm': missing input 'ids' (INT64 [-1,-1])"


def test_missing_optional_input_is_fine_but_required_is_not() -> None:
    signature = _batched()
    signature.validate(_request(_ok()))
    required = ModelSignature("m", (TensorSpec("mask", FP32, (4,)),), (), 0)
    assert "missing input 'mask' (FP32 [4])" in _message(required, _request())


def test_optional_input_is_still_checked_when_sent() -> None:
    message = _message(_batched(), _request({**_ok(), "mask": np.zeros((2, 4), np.int64)}))
    assert message == "input 'mask': expected datatype FP32, got INT64"


@pytest.mark.parametrize(
    ("array", "got"),
    [
        (np.zeros((2, 4), np.int32), "INT32"),
        (np.zeros((2, 4), np.float64), "FP64"),
        (np.zeros((2, 4), np.float16), "FP16"),
        (np.zeros((2, 4), object), "BYTES"),
        (np.zeros((2, 4), np.complex64), "complex64"),
    ],
)
def test_wrong_datatype_says_what_arrived_in_kserve_terms(array: np.ndarray, got: str) -> None:
    message = _message(_batched(), _request({**_ok(), "x": array}))
    assert message == f"input 'x': expected datatype FP32, got {got}"


def test_bytes_input_accepts_object_arrays() -> None:
    signature = ModelSignature("t", (TensorSpec("text", BYTES, ()),), (), 4)
    signature.validate(_request({"text": np.array([b"a", b"b"], dtype=object)}))
    message = _message(signature, _request({"text": np.zeros(2, np.float32)}))
    assert message == "input 'text': expected datatype BYTES, got FP32"


@pytest.mark.parametrize(
    ("shape", "got"), [((2, 5), "[2,5]"), ((2,), "[2]"), ((), "[]"), ((2, 4, 1), "[2,4,1]")]
)
def test_wrong_shape_with_batching(shape: tuple[int, ...], got: str) -> None:
    message = _message(_batched(), _request({**_ok(), "x": np.zeros(shape, np.float32)}))
    assert message == f"input 'x': expected shape [-1,4], got {got}"


@pytest.mark.parametrize("shape", [(2, 1), (2, 0), (2, 100)])
def test_minus_one_matches_any_size(shape: tuple[int, ...]) -> None:
    _fixed().validate(_request({"x": np.zeros(shape, np.float32)}))


@pytest.mark.parametrize(("shape", "got"), [((3, 1), "[3,1]"), ((1, 2, 1), "[1,2,1]")])
def test_wrong_shape_without_batching(shape: tuple[int, ...], got: str) -> None:
    message = _message(_fixed(), _request({"x": np.zeros(shape, np.float32)}))
    assert message == f"input 'x': expected shape [2,-1], got {got}"


def test_batch_over_max_batch_size() -> None:
    message = _message(_batched(8), _request(_ok(rows=9)))
    assert message == (
        "input 'x': batch of 9 rows is outside 1..8 (max_batch_size); split the request"
    )


def test_empty_batch_is_rejected() -> None:
    assert "batch of 0 rows is outside 1..8" in _message(_batched(8), _request(_ok(rows=0)))


def test_inputs_disagreeing_on_batch_size() -> None:
    request = _request({"x": np.zeros((2, 4), np.float32), "ids": np.zeros((3, 1), np.int64)})
    message = _message(_batched(), request)
    assert message == "inputs disagree on batch size: 'x' has 2 rows, 'ids' has 3"


def test_unknown_requested_output() -> None:
    message = _message(_batched(), _request(_ok(), ("y", "probs")))
    assert message == "model 'm': unknown requested output 'probs'; outputs are ['y', 'z']"


def test_unbatched_inputs_need_not_agree_on_rows() -> None:
    signature = ModelSignature(
        "m", (TensorSpec("a", FP32, (-1,)), TensorSpec("b", FP32, (-1,))), (), 0
    )
    signature.validate(_request({"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}))


def test_from_config_and_full_shape() -> None:
    config = mc.ModelConfig(name="mlp", max_batch_size=16)
    config.input.add(name="x", data_type=mc.DataType.Value("TYPE_FP32"), dims=[8])
    config.input.add(name="k", data_type=mc.DataType.Value("TYPE_STRING"), dims=[-1], optional=True)
    config.output.add(name="y", data_type=mc.DataType.Value("TYPE_INT64"), dims=[1])
    signature = ModelSignature.from_config(config)
    assert signature.model_name == "mlp"
    assert signature.max_batch_size == 16
    assert signature.inputs == (
        TensorSpec("x", FP32, (8,)),
        TensorSpec("k", BYTES, (-1,), optional=True),
    )
    assert signature.outputs == (TensorSpec("y", INT64, (1,)),)
    assert signature.output_names == ("y",)
    assert signature.full_shape(signature.inputs[0]) == [-1, 8]
    config.max_batch_size = 0
    assert ModelSignature.from_config(config).full_shape(signature.inputs[0]) == [8]


def test_from_config_rejects_an_unsupported_datatype() -> None:
    config = mc.ModelConfig(name="m")
    config.input.add(name="x", data_type=mc.DataType.Value("TYPE_INVALID"), dims=[1])
    with pytest.raises(InvalidInputError, match="TYPE_INVALID"):
        ModelSignature.from_config(config)


def test_tensor_spec_matches() -> None:
    spec = TensorSpec("x", FP32, (3, -1))
    assert spec.matches((3, 5))
    assert spec.matches([3, 0])
    assert not spec.matches((4, 5))
    assert not spec.matches((3,))
    assert not spec.matches((3, 5, 1))
