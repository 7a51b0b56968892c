"""Tensor codecs: KServe v2 raw/typed contents <-> numpy, with messages that say what went wrong.

Raw contents decode without copying (``np.frombuffer``); the arrays are read-only views of the
request bytes. BYTES elements travel as a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from edgefabric.errors import InvalidInputError
from edgefabric.kserve.datatypes import DataType, by_numpy
from edgefabric.kserve.limits import DEFAULT_LIMITS, RequestLimits

__all__ = [
    "decode_bytes_elements",
    "decode_raw",
    "decode_typed",
    "element_count",
    "encode_bytes_elements",
    "encode_raw",
    "shape_text",
]

_LENGTH = struct.Struct("<I")


def shape_text(shape: Sequence[int]) -> str:
    """``[2,3]``: a shape as error messages write it (protobuf shapes are not lists)."""
    return "[" + ",".join(str(dim) for dim in shape) + "]"


def element_count(
    shape: Sequence[int], *, what: str, limits: RequestLimits = DEFAULT_LIMITS
) -> int:
    """Number of elements of ``shape``; negative dims and shapes over ``limits`` are rejected.

    Zero dimensions do not excuse the others: ``[0, 2**40]`` is refused like ``[1, 2**40]``,
    since numpy (and the model) would still have to describe that extent.
    """
    if len(shape) > limits.max_rank:
        raise InvalidInputError(
            f"{what}: shape has {len(shape)} dimensions, more than the {limits.max_rank} this "
            "server accepts (max_rank)"
        )
    for dim in shape:
        if dim < 0:
            raise InvalidInputError(f"{what}: shape {shape_text(shape)} has a negative dimension")
    count = math.prod(shape)
    span = math.prod(max(dim, 1) for dim in shape)
    if span > limits.max_tensor_elements:
        extent = f"has {count}" if count else f"spans {span} (zero dimensions aside)"
        raise InvalidInputError(
            f"{what}: shape {shape_text(shape)} {extent} elements, more than the "
            f"{limits.max_tensor_elements} this server accepts per tensor "
            "(max_tensor_elements); send smaller batches"
        )
    return count


def _check_element_size(length: int, index: int, limits: RequestLimits, what: str) -> None:
    if length > limits.max_bytes_element_bytes:
        raise InvalidInputError(
            f"{what}: BYTES element {index} is {length} bytes, more than the "
            f"{limits.max_bytes_element_bytes} this server accepts per element "
            "(max_bytes_element_bytes)"
        )


def decode_bytes_elements(
    raw: bytes, count: int, *, what: str, limits: RequestLimits = DEFAULT_LIMITS
) -> NDArray[np.object_]:
    """Split length-prefixed BYTES contents into exactly ``count`` elements.

    Parsing stops at the first malformed prefix and after ``count`` elements, so a message
    packed with empty elements never turns into more than ``count`` Python objects.
    """
    elements: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if len(elements) == count:
            raise InvalidInputError(
                f"{what}: shape needs {count} BYTES elements, raw contents hold more "
                f"({len(raw) - offset} bytes left after element {count - 1})"
                if count
                else f"{what}: shape needs 0 BYTES elements, raw contents hold {len(raw)} bytes"
            )
        if len(raw) - offset < _LENGTH.size:
            raise InvalidInputError(
                f"{what}: BYTES element {len(elements)} has a truncated 4-byte length prefix "
                f"({len(raw) - offset} bytes left)"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if length > len(raw) - offset:
            raise InvalidInputError(
                f"{what}: BYTES element {len(elements)} declares {length} bytes "
                f"but only {len(raw) - offset} remain"
            )
        _check_element_size(length, len(elements), limits, what)
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidInputError(
            f"{what}: shape needs {count} BYTES elements, raw contents hold {len(elements)}"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = elements
    return array


def encode_bytes_elements(array: NDArray[np.generic]) -> bytes:
    """Length-prefix every element of a BYTES tensor (str is encoded as UTF-8)."""
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_raw(
    raw: bytes,
    datatype: DataType,
    shape: Sequence[int],
    *,
    what: str,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> NDArray[np.generic]:
    """Decode raw contents into an array of ``shape`` (zero-copy for fixed-width types)."""
    count = element_count(shape, what=what, limits=limits)
    if datatype.itemsize is None:
        return decode_bytes_elements(raw, count, what=what, limits=limits).reshape(shape)
    expected = count * datatype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"{what}: shape {shape_text(shape)} needs {expected} bytes of {datatype.name}, "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=datatype.numpy).reshape(shape)


def decode_typed(
    values: Sequence[object],
    datatype: DataType,
    shape: Sequence[int],
    *,
    what: str,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> NDArray[np.generic]:
    """Decode typed ``InferTensorContents`` values into an array of ``shape``."""
    count = element_count(shape, what=what, limits=limits)
    if len(values) != count:
        raise InvalidInputError(
            f"{what}: shape {shape_text(shape)} needs {count} {datatype.name} values, "
            f"got {len(values)}"
        )
    if datatype.itemsize is None:
        for index, value in enumerate(values):
            if isinstance(value, bytes | str):
                _check_element_size(len(value), index, limits, what)
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=datatype.numpy).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInputError(f"{what}: values do not fit {datatype.name}: {exc}") from None


def encode_raw(array: NDArray[np.generic]) -> tuple[DataType, bytes]:
    """The KServe datatype and raw bytes (C order) of an output array."""
    datatype = by_numpy(array.dtype)
    if datatype.itemsize is None:
        return datatype, encode_bytes_elements(array)
    return datatype, np.ascontiguousarray(array).tobytes()
