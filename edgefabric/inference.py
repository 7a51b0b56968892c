"""Transport-neutral inference requests and responses.

The gRPC servicer converts protobuf to these (see :mod:`edgefabric.kserve.converters`); the
data plane, batcher and runtimes only ever see these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

__all__ = ["InferenceRequest", "InferenceResponse", "ParameterValue", "Tensors"]

ParameterValue = bool | int | float | str
Tensors = dict[str, NDArray[np.generic]]


@dataclass(slots=True)
class InferenceRequest:
    """One decoded request.

    ``deadline_s`` is absolute on the ``time.monotonic()`` clock (``None``: no deadline): the
    earlier of the client's gRPC deadline and the ``timeout`` parameter.
    """

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: Tensors = field(default_factory=dict)
    requested_outputs: tuple[str, ...] = ()
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    priority: int = 0
    timeout_us: int = 0
    deadline_s: float | None = None

    @property
    def batch_rows(self) -> int:
        """Rows along dim 0 of the first input (1 for scalars or no inputs)."""
        for array in self.inputs.values():
            return int(array.shape[0]) if array.ndim else 1
        return 1


@dataclass(slots=True)
class InferenceResponse:
    """Outputs in the order the client asked for them (all outputs when it asked for none)."""

    model_name: str
    model_version: str
    id: str = ""
    outputs: Tensors = field(default_factory=dict)
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
