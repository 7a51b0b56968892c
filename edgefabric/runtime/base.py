"""The runtime seam: what the model repository needs from any backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.inference import Tensors
from edgefabric.models.config import GraphTensor

__all__ = ["LoadedModel", "RunTimings", "Runtime"]


@dataclass(frozen=True, slots=True)
class RunTimings:
    """Where one execution spent its time, in nanoseconds."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


class LoadedModel(Protocol):
    """One loaded model version, ready to run. Implementations wrap their library's errors."""

    @property
    def graph_inputs(self) -> Sequence[GraphTensor]:
        """Inputs as the model graph declares them."""
        ...

    @property
    def graph_outputs(self) -> Sequence[GraphTensor]:
        """Outputs as the model graph declares them."""
        ...

    @property
    def execution_provider(self) -> str:
        """The execution provider (device) this model runs on, e.g. ``CPUExecutionProvider``."""
        ...

    async def infer(
        self, inputs: Tensors, output_names: Sequence[str]
    ) -> tuple[Tensors, RunTimings]:
        """Run once, off the event loop; raises project errors only."""
        ...

    def close(self) -> None:
        """Release sessions and threads; called once no request uses the model."""
        ...


class Runtime(Protocol):
    """Loads model files (blocking; the repository calls it from a worker thread)."""

    def load(self, path: Path, config: mc.ModelConfig) -> LoadedModel:
        """Load ``path`` for a model configured by ``config`` (instances, device kind)."""
        ...
