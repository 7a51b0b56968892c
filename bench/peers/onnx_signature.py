"""Print an ONNX file's inputs and outputs as JSON (KServe datatypes, -1 for dynamic dims).

Run with a peer venv's interpreter (it needs onnxruntime):
``bench/.peers/triton-venv/bin/python bench/peers/onnx_signature.py model.onnx``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import onnxruntime as ort

# ONNX Runtime's element type names -> KServe v2 datatypes.
DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def describe(args: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": arg.name,
            "datatype": DATATYPES[arg.type],
            "shape": [dim if isinstance(dim, int) else -1 for dim in arg.shape],
        }
        for arg in args
    ]


def main() -> None:
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    signature = {
        "inputs": describe(session.get_inputs()),
        "outputs": describe(session.get_outputs()),
    }
    print(json.dumps(signature))


if __name__ == "__main__":
    main()
