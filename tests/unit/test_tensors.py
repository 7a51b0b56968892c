"""Tensor codecs: BYTES length prefixes, raw and typed contents, and their error messages."""

from __future__ import annotations

import re
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefabric.errors import InvalidInputError
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.kserve.tensors import (
    decode_bytes_elements,
    decode_raw,
    decode_typed,
    element_count,
    encode_bytes_elements,
    encode_raw,
    shape_text,
)

pytestmark = pytest.mark.unit

FIXED_WIDTH = [name for name, dt in DATATYPES.items() if dt.itemsize is not None]


def _sample(name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = DATATYPES[name].numpy
    values = np.arange(int(np.prod(shape))).reshape(shape)
    if name == "BOOL":
        return (values % 2).astype(dtype)
    return values.astype(dtype)


# --- BYTES length-prefix codec -------------------------------------------------------------


def test_bytes_wire_layout_is_4_byte_little_endian_length_then_data() -> None:
    array = np.array([b"ab", b"", b"x" * 256], dtype=object)
    assert encode_bytes_elements(array) == (
        b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x00\x01\x00\x00" + b"x" * 256
    )


def test_bytes_round_trip_keeps_empty_and_non_utf8_elements() -> None:
    elements = [b"hello", b"", b"\xff\xfe\x00\x80", b"\x00", "héllo".encode()]
    raw = encode_bytes_elements(np.array(elements, dtype=object))
    decoded = decode_bytes_elements(raw, len(elements), what="input 'x'")
    assert decoded.dtype == np.object_
    assert decoded.tolist() == elements
    assert all(type(item) is bytes for item in decoded)


def test_str_elements_are_encoded_as_utf8() -> None:
    raw = encode_bytes_elements(np.array(["héllo", ""], dtype=object))
    assert raw == struct.pack("<I", 6) + "héllo".encode() + struct.pack("<I", 0)
    unicode_raw = encode_bytes_elements(np.array(["héllo", ""]))
    assert unicode_raw == raw


def test_bytes_encoding_follows_c_order_of_a_multidimensional_array() -> None:
    array = np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)
    decoded = decode_bytes_elements(encode_bytes_elements(array), 4, what="x")
    assert decoded.tolist() == [b"a", b"b", b"c", b"d"]


def test_zero_bytes_elements() -> None:
    assert encode_bytes_elements(np.array([], dtype=object)) == b""
    assert decode_bytes_elements(b"", 0, what="x").shape == (0,)


@settings(max_examples=60, database=None, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_bytes_round_trip_property(elements: list[bytes]) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    raw = encode_bytes_elements(array)
    assert len(raw) == 4 * len(elements) + sum(map(len, elements))
    assert decode_bytes_elements(raw, len(elements), what="x").tolist() == elements


def test_truncated_length_prefix() -> None:
    with pytest.raises(InvalidInputError) as info:
        decode_bytes_elements(b"\x01\x00", 1, what="input 'x'")
    assert str(info.value) == (
        "input 'x': BYTES element 0 has a truncated 4-byte length prefix (2 bytes left)"
    )


def test_truncated_length_prefix_after_a_good_element() -> None:
    raw = struct.pack("<I", 1) + b"a" + b"\x00\x00\x00"
    with pytest.raises(
        InvalidInputError, match=r"BYTES element 1 has a truncated .*\(3 bytes left\)"
    ):
        decode_bytes_elements(raw, 2, what="input 'x'")


def test_length_prefix_larger_than_remaining_bytes() -> None:
    raw = struct.pack("<I", 5) + b"ab"
    with pytest.raises(InvalidInputError) as info:
        decode_bytes_elements(raw, 1, what="input 'x'")
    assert str(info.value) == "input 'x': BYTES element 0 declares 5 bytes but only 2 remain"


def test_huge_length_prefix_is_rejected_not_allocated() -> None:
    raw = struct.pack("<I", 0xFFFFFFFF) + b"abc"
    with pytest.raises(InvalidInputError, match="declares 4294967295 bytes but only 3 remain"):
        decode_bytes_elements(raw, 1, what="x")


@pytest.mark.parametrize(("elements", "count"), [([b"a", b"b"], 3), ([], 1)])
def test_bytes_element_count_mismatch(elements: list[bytes], count: int) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    raw = encode_bytes_elements(array)
    with pytest.raises(InvalidInputError) as info:
        decode_bytes_elements(raw, count, what="input 's'")
    assert str(info.value) == (
        f"input 's': shape needs {count} BYTES elements, raw contents hold {len(elements)}"
    )


def test_extra_bytes_elements_stop_the_parse() -> None:
    # A message packed with empty elements must not become millions of Python objects.
    raw = struct.pack("<I", 1) + b"a" + bytes(4 * 100_000)
    with pytest.raises(InvalidInputError) as info:
        decode_bytes_elements(raw, 1, what="input 's'")
    assert str(info.value) == (
        "input 's': shape needs 1 BYTES elements, raw contents hold more "
        "(400000 bytes left after element 0)"
    )


# --- element_count and shapes ----------------------------------------------------------


def test_shape_text_is_compact() -> None:
    assert shape_text([2, 3]) == "[2,3]"
    assert shape_text(()) == "[]"


@pytest.mark.parametrize(("shape", "count"), [((), 1), ((0,), 0), ((2, 3), 6), ((4, 0, 9), 0)])
def test_element_count(shape: tuple[int, ...], count: int) -> None:
    assert element_count(shape, what="x") == count


@pytest.mark.parametrize("shape", [(-1,), (2, -1), (-3, 4)])
def test_negative_dims_are_rejected(shape: tuple[int, ...]) -> None:
    message = f"input 'x': shape {shape_text(shape)} has a negative dimension"
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        element_count(shape, what="input 'x'")
    with pytest.raises(InvalidInputError, match="negative dimension"):
        decode_raw(b"", DATATYPES["FP32"], shape, what="input 'x'")
    with pytest.raises(InvalidInputError, match="negative dimension"):
        decode_typed([], DATATYPES["FP32"], shape, what="input 'x'")


# --- raw contents ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXED_WIDTH)
def test_raw_round_trip_for_every_fixed_width_datatype(name: str) -> None:
    array = _sample(name, (2, 3))
    datatype, raw = encode_raw(array)
    assert datatype is DATATYPES[name]
    assert len(raw) == 6 * (datatype.itemsize or 0)
    decoded = decode_raw(raw, datatype, [2, 3], what="x")
    assert decoded.dtype == array.dtype
    assert decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, array)


def test_raw_is_little_endian_c_order() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.int32).T  # Fortran-ordered view
    _, raw = encode_raw(array)
    assert raw == struct.pack("<4i", 1, 3, 2, 4)


def test_raw_bf16_keeps_bits() -> None:
    array = np.array([1.5, -2.0, np.inf], dtype=ml_dtypes.bfloat16)
    datatype, raw = encode_raw(array)
    assert datatype.name == "BF16"
    assert raw == array.view(np.uint16).tobytes()
    np.testing.assert_array_equal(decode_raw(raw, datatype, [3], what="x"), array)


def test_raw_bytes_round_trip_with_shape() -> None:
    array = np.array([[b"a", b""], [b"\xff", b"dd"]], dtype=object)
    datatype, raw = encode_raw(array)
    assert datatype.name == "BYTES"
    decoded = decode_raw(raw, datatype, [2, 2], what="x")
    assert decoded.shape == (2, 2)
    assert decoded.tolist() == array.tolist()


def test_raw_length_mismatch_message() -> None:
    with pytest.raises(InvalidInputError) as info:
        decode_raw(b"\x00" * 20, DATATYPES["FP32"], [2, 3], what="input 'x'")
    assert str(info.value) == "input 'x': shape [2,3] needs 24 bytes of FP32, got 20"


def test_raw_too_long_is_also_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"shape \[2\] needs 2 bytes of INT8, got 3"):
        decode_raw(b"\x00" * 3, DATATYPES["INT8"], [2], what="input 'x'")


def test_raw_decode_is_zero_copy_and_read_only() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    decoded = decode_raw(raw, DATATYPES["FP32"], [2, 3], what="x")
    assert np.shares_memory(decoded, np.frombuffer(raw, dtype=np.uint8))
    base: object = decoded
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is raw
    assert not decoded.flags.writeable


def test_raw_zero_elements_and_scalar() -> None:
    empty = decode_raw(b"", DATATYPES["FP32"], [0, 3], what="x")
    assert empty.shape == (0, 3)
    scalar = decode_raw(struct.pack("<d", 2.5), DATATYPES["FP64"], [], what="x")
    assert scalar.shape == ()
    assert scalar == 2.5


def test_encode_raw_rejects_dtypes_without_a_kserve_type() -> None:
    with pytest.raises(InvalidInputError, match="complex64"):
        encode_raw(np.zeros(2, dtype=np.complex64))


# --- typed contents -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("BOOL", [True, False, True, True]),
        ("UINT8", [0, 1, 254, 255]),
        ("UINT16", [0, 1, 65534, 65535]),
        ("UINT32", [0, 1, 2**32 - 2, 2**32 - 1]),
        ("UINT64", [0, 1, 2**64 - 2, 2**64 - 1]),
        ("INT8", [-128, -1, 0, 127]),
        ("INT16", [-(2**15), -1, 0, 2**15 - 1]),
        ("INT32", [-(2**31), -1, 0, 2**31 - 1]),
        ("INT64", [-(2**63), -1, 0, 2**63 - 1]),
        ("FP32", [0.5, -1.25, 3.0, 2.0**100]),
        ("FP64", [0.1, -1e300, 3.0, 2.0**-1000]),
    ],
)
def test_typed_decode(name: str, values: list[object]) -> None:
    datatype = DATATYPES[name]
    decoded = decode_typed(values, datatype, [2, 2], what="x")
    assert decoded.dtype == datatype.numpy
    assert decoded.shape == (2, 2)
    assert decoded.reshape(-1).tolist() == values


def test_typed_bytes_keep_their_bytes() -> None:
    values = [b"a", b"", b"\xff\x00"]
    decoded = decode_typed(values, DATATYPES["BYTES"], [3, 1], what="x")
    assert decoded.dtype == np.object_
    assert decoded.shape == (3, 1)
    assert decoded.reshape(-1).tolist() == values


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INT8", 128),
        ("INT8", -129),
        ("UINT8", 256),
        ("UINT8", -1),
        ("INT16", 2**15),
        ("UINT16", 2**16),
        ("INT32", 2**31),
        ("UINT32", 2**32),
    ],
)
def test_typed_out_of_range_values(name: str, value: int) -> None:
    with pytest.raises(InvalidInputError, match=f"^input 'x': values do not fit {name}: "):
        decode_typed([0, value], DATATYPES[name], [2], what="input 'x'")


def test_typed_count_mismatch_message() -> None:
    with pytest.raises(InvalidInputError) as info:
        decode_typed([1, 2, 3], DATATYPES["INT32"], [2], what="input 'x'")
    assert str(info.value) == "input 'x': shape [2] needs 2 INT32 values, got 3"
