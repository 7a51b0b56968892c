"""Small ONNX models built with ``onnx.helper``, for the demo, tests and benchmarks.

Nothing is downloaded: every model is generated with fixed seeds, so the bytes are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "CONVNET_LAYERS",
    "IDENTITY_TYPES",
    "SAMPLE_MODELS",
    "cnn_model",
    "convnet_model",
    "identity_model",
    "mlp_model",
    "noisy_mlp_model",
    "stats_model",
    "text_model",
    "unknown_operator_model",
    "write_model",
    "write_sample_repository",
]

OPSET = 17
IR_VERSION = 9

# KServe datatype -> ONNX element type, for the per-datatype identity models.
IDENTITY_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "BF16": TensorProto.BFLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefabric"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _weight(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    scale = 1.0 / np.sqrt(shape[0] if len(shape) == 2 else np.prod(shape[1:]))
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def mlp_model(features: int = 16, hidden: int = 32, classes: int = 8) -> onnx.ModelProto:
    """``x`` FP32 [batch, features] -> ``logits`` FP32 [batch, classes]; a protocol-bound model."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            _weight(rng, "w1", features, hidden),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
            _weight(rng, "w2", hidden, classes),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b2"),
        ],
    )
    return _model(graph)


def noisy_mlp_model(features: int = 16, classes: int = 8) -> onnx.ModelProto:
    """Same contract as :func:`mlp_model`, but adds unseeded noise: every session answers
    differently, so its golden vectors fail on any other machine (a self-test failure)."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["clean"]),
        helper.make_node("RandomNormalLike", ["clean"], ["noise"]),
        helper.make_node("Add", ["clean", "noise"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "noisy_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            _weight(rng, "w", features, classes),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    return _model(graph)


def unknown_operator_model() -> onnx.ModelProto:
    """A valid ONNX file that ONNX Runtime cannot load: its operator is from an unknown domain."""
    node = helper.make_node("NoSuchOperator", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "unknown_operator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = IR_VERSION
    return model


def cnn_model(size: int = 32, classes: int = 10) -> onnx.ModelProto:
    """``image`` FP32 [batch, 3, size, size] -> ``scores`` FP32 [batch, classes]; compute-bound."""
    rng = np.random.default_rng(11)
    nodes = [
        helper.make_node("Conv", ["image", "c1"], ["f1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2"], ["f2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["f2"], ["r2"]),
        helper.make_node("Conv", ["r2", "c3"], ["f3"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["f3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            _weight(rng, "c1", 16, 3, 3, 3),
            _weight(rng, "c2", 32, 16, 3, 3),
            _weight(rng, "c3", 64, 32, 3, 3),
            _weight(rng, "fc", 64, classes),
            numpy_helper.from_array(np.zeros(classes, np.float32), "fc_bias"),
        ],
    )
    return _model(graph)


# (output channels, stride) of each 3x3 convolution of convnet_model.
CONVNET_LAYERS: tuple[tuple[int, int], ...] = ((32, 1), (64, 1), (64, 2), (128, 1), (128, 2))


def convnet_model(size: int = 128, classes: int = 10) -> onnx.ModelProto:
    """``image`` FP32 [batch, 3, size, size] -> ``scores`` FP32 [batch, classes]; really
    compute-bound: five 3x3 convolutions (32 to 128 channels, ~0.9 GMAC per 128x128 image),
    global average pool, dense. Unlike :func:`cnn_model` (3x32x32, tens of µs), one image
    takes milliseconds of ONNX Runtime CPU time, so serving overhead is small beside it."""
    rng = np.random.default_rng(13)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    previous, channels = "image", 3
    for index, (out, stride) in enumerate(CONVNET_LAYERS):
        nodes += [
            helper.make_node(
                "Conv",
                [previous, f"conv{index}", f"conv{index}_bias"],
                [f"f{index}"],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            ),
            helper.make_node("Relu", [f"f{index}"], [f"r{index}"]),
        ]
        weights += [
            _weight(rng, f"conv{index}", out, channels, 3, 3),
            numpy_helper.from_array(np.zeros(out, np.float32), f"conv{index}_bias"),
        ]
        previous, channels = f"r{index}", out
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["scores"]),
    ]
    weights += [
        _weight(rng, "fc", channels, classes),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        initializer=weights,
    )
    return _model(graph)


def text_model() -> onnx.ModelProto:
    """``text`` BYTES [batch] -> ``upper`` (upper-cased) and ``same`` (unchanged), both BYTES."""
    nodes = [
        helper.make_node(
            "StringNormalizer", ["text"], ["upper"], case_change_action="UPPER", locale="C"
        ),
        helper.make_node("Identity", ["text"], ["same"]),
    ]
    graph = helper.make_graph(
        nodes,
        "text",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [
            helper.make_tensor_value_info("upper", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"]),
        ],
    )
    return _model(graph)


def stats_model(features: int = 8) -> onnx.ModelProto:
    """``x`` FP32 [batch, features] -> ``total``, ``peak`` FP32 [batch, 1] and ``argmax`` INT64."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
        helper.make_node("ReduceMax", ["x"], ["peak"], axes=[1], keepdims=1),
        helper.make_node("ArgMax", ["x"], ["argmax"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "stats",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("peak", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("argmax", TensorProto.INT64, ["batch", 1]),
        ],
        initializer=[axes],
    )
    return _model(graph)


def identity_model(datatype: str) -> onnx.ModelProto:
    """``input`` -> ``output`` of one KServe datatype, shape [batch, n]."""
    element = IDENTITY_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("input", element, ["batch", "n"])],
        [helper.make_tensor_value_info("output", element, ["batch", "n"])],
    )
    return _model(graph)


MLP_CONFIG = """\
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 8 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
version_policy { latest { num_versions: 1 } }
"""

SAMPLE_MODELS: dict[str, tuple[Callable[[], onnx.ModelProto], str | None]] = {
    "mlp": (mlp_model, MLP_CONFIG),
    "cnn": (cnn_model, None),
    "text": (text_model, None),
    "stats": (stats_model, None),
}


def write_model(
    root: Path, name: str, model: onnx.ModelProto, *, version: int = 1, config: str | None = None
) -> Path:
    """Write ``<root>/<name>/<version>/model.onnx`` (and ``config.pbtxt`` when given)."""
    version_dir = root / name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    path.write_bytes(model.SerializeToString())
    if config is not None:
        (root / name / "config.pbtxt").write_text(config, encoding="utf-8")
    return path


def write_sample_repository(root: Path, *, identities: bool = False) -> Path:
    """A Triton-layout repository with the sample models (and per-datatype identities)."""
    for name, (build, config) in SAMPLE_MODELS.items():
        write_model(root, name, build(), config=config)
    if identities:
        for datatype in IDENTITY_TYPES:
            write_model(root, f"identity_{datatype.lower()}", identity_model(datatype))
    return root
