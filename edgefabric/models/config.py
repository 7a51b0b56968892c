"""Triton `ModelConfig`: read `config.pbtxt`, complete it from the model graph, pick versions.

An existing Triton model repository works unchanged: ``config.pbtxt`` is parsed with protobuf
``text_format`` into Triton's own ``ModelConfig`` message. When it is missing (or declares no
inputs/outputs) the I/O is derived from the model graph; a model whose every input and output
has a dynamic first dimension is treated as batchable along it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import ModelLoadError
from edgefabric.kserve.datatypes import DataType

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_MODEL_FILENAME",
    "GraphTensor",
    "complete_config",
    "instance_count",
    "parse_config",
    "read_config",
    "select_versions",
]

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """An input or output as the model graph declares it; ``None`` marks a dynamic dimension."""

    name: str
    datatype: DataType
    shape: tuple[int | None, ...]


def parse_config(text: str, *, source: str) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text; syntax errors name the file, line and column."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except (text_format.ParseError, ValueError) as exc:
        # protobuf raises a bare ValueError for an enum number out of range (found by fuzzing).
        raise ModelLoadError(f"{source}: invalid model config: {exc}") from None
    return config


def read_config(model_dir: Path) -> mc.ModelConfig:
    """The model's ``config.pbtxt`` (an empty config named after the folder when absent)."""
    path = model_dir / CONFIG_FILENAME
    if path.is_file():
        config = parse_config(path.read_text(encoding="utf-8"), source=str(path))
    else:
        config = mc.ModelConfig()
    if config.name and config.name != model_dir.name:
        raise ModelLoadError(
            f"{path}: config names the model {config.name!r} but its folder is "
            f"{model_dir.name!r}; they must match"
        )
    config.name = model_dir.name
    return config


def _batchable(graph_inputs: Sequence[GraphTensor], graph_outputs: Sequence[GraphTensor]) -> bool:
    tensors = [*graph_inputs, *graph_outputs]
    return bool(tensors) and all(t.shape and t.shape[0] is None for t in tensors)


def _dims(shape: Sequence[int | None]) -> list[int]:
    return [-1 if dim is None else dim for dim in shape]


def _fill_tensors(
    declared: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    graph: Sequence[GraphTensor],
    *,
    kind: str,
    batching: bool,
    source: str,
) -> list[tuple[str, int, list[int]]]:
    """Config tensors as (name, config datatype, dims), checked against the graph."""
    by_name = {t.name: t for t in graph}
    if not declared:
        return [
            (t.name, t.datatype.config_type, _dims(t.shape[1:] if batching else t.shape))
            for t in graph
        ]
    result = []
    for tensor in declared:
        found = by_name.get(tensor.name)
        if found is None:
            raise ModelLoadError(
                f"{source}: config declares {kind} {tensor.name!r} but the model has "
                f"{sorted(by_name)}"
            )
        if tensor.data_type != found.datatype.config_type:
            raise ModelLoadError(
                f"{source}: {kind} {tensor.name!r} is {mc.DataType.Name(tensor.data_type)} in "
                f"the config but {found.datatype.name} in the model"
            )
        result.append((tensor.name, tensor.data_type, list(tensor.dims)))
    return result


def complete_config(
    config: mc.ModelConfig,
    graph_inputs: Sequence[GraphTensor],
    graph_outputs: Sequence[GraphTensor],
    *,
    default_max_batch_size: int,
    source: str,
) -> mc.ModelConfig:
    """A copy of ``config`` with platform, batching and I/O filled in from the model graph."""
    done = mc.ModelConfig()
    done.CopyFrom(config)
    if not done.platform and not done.backend:
        done.platform = ONNX_PLATFORM
    if not done.backend:
        done.backend = ONNX_BACKEND
    auto_batch = not done.input and done.max_batch_size == 0
    if auto_batch and _batchable(graph_inputs, graph_outputs):
        done.max_batch_size = default_max_batch_size
    batching = done.max_batch_size > 0
    inputs = _fill_tensors(done.input, graph_inputs, kind="input", batching=batching, source=source)
    outputs = _fill_tensors(
        done.output, graph_outputs, kind="output", batching=batching, source=source
    )
    if not done.input:
        for name, data_type, dims in inputs:
            done.input.add(name=name, data_type=data_type, dims=dims)
    if not done.output:
        for name, data_type, dims in outputs:
            done.output.add(name=name, data_type=data_type, dims=dims)
    if not done.instance_group:
        done.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    return done


def instance_count(config: mc.ModelConfig) -> int:
    """Model instances the config asks for: every group counts at least one, and so does none."""
    return max(sum(max(int(group.count), 1) for group in config.instance_group), 1)


def select_versions(policy: mc.ModelVersionPolicy, available: Sequence[int]) -> list[int]:
    """Versions to serve under ``policy`` (default: the latest one), newest first."""
    newest_first = sorted(set(available), reverse=True)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return newest_first
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in newest_first if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return newest_first[: max(count, 1)]
