"""A model file's contract: its I/O signature, opset and the runtime it needs.

The store derives it when a model is pushed and signs it into the model's TUF target; an edge
agent re-derives it from the bytes it downloaded and refuses a model whose contract differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from edgefabric.errors import InvalidModelError, ModelLoadError
from edgefabric.kserve.datatypes import by_name
from edgefabric.models.config import GraphTensor
from edgefabric.runtime.onnx import graph_tensors

__all__ = ["ModelContract", "inspect_onnx", "required_runtime"]

# The oldest ONNX Runtime release that runs each default-domain opset.
_ORT_FOR_OPSET = ((21, "1.20"), (20, "1.17"), (19, "1.16"), (18, "1.14"), (17, "1.13"))
_ORT_FOR_OLD_OPSETS = "1.10"


def required_runtime(opset: int) -> str:
    """The ONNX Runtime requirement for a default-domain ``opset``."""
    for least_opset, version in _ORT_FOR_OPSET:
        if opset >= least_opset:
            return f"onnxruntime>={version}"
    return f"onnxruntime>={_ORT_FOR_OLD_OPSETS}"


def _tensor_json(tensor: GraphTensor) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype.name, "shape": list(tensor.shape)}


def _tensor_from_json(raw: Mapping[str, Any]) -> GraphTensor:
    shape = tuple(None if dim is None else int(dim) for dim in raw["shape"])
    return GraphTensor(str(raw["name"]), by_name(str(raw["datatype"])), shape)


@dataclass(frozen=True, slots=True)
class ModelContract:
    """What a caller and a device may rely on; ``None`` in a shape is a dynamic dimension."""

    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]
    opset: int
    ir_version: int
    runtime: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what is signed into the TUF target)."""
        return {
            "inputs": [_tensor_json(t) for t in self.inputs],
            "outputs": [_tensor_json(t) for t in self.outputs],
            "opset": self.opset,
            "ir_version": self.ir_version,
            "runtime": self.runtime,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelContract:
        """Inverse of :meth:`to_json`."""
        return cls(
            inputs=tuple(_tensor_from_json(t) for t in raw["inputs"]),
            outputs=tuple(_tensor_from_json(t) for t in raw["outputs"]),
            opset=int(raw["opset"]),
            ir_version=int(raw["ir_version"]),
            runtime=str(raw["runtime"]),
        )

    def describe(self) -> str:
        """One line per tensor, e.g. ``in  x FP32 [?,16]``."""

        def line(kind: str, tensor: GraphTensor) -> str:
            dims = ",".join("?" if d is None else str(d) for d in tensor.shape)
            return f"{kind} {tensor.name} {tensor.datatype.name} [{dims}]"

        return "\n".join(
            [line("in ", t) for t in self.inputs] + [line("out", t) for t in self.outputs]
        )


def _default_opset(imports: Sequence[onnx.OperatorSetIdProto]) -> int:
    return next((int(i.version) for i in imports if i.domain in ("", "ai.onnx")), 0)


def inspect_onnx(data: bytes, *, source: str | Path) -> ModelContract:
    """Check ``data`` with ``onnx.checker``, load it in ONNX Runtime (CPU) and derive its contract.

    Raises :class:`InvalidModelError` naming ``source`` and the reason when any step fails.
    """
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidModelError(f"{source}: not an ONNX model ({exc})") from None
    if not model.graph.node and not model.graph.output:
        raise InvalidModelError(f"{source}: not an ONNX model (no graph)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise InvalidModelError(
            f"{source}: ONNX checker rejected the model: {first_line}"
        ) from None
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's pybind exceptions; wrap at this seam
        raise InvalidModelError(f"{source}: ONNX Runtime could not load the model: {exc}") from None
    try:
        inputs = graph_tensors(session.get_inputs(), Path(str(source)))
        outputs = graph_tensors(session.get_outputs(), Path(str(source)))
    except ModelLoadError as exc:
        raise InvalidModelError(str(exc)) from None
    opset = _default_opset(model.opset_import)
    return ModelContract(
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        ir_version=int(model.ir_version),
        runtime=required_runtime(opset),
    )
