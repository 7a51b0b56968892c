"""The self-test a version passes before it serves: signed contract, then golden vectors.

Returns problems as readable lines (empty: passed) and raises nothing of its own, so the
caller decides what a failure means for the slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefabric.errors import EdgefabricError
from edgefabric.golden import GoldenVectors, Tolerance
from edgefabric.models.config import GraphTensor
from edgefabric.models.contract import ModelContract
from edgefabric.runtime.base import LoadedModel

__all__ = ["self_test"]


def _describe(tensors: Sequence[GraphTensor]) -> str:
    return ", ".join(
        f"{t.name} {t.datatype.name} [{','.join('?' if d is None else str(d) for d in t.shape)}]"
        for t in tensors
    )


def contract_problems(custom: Mapping[str, Any], model: LoadedModel) -> list[str]:
    """Where the loaded graph differs from the contract signed into the target."""
    raw = custom.get("contract")
    if raw is None:
        return []
    try:
        contract = ModelContract.from_json(raw)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"the signed contract is unreadable ({exc!r})"]
    problems = []
    for kind, signed, actual in (
        ("inputs", contract.inputs, tuple(model.graph_inputs)),
        ("outputs", contract.outputs, tuple(model.graph_outputs)),
    ):
        if signed != actual:
            problems.append(
                f"{kind} are {_describe(actual)}, the signed contract says {_describe(signed)}"
            )
    return problems


def read_golden(path: Path, custom: Mapping[str, Any]) -> GoldenVectors | str:
    """The golden vectors with their signed tolerances (decimal text), or what is wrong."""
    signed = custom.get("golden") or {}
    try:
        tolerances = {k: Tolerance.from_json(v) for k, v in signed.get("tolerances", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"the signed golden tolerances are unreadable ({exc!r})"
    try:
        return GoldenVectors.from_npz(path.read_bytes(), tolerances, source=str(path))
    except (EdgefabricError, OSError) as exc:
        return str(exc)


async def self_test(
    model: LoadedModel, custom: Mapping[str, Any], golden_path: Path | None
) -> list[str]:
    """Check ``model`` against its signed contract, then run its golden vectors (if any)."""
    problems = contract_problems(custom, model)
    if problems or golden_path is None:
        return problems
    golden = await asyncio.to_thread(read_golden, golden_path, custom)
    if isinstance(golden, str):
        return [golden]
    try:
        outputs, _ = await model.infer(golden.inputs, [t.name for t in model.graph_outputs])
    except EdgefabricError as exc:
        return [f"the golden inputs did not run: {exc}"]
    return golden.mismatches(outputs)
