"""KServe v2 datatypes: numpy dtype, item size, typed contents field and Triton config enum."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from edgefabric.errors import InvalidInputError
from edgefabric.kserve.datatypes import DATATYPES, DataType, by_config_type, by_name, by_numpy

pytestmark = pytest.mark.unit

# name, numpy dtype, itemsize, InferTensorContents field, Triton config enum name
EXPECTED: list[tuple[str, object, int | None, str | None, str]] = [
    ("BOOL", np.bool_, 1, "bool_contents", "TYPE_BOOL"),
    ("UINT8", np.uint8, 1, "uint_contents", "TYPE_UINT8"),
    ("UINT16", np.uint16, 2, "uint_contents", "TYPE_UINT16"),
    ("UINT32", np.uint32, 4, "uint_contents", "TYPE_UINT32"),
    ("UINT64", np.uint64, 8, "uint64_contents", "TYPE_UINT64"),
    ("INT8", np.int8, 1, "int_contents", "TYPE_INT8"),
    ("INT16", np.int16, 2, "int_contents", "TYPE_INT16"),
    ("INT32", np.int32, 4, "int_contents", "TYPE_INT32"),
    ("INT64", np.int64, 8, "int64_contents", "TYPE_INT64"),
    ("FP16", np.float16, 2, None, "TYPE_FP16"),
    ("BF16", ml_dtypes.bfloat16, 2, None, "TYPE_BF16"),
    ("FP32", np.float32, 4, "fp32_contents", "TYPE_FP32"),
    ("FP64", np.float64, 8, "fp64_contents", "TYPE_FP64"),
    ("BYTES", np.object_, None, "bytes_contents", "TYPE_STRING"),
]
FIXED_WIDTH = [row for row in EXPECTED if row[2] is not None]


def test_table_holds_exactly_the_kserve_v2_datatypes() -> None:
    assert list(DATATYPES) == [row[0] for row in EXPECTED]


@pytest.mark.parametrize(("name", "np_type", "itemsize", "field", "config_name"), EXPECTED)
def test_datatype_mapping(
    name: str, np_type: object, itemsize: int | None, field: str | None, config_name: str
) -> None:
    dt = by_name(name)
    assert dt is DATATYPES[name]
    assert dt.name == name
    assert dt.numpy == np.dtype(np_type)  # type: ignore[call-overload]
    assert dt.itemsize == itemsize
    assert dt.contents_field == field
    assert dt.config_type == mc.DataType.Value(config_name)


@pytest.mark.parametrize("name", [row[0] for row in FIXED_WIDTH])
def test_itemsize_is_the_numpy_itemsize(name: str) -> None:
    dt = DATATYPES[name]
    assert dt.itemsize == dt.numpy.itemsize


@pytest.mark.parametrize("name", [row[0] for row in EXPECTED if row[3] is not None])
def test_contents_field_exists_in_the_protocol(name: str) -> None:
    field = DATATYPES[name].contents_field
    assert field in pb.InferTensorContents.DESCRIPTOR.fields_by_name


def test_datatype_is_frozen() -> None:
    dt = DATATYPES["FP32"]
    with pytest.raises(AttributeError):
        dt.name = "FP64"  # type: ignore[misc]
    assert isinstance(dt, DataType)


@pytest.mark.parametrize("name", ["fp32", "FLOAT32", "", "STRING", "TYPE_FP32"])
def test_unknown_name_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        by_name(name, what="input 'x'")
    message = str(info.value)
    assert message.startswith(f"input 'x': unknown datatype {name!r}; expected one of ")
    for valid in DATATYPES:
        assert valid in message


def test_unknown_name_default_subject() -> None:
    with pytest.raises(InvalidInputError, match=r"^tensor: unknown datatype 'F32'"):
        by_name("F32")


@pytest.mark.parametrize(("name", "np_type"), [(row[0], row[1]) for row in FIXED_WIDTH])
def test_by_numpy_fixed_width(name: str, np_type: object) -> None:
    assert by_numpy(np.dtype(np_type)).name == name  # type: ignore[call-overload]


@pytest.mark.parametrize("dtype", [np.dtype(object), np.dtype("U5"), np.dtype("S3")])
def test_strings_and_objects_map_to_bytes(dtype: np.dtype) -> None:
    assert by_numpy(dtype) is DATATYPES["BYTES"]


@pytest.mark.parametrize("dtype", [np.dtype(np.complex64), np.dtype("datetime64[s]")])
def test_by_numpy_rejects_dtypes_without_a_kserve_type(dtype: np.dtype) -> None:
    message = f"numpy dtype {dtype} has no KServe v2 datatype"
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        by_numpy(dtype)


@pytest.mark.parametrize(("name", "config_name"), [(row[0], row[4]) for row in EXPECTED])
def test_by_config_type(name: str, config_name: str) -> None:
    assert by_config_type(mc.DataType.Value(config_name)) is DATATYPES[name]


def test_by_config_type_names_an_unsupported_enum() -> None:
    with pytest.raises(InvalidInputError, match="model config datatype TYPE_INVALID is not"):
        by_config_type(mc.DataType.Value("TYPE_INVALID"))


def test_by_config_type_rejects_an_unknown_number() -> None:
    with pytest.raises(InvalidInputError, match="model config datatype 999 is not supported"):
        by_config_type(999)
