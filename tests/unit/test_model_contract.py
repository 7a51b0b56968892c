"""Deriving a model's contract; refusing what is not a usable ONNX model."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgefabric.errors import InvalidModelError
from edgefabric.models.contract import ModelContract, inspect_onnx, required_runtime
from edgefabric.samples import mlp_model, unknown_operator_model

pytestmark = pytest.mark.unit


def test_the_contract_of_the_sample_mlp() -> None:
    contract = inspect_onnx(mlp_model().SerializeToString(), source="mlp.onnx")
    assert [(t.name, t.datatype.name, t.shape) for t in contract.inputs] == [
        ("x", "FP32", (None, 16))
    ]
    assert contract.opset == 17
    assert contract.runtime == "onnxruntime>=1.13"
    assert ModelContract.from_json(contract.to_json()) == contract
    assert "in  x FP32 [?,16]" in contract.describe()


def test_bytes_that_are_not_onnx_are_refused() -> None:
    with pytest.raises(InvalidModelError, match=r"^junk.onnx: not an ONNX model"):
        inspect_onnx(b"\x00\x01 definitely not a protobuf model", source="junk.onnx")


def test_a_model_the_checker_rejects_is_refused() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 0  # invalid
    with pytest.raises(InvalidModelError, match="ONNX checker rejected the model"):
        inspect_onnx(model.SerializeToString(), source="bad.onnx")


def test_a_model_onnx_runtime_cannot_load_is_refused() -> None:
    model = unknown_operator_model()
    onnx.checker.check_model(model)
    with pytest.raises(InvalidModelError, match="ONNX Runtime could not load the model"):
        inspect_onnx(model.SerializeToString(), source="custom.onnx")


@pytest.mark.parametrize(
    ("opset", "runtime"),
    [(21, "onnxruntime>=1.20"), (17, "onnxruntime>=1.13"), (11, "onnxruntime>=1.10")],
)
def test_required_runtime_follows_the_opset(opset: int, runtime: str) -> None:
    assert required_runtime(opset) == runtime
