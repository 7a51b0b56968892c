"""A Triton Python-backend model that serves one ONNX file with ONNX Runtime.

Runs inside Triton's Python backend stub, with ``bench/.peers/triton-venv`` on its path;
never imported by the project's venv. ``launch.py`` copies it to ``<repo>/<model>/1/model.py``
and names the ONNX file in the model config's ``parameters``.

Triton's dynamic batcher hands ``execute`` several requests at once; they are stacked along the
batch dimension, run as one batch, and split back, as Triton's own ONNX backend does.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        options = ort.SessionOptions()
        threads = parameters.get("intra_op_num_threads", {}).get("string_value", "0")
        options.intra_op_num_threads = int(threads)
        path = parameters["onnx_path"]["string_value"]
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [item.name for item in self._session.get_inputs()]
        self._outputs = [item.name for item in self._session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in self._inputs
        }
        rows = [len(array) for array in arrays[self._inputs[0]]]
        feeds = {name: np.concatenate(parts) for name, parts in arrays.items()}
        results = dict(zip(self._outputs, self._session.run(self._outputs, feeds), strict=True))
        responses = []
        start = 0
        for request, count in zip(requests, rows, strict=True):
            wanted = request.requested_output_names() or self._outputs
            tensors = [pb_utils.Tensor(n, results[n][start : start + count]) for n in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses
