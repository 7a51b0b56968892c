"""Execution provider choice, and the sample models run in-process by ONNX Runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric import samples
from edgefabric.errors import InvalidInputError, ModelLoadError
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.models.config import GraphTensor, complete_config
from edgefabric.runtime.onnx import OnnxRuntime, OrtModel, OrtOptions, choose_providers

pytestmark = pytest.mark.unit

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
AZURE = "AzureExecutionProvider"
EVERYTHING = [AZURE, CPU, CUDA, TRT]


# --- choose_providers -----------------------------------------------------------------------


def test_default_preference_is_tensorrt_then_cuda_then_cpu() -> None:
    assert choose_providers([], EVERYTHING) == [TRT, CUDA, CPU]


@pytest.mark.parametrize(
    ("available", "expected"),
    [([CPU], [CPU]), ([CUDA, CPU], [CUDA, CPU]), ([AZURE, CPU], [CPU]), ([TRT, CPU], [TRT, CPU])],
)
def test_default_takes_what_is_installed(available: list[str], expected: list[str]) -> None:
    assert choose_providers([], available) == expected


def test_requested_order_is_kept() -> None:
    assert choose_providers([CPU, CUDA], EVERYTHING) == [CPU, CUDA]
    assert choose_providers([AZURE, CPU], EVERYTHING) == [AZURE, CPU]


@pytest.mark.parametrize("requested", [[CUDA], [TRT, CUDA], [AZURE]])
def test_cpu_is_always_appended(requested: list[str]) -> None:
    chosen = choose_providers(requested, EVERYTHING)
    assert chosen == [*requested, CPU]


def test_unknown_requested_provider_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError) as info:
        choose_providers([CUDA, "NoSuchExecutionProvider"], [AZURE, CPU])
    assert str(info.value) == (
        "execution providers ['CUDAExecutionProvider', 'NoSuchExecutionProvider'] are not in "
        "this onnxruntime build; available: ['AzureExecutionProvider', 'CPUExecutionProvider']"
    )


def test_gpu_not_allowed_drops_cuda_and_tensorrt() -> None:
    assert choose_providers([], EVERYTHING, gpu_allowed=False) == [CPU]
    assert choose_providers([TRT, CUDA], EVERYTHING, gpu_allowed=False) == [CPU]
    assert choose_providers([AZURE, CUDA], EVERYTHING, gpu_allowed=False) == [AZURE, CPU]


# --- sample models in ONNX Runtime ----------------------------------------------------------


@pytest.fixture
def load(tmp_path: Path) -> Iterator:
    loaded: list[OrtModel] = []

    def _load(name: str, model: onnx.ModelProto, instances: int = 1) -> OrtModel:
        path = samples.write_model(tmp_path, name, model)
        ort_model = OrtModel(path, instance_count=instances, providers=[CPU], options=OrtOptions())
        loaded.append(ort_model)
        return ort_model

    yield _load
    for ort_model in loaded:
        ort_model.close()


@pytest.mark.parametrize("name", list(samples.SAMPLE_MODELS))
def test_sample_models_pass_the_onnx_checker(name: str) -> None:
    build, _ = samples.SAMPLE_MODELS[name]
    onnx.checker.check_model(build(), full_check=True)


@pytest.mark.parametrize("datatype", list(samples.IDENTITY_TYPES))
def test_identity_models_pass_the_onnx_checker(datatype: str) -> None:
    onnx.checker.check_model(samples.identity_model(datatype), full_check=True)


def test_sample_models_are_reproducible() -> None:
    assert samples.mlp_model().SerializeToString() == samples.mlp_model().SerializeToString()


def test_mlp_runs(load) -> None:
    model = load("mlp", samples.mlp_model())
    assert model.execution_provider == CPU
    assert model.graph_inputs == (GraphTensor("x", DATATYPES["FP32"], (None, 16)),)
    assert model.graph_outputs == (GraphTensor("logits", DATATYPES["FP32"], (None, 8)),)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    outputs, timings = model.run({"x": x}, ["logits"])
    assert outputs["logits"].shape == (3, 8)
    assert outputs["logits"].dtype == np.float32
    assert timings.infer_ns > 0


def test_cnn_runs(load) -> None:
    model = load("cnn", samples.cnn_model())
    outputs, _ = model.run({"image": np.ones((2, 3, 32, 32), np.float32)}, ["scores"])
    assert outputs["scores"].shape == (2, 10)


def test_convnet_is_reproducible_and_rows_are_independent(load) -> None:
    """The compute-bound benchmark model: same bytes on every build, and a batch answers
    each row as running it alone would (what batching relies on)."""
    built = samples.convnet_model(size=32)
    assert built.SerializeToString() == samples.convnet_model(size=32).SerializeToString()
    model = load("convnet", built)
    images = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    batched, _ = model.run({"image": images}, ["scores"])
    assert batched["scores"].shape == (3, 10)
    alone, _ = model.run({"image": images[1:2]}, ["scores"])
    np.testing.assert_allclose(batched["scores"][1:2], alone["scores"], rtol=1e-5, atol=1e-6)


def test_stats_runs(load) -> None:
    model = load("stats", samples.stats_model())
    x = np.array([[1, 5, 2, 0, 0, 0, 0, 0], [-1, -2, -3, -4, -5, -6, -7, 9]], np.float32)
    outputs, _ = model.run({"x": x}, ["total", "peak", "argmax"])
    np.testing.assert_array_equal(outputs["total"], [[8], [-19]])
    np.testing.assert_array_equal(outputs["peak"], [[5], [9]])
    np.testing.assert_array_equal(outputs["argmax"], [[1], [7]])


def test_text_model_upper_cases_bytes(load) -> None:
    model = load("text", samples.text_model())
    assert model.graph_inputs == (GraphTensor("text", DATATYPES["BYTES"], (None,)),)
    text = np.array([b"hello", b"", "héllo".encode()], dtype=object)
    outputs, _ = model.run({"text": text}, ["upper", "same"])
    assert outputs["upper"].tolist() == ["HELLO", "", "HéLLO"]
    assert outputs["same"].tolist() == ["hello", "", "héllo"]


def test_text_model_rejects_non_utf8(load) -> None:
    model = load("text", samples.text_model())
    with pytest.raises(InvalidInputError, match="input 'text': BYTES element is not valid UTF-8"):
        model.run({"text": np.array([b"ok", b"\xff\xfe"], dtype=object)}, ["upper"])


def test_wrong_rank_is_invalid_input(load) -> None:
    model = load("text", samples.text_model())
    with pytest.raises(InvalidInputError, match="model 'text' rejected the input"):
        model.run({"text": np.array([[b"a"]], dtype=object)}, ["upper"])


def test_bf16_identity_round_trips_bits(load) -> None:
    model = load("identity_bf16", samples.identity_model("BF16"))
    assert model.graph_inputs[0].datatype is DATATYPES["BF16"]
    x = np.array([[1.5, -2.25, 3.0e38], [0.0, -0.0, np.inf]], dtype=ml_dtypes.bfloat16)
    outputs, _ = model.run({"input": x}, ["output"])
    y = outputs["output"]
    assert y.dtype == ml_dtypes.bfloat16
    assert y.shape == (2, 3)
    np.testing.assert_array_equal(y.view(np.uint16), x.view(np.uint16))


@pytest.mark.parametrize("datatype", [d for d in samples.IDENTITY_TYPES if d != "BF16"])
def test_identity_for_every_datatype(load, datatype: str) -> None:
    model = load(f"identity_{datatype.lower()}", samples.identity_model(datatype))
    dt = DATATYPES[datatype]
    assert model.graph_inputs == (GraphTensor("input", dt, (None, None)),)
    if datatype == "BYTES":
        x = np.array([[b"a", b"bc"]], dtype=object)
        expected: list = [["a", "bc"]]
    else:
        x = np.arange(4).reshape(2, 2) % 2 if datatype == "BOOL" else np.arange(4).reshape(2, 2)
        x = x.astype(dt.numpy)
        expected = x.tolist()
    outputs, _ = model.run({"input": x}, ["output"])
    assert outputs["output"].dtype == dt.numpy
    assert outputs["output"].tolist() == expected


def test_not_an_onnx_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime could not load the model"):
        OrtModel(path, instance_count=1, providers=[CPU], options=OrtOptions())


def test_graph_completes_a_missing_config(load) -> None:
    model = load("cnn", samples.cnn_model())
    done = complete_config(
        mc.ModelConfig(name="cnn"),
        model.graph_inputs,
        model.graph_outputs,
        default_max_batch_size=16,
        source="cnn",
    )
    assert done.max_batch_size == 16
    assert [list(t.dims) for t in done.input] == [[3, 32, 32]]
    assert [list(t.dims) for t in done.output] == [[10]]


def test_runtime_loads_with_the_configured_instance_count(tmp_path: Path) -> None:
    path = samples.write_model(tmp_path, "mlp", samples.mlp_model())
    config = mc.ModelConfig(name="mlp")
    config.instance_group.add(count=2, kind=mc.ModelInstanceGroup.KIND_CPU)
    model = OnnxRuntime().load(path, config)
    try:
        assert model.execution_provider == CPU
        outputs, _ = model.run({"x": np.zeros((1, 16), np.float32)}, ["logits"])
        assert outputs["logits"].shape == (1, 8)
    finally:
        model.close()


def test_write_sample_repository_layout(tmp_path: Path) -> None:
    samples.write_sample_repository(tmp_path, identities=True)
    assert (tmp_path / "mlp" / "config.pbtxt").read_text(encoding="utf-8") == samples.MLP_CONFIG
    for name in samples.SAMPLE_MODELS:
        assert (tmp_path / name / "1" / "model.onnx").is_file()
    for datatype in samples.IDENTITY_TYPES:
        assert (tmp_path / f"identity_{datatype.lower()}" / "1" / "model.onnx").is_file()
    assert not (tmp_path / "cnn" / "config.pbtxt").exists()
