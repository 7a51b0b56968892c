"""Golden vectors: stored outputs and tolerance checks."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgefabric.errors import InvalidModelError
from edgefabric.golden import GoldenVectors, Tolerance, read_inputs_npz, run_model_bytes
from edgefabric.samples import mlp_model

pytestmark = pytest.mark.unit


def _vectors() -> GoldenVectors:
    inputs = {"x": np.ones((2, 16), np.float32)}
    outputs = run_model_bytes(mlp_model().SerializeToString(), inputs)
    return GoldenVectors(inputs, outputs, {name: Tolerance() for name in outputs})


def test_npz_round_trip_and_self_comparison() -> None:
    vectors = _vectors()
    again = GoldenVectors.from_npz(vectors.to_npz(), vectors.tolerances)
    assert again.mismatches(vectors.outputs) == []
    np.testing.assert_array_equal(again.inputs["x"], vectors.inputs["x"])


def test_outputs_beyond_tolerance_are_reported() -> None:
    vectors = _vectors()
    name = next(iter(vectors.outputs))
    off = {name: vectors.outputs[name] + 1.0}
    (problem,) = vectors.mismatches(off)
    assert problem.startswith(f"output {name!r}: ")
    assert "elements off" in problem


def test_missing_and_misshapen_outputs_are_reported() -> None:
    vectors = _vectors()
    name = next(iter(vectors.outputs))
    assert vectors.mismatches({}) == [f"output {name!r}: missing"]
    assert "shape [1]" in vectors.mismatches({name: np.zeros(1, np.float32)})[0]


def test_a_file_that_is_not_npz_is_refused() -> None:
    with pytest.raises(InvalidModelError, match=r"not a readable \.npz"):
        read_inputs_npz(b"nope", source="g.npz")


def test_pickled_object_arrays_are_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvalidModelError, match=r"not a readable \.npz"):
        read_inputs_npz(buffer.getvalue(), source="g.npz")
