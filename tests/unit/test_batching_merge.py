"""Merging requests along dim 0 and splitting outputs back: property tests with hypothesis."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from edgefabric.batching.merge import batch_rows, group_key, merge, split
from edgefabric.errors import InternalError, InvalidInputError
from edgefabric.inference import Tensors

pytestmark = pytest.mark.unit

_NUMERIC = [
    np.dtype(t) for t in ("float32", "float64", "float16", "int8", "int64", "uint16", "bool")
]


@st.composite
def _requests(draw: st.DrawFn) -> list[Tensors]:
    """1-6 requests of one group: shared names, dtypes and non-batch dims; own row counts."""
    names = draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3, unique=True))
    kinds = {
        name: (
            draw(st.sampled_from([*_NUMERIC, np.dtype(object)])),
            draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)),
        )
        for name in names
    }
    requests = []
    for _ in range(draw(st.integers(1, 6))):
        rows = draw(st.integers(1, 4))
        tensors: Tensors = {}
        for name, (dtype, inner) in kinds.items():
            shape = (rows, *inner)
            if dtype.kind == "O":
                size = int(np.prod(shape))
                array = np.empty(size, dtype=object)
                array[:] = draw(st.lists(st.binary(max_size=6), min_size=size, max_size=size))
                tensors[name] = array.reshape(shape)
            else:
                tensors[name] = draw(hnp.arrays(dtype, shape))
        requests.append(tensors)
    return requests


def _same(left: NDArray[Any], right: NDArray[Any]) -> bool:
    """Bit-identical: dtype, shape and bytes (element-wise equality for BYTES)."""
    if left.dtype != right.dtype or left.shape != right.shape:
        return False
    if left.dtype.kind == "O":
        return bool(left.tolist() == right.tolist())
    return bool(np.ascontiguousarray(left).tobytes() == np.ascontiguousarray(right).tobytes())


_reverse = np.frompyfunc(lambda b: b[::-1] + b"!", 1, 1)


def _row_wise_model(inputs: Tensors) -> Tensors:
    """A deterministic model whose every output row depends only on the same input row."""
    outputs: Tensors = {}
    for name, tensor in inputs.items():
        array: NDArray[Any] = tensor
        if array.dtype.kind == "O":
            outputs[f"{name}_rev"] = _reverse(array).astype(object)
        elif array.dtype.kind == "f":
            flat = array.reshape(array.shape[0], -1)
            with np.errstate(all="ignore"):
                outputs[f"{name}_tanh"] = np.tanh(array * array.dtype.type(1.5) + 0.25)
                outputs[f"{name}_sum"] = flat.sum(axis=1)
                outputs[f"{name}_max"] = flat.max(axis=1, initial=-np.inf)
        else:
            outputs[f"{name}_neg"] = np.bitwise_not(array)
            outputs[f"{name}_rows"] = array.reshape(array.shape[0], -1).astype(np.int64).sum(axis=1)
    return outputs


@settings(max_examples=200, deadline=None)
@given(requests=_requests())
def test_merge_then_split_round_trips(requests: list[Tensors]) -> None:
    merged, row_counts = merge(requests)
    assert row_counts == [batch_rows(r) for r in requests]
    assert batch_rows(merged) == sum(row_counts)
    parts = split(merged, row_counts)
    assert len(parts) == len(requests)
    for part, request in zip(parts, requests, strict=True):
        assert part.keys() == request.keys()
        for name in request:
            assert _same(part[name], request[name])


@settings(max_examples=200, deadline=None)
@given(requests=_requests())
def test_batched_results_are_bit_identical_to_running_alone(requests: list[Tensors]) -> None:
    merged, row_counts = merge(requests)
    batched = split(_row_wise_model(merged), row_counts)
    for part, request in zip(batched, requests, strict=True):
        alone = _row_wise_model(request)
        assert part.keys() == alone.keys()
        for name in alone:
            assert _same(part[name], alone[name]), name


@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
    rows=st.integers(1, 5),
    other_rows=st.integers(1, 5),
)
def test_group_key_ignores_rows_and_input_order(
    shape: tuple[int, ...], rows: int, other_rows: int
) -> None:
    one: dict[str, NDArray[Any]] = {
        "a": np.zeros((rows, *shape[1:]), np.float32),
        "b": np.zeros((rows, 2), np.int8),
    }
    other: dict[str, NDArray[Any]] = {
        "b": np.ones((other_rows, 2), np.int8),
        "a": np.ones((other_rows, *shape[1:]), np.float32),
    }
    assert group_key(one) == group_key(other)


@pytest.mark.parametrize(
    "other",
    [
        {"a": np.zeros((1, 4), np.float32)},
        {"a": np.zeros((1, 3), np.float64)},
        {"a": np.zeros((1, 3, 1), np.float32)},
        {"b": np.zeros((1, 3), np.float32)},
        {"a": np.zeros((1, 3), np.float32), "b": np.zeros((1, 3), np.float32)},
        {"a": np.zeros((1, 3), ">f4")},
    ],
    ids=["dim", "dtype", "rank", "name", "extra-input", "byte-order"],
)
def test_group_key_separates_what_cannot_be_concatenated(other: Tensors) -> None:
    base: Tensors = {"a": np.zeros((2, 3), np.float32)}
    assert group_key(base) != group_key(other)
    with pytest.raises(ValueError, match="does not match request 0"):
        merge([base, other])


def test_bytes_tensors_merge_without_copying_elements() -> None:
    first = np.array([[b"ab"], [b"c"]], dtype=object)
    second = np.array([[b"xyz"]], dtype=object)
    merged, row_counts = merge([{"s": first}, {"s": second}])
    assert merged["s"].dtype == object
    assert merged["s"][2, 0] is second[0, 0]
    assert [p["s"].tolist() for p in split(merged, row_counts)] == [[[b"ab"], [b"c"]], [[b"xyz"]]]


def test_one_request_passes_through_unchanged() -> None:
    array = np.arange(6, dtype=np.int32).reshape(3, 2)
    merged, row_counts = merge([{"x": array}])
    assert merged["x"] is array
    assert row_counts == [3]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "needs at least one input"),
        ({"x": np.array(1.0, np.float32)}, "input 'x': .* got a scalar"),
        ({"x": np.zeros((2, 1)), "y": np.zeros((3, 1))}, r"share dim 0.*'x': 2, 'y': 3"),
    ],
    ids=["no-inputs", "scalar", "rows-differ"],
)
def test_batch_rows_refuses_unbatchable_requests(inputs: Tensors, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        batch_rows(inputs)


def test_split_refuses_outputs_that_lost_the_batch_dimension() -> None:
    with pytest.raises(InternalError, match=r"output 'y' of a batch of 4 rows .* has 3 rows"):
        split({"y": np.zeros((3, 2))}, [1, 3])
    with pytest.raises(InternalError, match="has a scalar"):
        split({"y": np.zeros(())}, [1])


def test_merge_needs_a_request() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        merge([])
