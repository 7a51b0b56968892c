"""Merging requests into one batch along dim 0 and splitting the outputs back (pure numpy).

Only requests with the same :func:`group_key` (input names, dtypes and non-batch dims) are
merged, so concatenation never pads, casts or reshapes: a row-wise model gives every request
exactly the bytes it would have got running alone. BYTES tensors (``object`` arrays) merge the
same way; their elements are shared, not copied.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgefabric.errors import InternalError, InvalidInputError
from edgefabric.inference import Tensors

_Arrays = Mapping[str, NDArray[Any]]

__all__ = ["batch_rows", "group_key", "merge", "split"]


def batch_rows(inputs: _Arrays) -> int:
    """Rows along dim 0, which every input must share; raises ``InvalidInputError`` otherwise."""
    if not inputs:
        raise InvalidInputError("a batched model needs at least one input tensor, got none")
    rows: dict[str, int] = {}
    for name, array in inputs.items():
        if array.ndim == 0:
            raise InvalidInputError(
                f"input {name!r}: a batched model needs a batch dimension, got a scalar"
            )
        rows[name] = int(array.shape[0])
    if len(set(rows.values())) > 1:
        raise InvalidInputError(
            f"inputs of a batched model must share dim 0 (the batch), got rows {rows}"
        )
    return next(iter(rows.values()))


def group_key(inputs: _Arrays) -> Hashable:
    """What requests must share to be merged: names, dtypes and every dim but the first."""
    return tuple(
        sorted((name, array.dtype.str, tuple(array.shape[1:])) for name, array in inputs.items())
    )


def merge(requests: Sequence[_Arrays]) -> tuple[Tensors, list[int]]:
    """Concatenate requests of one group along dim 0; returns the batch and rows per request."""
    if not requests:
        raise ValueError("merge needs at least one request")
    row_counts = [batch_rows(tensors) for tensors in requests]
    if len(requests) == 1:
        return dict(requests[0]), row_counts
    first = requests[0]
    key = group_key(first)
    for index, tensors in enumerate(requests[1:], start=1):
        if group_key(tensors) != key:
            raise ValueError(
                f"request {index} does not match request 0 (names, dtypes, non-batch dims): "
                f"{group_key(tensors)} vs {key}"
            )
    merged = {name: np.concatenate([t[name] for t in requests], axis=0) for name in first}
    return merged, row_counts


def split(outputs: _Arrays, row_counts: Sequence[int]) -> list[Tensors]:
    """Cut each output of a batch back into per-request views along dim 0."""
    total = sum(row_counts)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise InternalError(
                f"output {name!r} of a batch of {total} rows (per request {list(row_counts)}) "
                f"has {got}; a dynamically batched model must keep dim 0 as the batch"
            )
    bounds = np.cumsum([0, *row_counts]).tolist()
    return [
        {name: array[start:stop] for name, array in outputs.items()}
        for start, stop in itertools.pairwise(bounds)
    ]
