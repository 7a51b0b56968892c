"""A model's I/O contract, and validation of requests against it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import InvalidInputError
from edgefabric.inference import InferenceRequest
from edgefabric.kserve.datatypes import DATATYPES, DataType, by_config_type

__all__ = ["ModelSignature", "TensorSpec"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output; ``dims`` exclude the batch dimension; -1 means any size."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    optional: bool = False

    def matches(self, shape: Sequence[int]) -> bool:
        """Whether ``shape`` (without batch dimension) fits ``dims``."""
        return len(shape) == len(self.dims) and all(
            want in (-1, got) for want, got in zip(self.dims, shape, strict=True)
        )


def _shape_text(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _datatype_text(dtype: np.dtype[np.generic]) -> str:
    """An arrived dtype in the client's words: ``INT32``, not ``int32`` (numpy's otherwise)."""
    return next((dt.name for dt in DATATYPES.values() if dt.numpy == dtype), str(dtype))


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """Inputs, outputs and batching of one model, derived from its completed config."""

    model_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> ModelSignature:
        """Build from a completed ``ModelConfig``."""
        inputs = tuple(
            TensorSpec(i.name, by_config_type(i.data_type), tuple(i.dims), i.optional)
            for i in config.input
        )
        outputs = tuple(
            TensorSpec(o.name, by_config_type(o.data_type), tuple(o.dims)) for o in config.output
        )
        return cls(config.name, inputs, outputs, config.max_batch_size)

    def full_shape(self, spec: TensorSpec) -> list[int]:
        """The shape a client sees: a leading -1 batch dimension when the model batches."""
        return [-1, *spec.dims] if self.max_batch_size > 0 else list(spec.dims)

    @property
    def output_names(self) -> tuple[str, ...]:
        """All output names in declaration order."""
        return tuple(o.name for o in self.outputs)

    def validate(self, request: InferenceRequest) -> None:
        """Raise :class:`InvalidInputError` naming the first thing wrong with ``request``."""
        model = f"model {self.model_name!r}"
        known = {spec.name: spec for spec in self.inputs}
        for name in request.inputs:
            if name not in known:
                raise InvalidInputError(
                    f"{model}: unknown input {name!r}; expected inputs: {sorted(known)}"
                )
        rows: tuple[str, int] | None = None
        for spec in self.inputs:
            array = request.inputs.get(spec.name)
            if array is None:
                if spec.optional:
                    continue
                raise InvalidInputError(
                    f"{model}: missing input {spec.name!r} "
                    f"({spec.datatype.name} {_shape_text(self.full_shape(spec))})"
                )
            rows = self._check_input(spec, array.dtype, array.shape, rows)
        outputs = set(self.output_names)
        for name in request.requested_outputs:
            if name not in outputs:
                raise InvalidInputError(
                    f"{model}: unknown requested output {name!r}; outputs are {sorted(outputs)}"
                )

    def _check_input(
        self,
        spec: TensorSpec,
        dtype: np.dtype[np.generic],
        shape: tuple[int, ...],
        rows: tuple[str, int] | None,
    ) -> tuple[str, int] | None:
        what = f"input {spec.name!r}"
        if dtype != spec.datatype.numpy:
            got = _datatype_text(dtype)
            raise InvalidInputError(f"{what}: expected datatype {spec.datatype.name}, got {got}")
        expected = _shape_text(self.full_shape(spec))
        if self.max_batch_size <= 0:
            if not spec.matches(shape):
                raise InvalidInputError(
                    f"{what}: expected shape {expected}, got {_shape_text(shape)}"
                )
            return rows
        if not shape or not spec.matches(shape[1:]):
            raise InvalidInputError(f"{what}: expected shape {expected}, got {_shape_text(shape)}")
        batch = shape[0]
        if batch < 1 or batch > self.max_batch_size:
            raise InvalidInputError(
                f"{what}: batch of {batch} rows is outside 1..{self.max_batch_size} "
                "(max_batch_size); split the request"
            )
        if rows is not None and rows[1] != batch:
            raise InvalidInputError(
                f"inputs disagree on batch size: {rows[0]!r} has {rows[1]} rows, "
                f"{spec.name!r} has {batch}"
            )
        return (spec.name, batch)
