"""A real ONNX Runtime backend whose executions a test can hold and release.

Used to have a request provably in flight (reload, drain, deadline tests) without sleeping.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.inference import Tensors
from edgefabric.models.config import GraphTensor
from edgefabric.runtime.base import RunTimings
from edgefabric.runtime.onnx import OnnxRuntime, OrtModel, OrtOptions


class Gate:
    """Executions wait at the gate until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.fail_with: Exception | None = None

    def wait_entered(self) -> None:
        """Block until an execution is waiting at the gate."""
        if not self.entered.wait(timeout=30):
            raise TimeoutError("no execution reached the gate")


class GatedModel:
    """Delegates to a real :class:`OrtModel` after passing the gate."""

    def __init__(self, inner: OrtModel, gate: Gate) -> None:
        self._inner = inner
        self._gate = gate
        self.closed = False

    @property
    def graph_inputs(self) -> Sequence[GraphTensor]:
        return self._inner.graph_inputs

    @property
    def graph_outputs(self) -> Sequence[GraphTensor]:
        return self._inner.graph_outputs

    @property
    def execution_provider(self) -> str:
        return self._inner.execution_provider

    async def infer(
        self, inputs: Tensors, output_names: Sequence[str]
    ) -> tuple[Tensors, RunTimings]:
        self._gate.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self._gate.opened.wait, 30)
        if self._gate.fail_with is not None:
            raise self._gate.fail_with
        return await self._inner.infer(inputs, output_names)

    def close(self) -> None:
        self.closed = True
        self._inner.close()


class GatedRuntime:
    """An :class:`OnnxRuntime` whose models all share one gate."""

    def __init__(self) -> None:
        self.gate = Gate()
        self._inner = OnnxRuntime(OrtOptions(intra_op_threads=1))
        self.loaded: dict[tuple[str, int], GatedModel] = {}

    def load(self, path: Path, config: mc.ModelConfig) -> GatedModel:
        model = GatedModel(self._inner.load(path, config), self.gate)
        self.loaded[(config.name, int(path.parent.name))] = model
        return model
