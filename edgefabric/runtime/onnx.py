"""ONNX Runtime backend: one session per configured instance, inference on worker threads.

ONNX Runtime releases the GIL while it computes, so ``instance_group`` count sessions on as many
threads run in parallel. Execution providers are chosen from what the installed wheel offers:
TensorRT, then CUDA, then CPU, unless the caller names them.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import InternalError, InvalidInputError, ModelLoadError
from edgefabric.inference import Tensors
from edgefabric.kserve.datatypes import DATATYPES, DataType
from edgefabric.models.config import GraphTensor, instance_count
from edgefabric.runtime.base import RunTimings

__all__ = ["OnnxRuntime", "OrtModel", "OrtOptions", "choose_providers", "graph_tensors"]

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
_ORT_TYPES: dict[str, DataType] = {
    "tensor(bool)": DATATYPES["BOOL"],
    "tensor(uint8)": DATATYPES["UINT8"],
    "tensor(uint16)": DATATYPES["UINT16"],
    "tensor(uint32)": DATATYPES["UINT32"],
    "tensor(uint64)": DATATYPES["UINT64"],
    "tensor(int8)": DATATYPES["INT8"],
    "tensor(int16)": DATATYPES["INT16"],
    "tensor(int32)": DATATYPES["INT32"],
    "tensor(int64)": DATATYPES["INT64"],
    "tensor(float16)": DATATYPES["FP16"],
    "tensor(bfloat16)": DATATYPES["BF16"],
    "tensor(float)": DATATYPES["FP32"],
    "tensor(double)": DATATYPES["FP64"],
    "tensor(string)": DATATYPES["BYTES"],
}


@dataclass(frozen=True, slots=True)
class OrtOptions:
    """Knobs for every session this runtime creates.

    ``providers``: execution providers in order of preference; empty means the best the
    installed onnxruntime offers. Thread counts of 0 let ONNX Runtime decide.
    ``inline_max_us``: a model whose executions average below this runs on the calling
    thread when a session is free, because handing it to a worker thread would cost more
    than the work itself (0 always uses worker threads).
    """

    providers: tuple[str, ...] = ()
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    inline_max_us: int = 100


def choose_providers(
    requested: Sequence[str], available: Sequence[str], *, gpu_allowed: bool = True
) -> list[str]:
    """Providers to ask ONNX Runtime for: requested (or preferred) ones that are installed."""
    wanted = list(requested) or list(PREFERRED_PROVIDERS)
    missing = [p for p in requested if p not in available]
    if missing:
        raise ModelLoadError(
            f"execution providers {missing} are not in this onnxruntime build; available: "
            f"{list(available)}"
        )
    chosen = [p for p in wanted if p in available and (gpu_allowed or p not in _GPU_PROVIDERS)]
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    return chosen


def graph_tensors(args: Sequence[Any], path: Path) -> tuple[GraphTensor, ...]:
    """Inputs or outputs of an ORT session as :class:`GraphTensor` (``None`` = dynamic dim)."""
    tensors = []
    for arg in args:
        datatype = _ORT_TYPES.get(arg.type)
        if datatype is None:
            raise ModelLoadError(f"{path}: tensor {arg.name!r} has unsupported type {arg.type}")
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in arg.shape)
        tensors.append(GraphTensor(arg.name, datatype, shape))
    return tuple(tensors)


def _to_ort_input(name: str, array: NDArray[np.generic]) -> Any:
    """numpy as ONNX Runtime takes it: str for BYTES, an OrtValue for BF16."""
    if array.dtype == np.object_:
        try:
            return np.vectorize(
                lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[np.object_]
            )(array)
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"input {name!r}: BYTES element is not valid UTF-8, and this ONNX model "
                "takes strings"
            ) from None
    if array.dtype == DATATYPES["BF16"].numpy:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(array).view(np.uint16), TensorProto.BFLOAT16
        )
    return array


def _from_ort_value(value: Any) -> NDArray[np.generic]:
    if value.data_type() != "tensor(bfloat16)":
        return value.numpy()  # type: ignore[no-any-return]
    shape = value.shape()
    raw = ctypes.string_at(value.data_ptr(), 2 * int(np.prod(shape)))
    return np.frombuffer(raw, dtype=DATATYPES["BF16"].numpy).reshape(shape)


class OrtModel:
    """A model version loaded as ``instance_count`` sessions with as many worker threads."""

    def __init__(
        self, path: Path, *, instance_count: int, providers: list[str], options: OrtOptions
    ) -> None:
        self._path = path
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        try:
            sessions = [
                ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
                for _ in range(max(instance_count, 1))
            ]
        except Exception as exc:  # ORT raises its own pybind types; wrap at this seam
            raise ModelLoadError(f"{path}: ONNX Runtime could not load the model: {exc}") from None
        self._sessions: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for session in sessions:
            self._sessions.put(session)
        first = sessions[0]
        self._inputs = graph_tensors(first.get_inputs(), path)
        self._outputs = graph_tensors(first.get_outputs(), path)
        self._provider: str = str(first.get_providers()[0])
        self._needs_ort_values = any(
            t.datatype.name == "BF16" for t in (*self._inputs, *self._outputs)
        )
        self._executor = ThreadPoolExecutor(
            max_workers=max(instance_count, 1), thread_name_prefix=f"ort-{path.parent.name}"
        )
        self._inline_max_ns = options.inline_max_us * 1000
        self._mean_infer_ns: float | None = None  # moving average; None until the first run

    @property
    def graph_inputs(self) -> Sequence[GraphTensor]:
        """Inputs as the graph declares them."""
        return self._inputs

    @property
    def graph_outputs(self) -> Sequence[GraphTensor]:
        """Outputs as the graph declares them."""
        return self._outputs

    @property
    def execution_provider(self) -> str:
        """The provider the sessions run on first."""
        return self._provider

    def run(self, inputs: Tensors, output_names: Sequence[str]) -> tuple[Tensors, RunTimings]:
        """Run on the next free session (blocking; call from a worker thread)."""
        return self._run_on(self._sessions.get(), inputs, output_names)

    def _run_on(
        self, session: ort.InferenceSession, inputs: Tensors, output_names: Sequence[str]
    ) -> tuple[Tensors, RunTimings]:
        """Run on ``session``, which this call owns and hands back to the pool."""
        start = time.perf_counter_ns()
        try:
            feed = {name: _to_ort_input(name, array) for name, array in inputs.items()}
            began = time.perf_counter_ns()
            if self._needs_ort_values:
                ort_feed = {
                    k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
                    for k, v in feed.items()
                }
                values = session.run_with_ort_values(list(output_names), ort_feed)
                ended = time.perf_counter_ns()
                results = [_from_ort_value(v) for v in values]
            else:
                results = session.run(list(output_names), feed)
                ended = time.perf_counter_ns()
        except InvalidInputError:
            raise
        except Exception as exc:  # ORT's pybind exceptions; wrap at this seam
            raise _wrap_run_error(exc, self._path) from None
        finally:
            self._sessions.put(session)
        outputs = dict(zip(output_names, results, strict=True))
        infer_ns = ended - began
        mean = self._mean_infer_ns
        self._mean_infer_ns = infer_ns if mean is None else mean + (infer_ns - mean) / 16
        done = time.perf_counter_ns()
        return outputs, RunTimings(
            input_ns=began - start, infer_ns=infer_ns, output_ns=done - ended
        )

    async def infer(
        self, inputs: Tensors, output_names: Sequence[str]
    ) -> tuple[Tensors, RunTimings]:
        """Run inline when the model is tiny and a session is free, else on a worker thread."""
        mean = self._mean_infer_ns
        if mean is not None and mean < self._inline_max_ns:
            try:
                session = self._sessions.get_nowait()
            except queue.Empty:
                pass
            else:
                return self._run_on(session, inputs, output_names)
        submitted = time.perf_counter_ns()

        def timed() -> tuple[Tensors, RunTimings]:
            queue_ns = time.perf_counter_ns() - submitted
            outputs, timings = self.run(inputs, output_names)
            return outputs, RunTimings(
                queue_ns, timings.input_ns, timings.infer_ns, timings.output_ns
            )

        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    def close(self) -> None:
        """Stop the worker threads once queued work is done and drop the sessions."""
        self._executor.shutdown(wait=False)
        while not self._sessions.empty():
            self._sessions.get_nowait()


def _wrap_run_error(exc: Exception, path: Path) -> Exception:
    kind = type(exc).__name__
    if kind in {"InvalidArgument", "InvalidProtobuf"}:
        return InvalidInputError(f"model {path.parent.parent.name!r} rejected the input: {exc}")
    log.error("onnxruntime failed running %s: %s", path, exc, exc_info=exc)
    return InternalError(f"{kind} from the model runtime")


class OnnxRuntime:
    """Creates :class:`OrtModel` instances with shared options."""

    def __init__(self, options: OrtOptions | None = None) -> None:
        self.options = options or OrtOptions()

    def load(self, path: Path, config: mc.ModelConfig) -> OrtModel:
        """Load ``path`` with the instance count and device kind of ``config``."""
        count = instance_count(config)
        kinds = {group.kind for group in config.instance_group}
        gpu_allowed = mc.ModelInstanceGroup.KIND_CPU not in kinds or len(kinds) > 1
        providers = choose_providers(
            self.options.providers, ort.get_available_providers(), gpu_allowed=gpu_allowed
        )
        return OrtModel(path, instance_count=count, providers=providers, options=self.options)
