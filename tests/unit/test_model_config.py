"""Triton ModelConfig: parsing, reading from a model folder, completion from the graph, versions."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import ModelLoadError
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.models.config import (
    CONFIG_FILENAME,
    GraphTensor,
    complete_config,
    parse_config,
    read_config,
    select_versions,
)
from edgefabric.samples import MLP_CONFIG

pytestmark = pytest.mark.unit

FP32 = DATATYPES["FP32"]
INT64 = DATATYPES["INT64"]
TYPE_FP32 = mc.DataType.Value("TYPE_FP32")
TYPE_INT64 = mc.DataType.Value("TYPE_INT64")
TYPE_INT32 = mc.DataType.Value("TYPE_INT32")


def _complete(config: mc.ModelConfig, inputs, outputs, default: int = 32) -> mc.ModelConfig:
    return complete_config(config, inputs, outputs, default_max_batch_size=default, source="src")


def _io(config: mc.ModelConfig) -> tuple[list[tuple[str, int, list[int]]], ...]:
    return (
        [(t.name, t.data_type, list(t.dims)) for t in config.input],
        [(t.name, t.data_type, list(t.dims)) for t in config.output],
    )


# --- parse_config / read_config -------------------------------------------------------------


def test_parse_config_reads_triton_text_format() -> None:
    config = parse_config(MLP_CONFIG, source="mlp/config.pbtxt")
    assert config.name == "mlp"
    assert config.max_batch_size == 64
    assert _io(config) == ([("x", TYPE_FP32, [16])], [("logits", TYPE_FP32, [8])])
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.version_policy.latest.num_versions == 1


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('name: "m"\nmax_batch_size: "many"\n', "2:"),
        ('name: "m"\nno_such_field: 1\n', "2:"),
        ('name: "m"\ninput [ { name: "x" \n', "2:17"),
    ],
)
def test_parse_errors_name_the_file_and_line(text: str, where: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        parse_config(text, source="/repo/m/config.pbtxt")
    message = str(info.value)
    assert message.startswith("/repo/m/config.pbtxt: invalid model config: ")
    assert where in message


def test_read_config_without_a_file_is_named_after_the_folder(tmp_path: Path) -> None:
    model_dir = tmp_path / "resnet"
    model_dir.mkdir()
    config = read_config(model_dir)
    assert config.name == "resnet"
    assert config.max_batch_size == 0
    assert len(config.input) == 0


def test_read_config_fills_in_a_missing_name(tmp_path: Path) -> None:
    model_dir = tmp_path / "mlp"
    model_dir.mkdir()
    (model_dir / CONFIG_FILENAME).write_text("max_batch_size: 4\n", encoding="utf-8")
    config = read_config(model_dir)
    assert (config.name, config.max_batch_size) == ("mlp", 4)


def test_read_config_with_a_matching_name(tmp_path: Path) -> None:
    model_dir = tmp_path / "mlp"
    model_dir.mkdir()
    (model_dir / CONFIG_FILENAME).write_text(MLP_CONFIG, encoding="utf-8")
    config = read_config(model_dir)
    assert config.name == "mlp"
    assert config.max_batch_size == 64


def test_read_config_rejects_a_name_that_differs_from_the_folder(tmp_path: Path) -> None:
    model_dir = tmp_path / "other"
    model_dir.mkdir()
    path = model_dir / CONFIG_FILENAME
    path.write_text(MLP_CONFIG, encoding="utf-8")
    with pytest.raises(ModelLoadError) as info:
        read_config(model_dir)
    assert str(info.value) == (
        f"{path}: config names the model 'mlp' but its folder is 'other'; they must match"
    )


def test_read_config_syntax_error_names_the_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    path = model_dir / CONFIG_FILENAME
    path.write_text("max_batch_size: {\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match=f"^{path}: invalid model config: 1:"):
        read_config(model_dir)


# --- complete_config ------------------------------------------------------------------------

BATCHED_IN = [GraphTensor("x", FP32, (None, 16)), GraphTensor("ids", INT64, (None, None))]
BATCHED_OUT = [GraphTensor("logits", FP32, (None, 8))]


def test_complete_derives_io_and_turns_on_batching() -> None:
    config = mc.ModelConfig(name="mlp")
    done = _complete(config, BATCHED_IN, BATCHED_OUT, default=32)
    assert done.max_batch_size == 32
    assert _io(done) == (
        [("x", TYPE_FP32, [16]), ("ids", TYPE_INT64, [-1])],
        [("logits", TYPE_FP32, [8])],
    )
    assert done.platform == "onnxruntime_onnx"
    assert done.backend == "onnxruntime"
    assert [(g.count, g.kind) for g in done.instance_group] == [
        (1, mc.ModelInstanceGroup.KIND_AUTO)
    ]
    assert done.name == "mlp"


def test_complete_returns_a_copy() -> None:
    config = mc.ModelConfig(name="mlp")
    _complete(config, BATCHED_IN, BATCHED_OUT)
    assert config == mc.ModelConfig(name="mlp")


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        ([GraphTensor("x", FP32, (1, 16))], BATCHED_OUT),  # fixed first input dim
        (BATCHED_IN, [GraphTensor("logits", FP32, (4, 8))]),  # fixed first output dim
        ([*BATCHED_IN, GraphTensor("scale", FP32, ())], BATCHED_OUT),  # scalar input
        (BATCHED_IN, [*BATCHED_OUT, GraphTensor("n", INT64, ())]),  # scalar output
        ([], []),  # nothing to batch
    ],
)
def test_no_auto_batching_unless_every_tensor_has_a_dynamic_first_dim(inputs, outputs) -> None:
    done = _complete(mc.ModelConfig(name="m"), inputs, outputs)
    assert done.max_batch_size == 0
    expected_inputs = [
        (t.name, t.datatype.config_type, [-1 if d is None else d for d in t.shape]) for t in inputs
    ]
    assert _io(done)[0] == expected_inputs


def test_unbatched_dims_keep_the_whole_shape_with_dynamic_as_minus_one() -> None:
    done = _complete(
        mc.ModelConfig(name="m"),
        [GraphTensor("x", FP32, (1, None, 3))],
        [GraphTensor("y", FP32, (None, 3))],
    )
    assert _io(done) == ([("x", TYPE_FP32, [1, -1, 3])], [("y", TYPE_FP32, [-1, 3])])


def test_declared_max_batch_size_is_kept_and_strips_the_batch_dim() -> None:
    done = _complete(mc.ModelConfig(name="m", max_batch_size=4), BATCHED_IN, BATCHED_OUT)
    assert done.max_batch_size == 4
    assert _io(done)[0] == [("x", TYPE_FP32, [16]), ("ids", TYPE_INT64, [-1])]


def test_declared_inputs_are_kept_and_outputs_derived() -> None:
    config = mc.ModelConfig(name="m")
    config.input.add(name="x", data_type=TYPE_FP32, dims=[2, 16])
    done = _complete(config, [GraphTensor("x", FP32, (None, 16))], BATCHED_OUT)
    # declared inputs switch auto-batching off: the config is the user's word
    assert done.max_batch_size == 0
    assert _io(done) == ([("x", TYPE_FP32, [2, 16])], [("logits", TYPE_FP32, [-1, 8])])


def test_declared_platform_backend_and_instances_are_kept() -> None:
    config = mc.ModelConfig(name="m", platform="custom_platform")
    config.instance_group.add(count=3, kind=mc.ModelInstanceGroup.KIND_CPU)
    done = _complete(config, BATCHED_IN, BATCHED_OUT)
    assert done.platform == "custom_platform"
    assert done.backend == "onnxruntime"
    assert [(g.count, g.kind) for g in done.instance_group] == [(3, mc.ModelInstanceGroup.KIND_CPU)]
    backend_only = _complete(mc.ModelConfig(name="m", backend="mine"), BATCHED_IN, BATCHED_OUT)
    assert (backend_only.platform, backend_only.backend) == ("", "mine")


def test_declared_input_missing_from_the_graph_is_rejected() -> None:
    config = mc.ModelConfig(name="m")
    config.input.add(name="image", data_type=TYPE_FP32, dims=[3])
    with pytest.raises(ModelLoadError) as info:
        _complete(config, BATCHED_IN, BATCHED_OUT)
    assert str(info.value) == ("src: config declares input 'image' but the model has ['ids', 'x']")


def test_declared_output_missing_from_the_graph_is_rejected() -> None:
    config = mc.ModelConfig(name="m")
    config.output.add(name="probs", data_type=TYPE_FP32, dims=[8])
    with pytest.raises(ModelLoadError, match=r"config declares output 'probs'.*\['logits'\]"):
        _complete(config, BATCHED_IN, BATCHED_OUT)


def test_declared_input_with_the_wrong_datatype_is_rejected() -> None:
    config = mc.ModelConfig(name="m")
    config.input.add(name="x", data_type=TYPE_INT32, dims=[16])
    with pytest.raises(ModelLoadError) as info:
        _complete(config, BATCHED_IN, BATCHED_OUT)
    assert str(info.value) == "src: input 'x' is TYPE_INT32 in the config but FP32 in the model"


# --- select_versions -------------------------------------------------------------------------


def test_default_policy_serves_the_latest_version() -> None:
    assert select_versions(mc.ModelVersionPolicy(), [1, 3, 2]) == [3]


@pytest.mark.parametrize(("count", "expected"), [(1, [7]), (2, [7, 3]), (10, [7, 3, 1]), (0, [7])])
def test_latest_n(count: int, expected: list[int]) -> None:
    policy = mc.ModelVersionPolicy()
    policy.latest.num_versions = count
    assert select_versions(policy, [1, 7, 3]) == expected


def test_all_versions_newest_first_without_duplicates() -> None:
    policy = mc.ModelVersionPolicy()
    policy.all.SetInParent()
    assert select_versions(policy, [2, 1, 3, 2]) == [3, 2, 1]


def test_specific_versions_that_exist() -> None:
    policy = mc.ModelVersionPolicy()
    policy.specific.versions.extend([1, 3, 9])
    assert select_versions(policy, [1, 2, 3, 4]) == [3, 1]


@pytest.mark.parametrize("choice", ["default", "latest", "all", "specific"])
def test_no_versions_available(choice: str) -> None:
    policy = mc.ModelVersionPolicy()
    if choice != "default":
        getattr(policy, choice).SetInParent()
    assert select_versions(policy, []) == []
