"""KServe v2 datatypes and their numpy, Triton config and typed-contents counterparts."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import InvalidInputError

__all__ = ["DATATYPES", "DataType", "by_config_type", "by_name", "by_numpy"]


@dataclass(frozen=True, slots=True)
class DataType:
    """One KServe v2 datatype.

    ``itemsize`` is ``None`` for BYTES (variable length). ``contents_field`` names the
    ``InferTensorContents`` field that carries typed values, or ``None`` where the protocol
    allows raw contents only (FP16, BF16).
    """

    name: str
    numpy: np.dtype[np.generic]
    itemsize: int | None
    contents_field: str | None
    config_type: int


def _dt(name: str, np_type: object, contents: str | None, config_name: str) -> DataType:
    dtype = np.dtype(np_type)  # type: ignore[call-overload]
    itemsize = None if name == "BYTES" else dtype.itemsize
    return DataType(name, dtype, itemsize, contents, mc.DataType.Value(config_name))


DATATYPES: dict[str, DataType] = {
    dt.name: dt
    for dt in (
        _dt("BOOL", np.bool_, "bool_contents", "TYPE_BOOL"),
        _dt("UINT8", np.uint8, "uint_contents", "TYPE_UINT8"),
        _dt("UINT16", np.uint16, "uint_contents", "TYPE_UINT16"),
        _dt("UINT32", np.uint32, "uint_contents", "TYPE_UINT32"),
        _dt("UINT64", np.uint64, "uint64_contents", "TYPE_UINT64"),
        _dt("INT8", np.int8, "int_contents", "TYPE_INT8"),
        _dt("INT16", np.int16, "int_contents", "TYPE_INT16"),
        _dt("INT32", np.int32, "int_contents", "TYPE_INT32"),
        _dt("INT64", np.int64, "int64_contents", "TYPE_INT64"),
        _dt("FP16", np.float16, None, "TYPE_FP16"),
        _dt("BF16", ml_dtypes.bfloat16, None, "TYPE_BF16"),
        _dt("FP32", np.float32, "fp32_contents", "TYPE_FP32"),
        _dt("FP64", np.float64, "fp64_contents", "TYPE_FP64"),
        _dt("BYTES", np.object_, "bytes_contents", "TYPE_STRING"),
    )
}
_BY_NUMPY = {dt.numpy: dt for dt in DATATYPES.values()}
_BY_CONFIG = {dt.config_type: dt for dt in DATATYPES.values()}


def by_name(name: str, *, what: str = "tensor") -> DataType:
    """The datatype called ``name`` (e.g. ``"FP32"``); a clear error for anything else."""
    try:
        return DATATYPES[name]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise InvalidInputError(
            f"{what}: unknown datatype {name!r}; expected one of {known}"
        ) from None


def by_numpy(dtype: np.dtype[np.generic]) -> DataType:
    """The KServe datatype of a numpy dtype; unicode and bytes strings map to BYTES."""
    if dtype.kind in "USO":
        return DATATYPES["BYTES"]
    try:
        return _BY_NUMPY[dtype]
    except KeyError:
        raise InvalidInputError(f"numpy dtype {dtype} has no KServe v2 datatype") from None


def by_config_type(config_type: int) -> DataType:
    """The datatype of a Triton ``ModelConfig`` ``DataType`` enum value."""
    try:
        return _BY_CONFIG[config_type]
    except KeyError:
        name = mc.DataType.Name(config_type) if config_type in mc.DataType.values() else config_type
        raise InvalidInputError(f"model config datatype {name} is not supported") from None
