"""Golden test vectors: inputs, the outputs a model version must reproduce, and tolerances.

The store runs the pushed inputs once and keeps inputs and outputs as one ``.npz`` (keys
``input:NAME`` and ``output:NAME``); the tolerances travel in the signed TUF target. An edge
agent runs the inputs through the version it is about to switch to and compares (self-test).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgefabric.errors import InvalidModelError

__all__ = ["GoldenVectors", "Tolerance", "read_inputs_npz", "run_model_bytes"]

_INPUT = "input:"
_OUTPUT = "output:"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|`` element-wise (exact for ints/bools)."""

    rtol: float = 1e-4
    atol: float = 1e-5

    def to_json(self) -> dict[str, str]:
        """JSON-ready form; numbers as text, since canonical JSON (what TUF signs) has no floats."""
        return {"rtol": repr(self.rtol), "atol": repr(self.atol)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Tolerance:
        """Inverse of :meth:`to_json`."""
        return cls(rtol=float(raw["rtol"]), atol=float(raw["atol"]))


def _load_npz(data: bytes, *, source: str) -> dict[str, NDArray[Any]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidModelError(
            f"{source}: not a readable .npz of numeric arrays ({exc}); "
            "save golden inputs with numpy.savez(path, input_name=array, ...)"
        ) from None


def read_inputs_npz(data: bytes, *, source: str) -> dict[str, NDArray[Any]]:
    """Golden inputs as a user supplies them: ``numpy.savez(path, <input name>=array, ...)``."""
    return _load_npz(data, source=source)


def run_model_bytes(model: bytes, inputs: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """Run ``inputs`` through ``model`` once on ONNX Runtime's CPU provider; every output."""
    import onnxruntime as ort  # noqa: PLC0415  (only the store and the agent's self-test run it)

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    try:
        results = session.run(names, dict(inputs))
    except Exception as exc:  # ORT's pybind exceptions; wrap at this seam
        raise InvalidModelError(f"golden inputs do not run on the model: {exc}") from None
    return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}


@dataclass(frozen=True)
class GoldenVectors:
    """Inputs, expected outputs and a tolerance per output."""

    inputs: dict[str, NDArray[Any]]
    outputs: dict[str, NDArray[Any]]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)

    def to_npz(self) -> bytes:
        """Inputs and outputs as one ``.npz`` (tolerances are not in it; they are signed)."""
        arrays = {f"{_INPUT}{k}": v for k, v in self.inputs.items()}
        arrays.update({f"{_OUTPUT}{k}": v for k, v in self.outputs.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_npz(
        cls, data: bytes, tolerances: Mapping[str, Tolerance], *, source: str = "golden vectors"
    ) -> GoldenVectors:
        """Read what :meth:`to_npz` wrote."""
        arrays = _load_npz(data, source=source)
        inputs = {k.removeprefix(_INPUT): v for k, v in arrays.items() if k.startswith(_INPUT)}
        outputs = {k.removeprefix(_OUTPUT): v for k, v in arrays.items() if k.startswith(_OUTPUT)}
        if not inputs or not outputs:
            raise InvalidModelError(f"{source}: needs input:* and output:* arrays")
        return cls(inputs, outputs, dict(tolerances))

    def mismatches(self, actual: Mapping[str, NDArray[Any]]) -> list[str]:
        """Human-readable differences between ``actual`` and the expected outputs (empty: pass)."""
        problems = []
        for name, expected in self.outputs.items():
            got = actual.get(name)
            if got is None:
                problems.append(f"output {name!r}: missing")
                continue
            if got.shape != expected.shape:
                problems.append(
                    f"output {name!r}: shape {list(got.shape)}, want {list(expected.shape)}"
                )
                continue
            tolerance = self.tolerances.get(name, Tolerance())
            if np.issubdtype(expected.dtype, np.floating):
                close = np.isclose(got, expected, rtol=tolerance.rtol, atol=tolerance.atol)
            else:
                close = got == expected
            if not np.all(close):
                worst = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
                problems.append(
                    f"output {name!r}: {int(np.size(close) - np.count_nonzero(close))} of "
                    f"{np.size(close)} elements off (max |diff| {worst:.3g}, "
                    f"rtol {tolerance.rtol:g}, atol {tolerance.atol:g})"
                )
        return problems
