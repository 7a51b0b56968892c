"""A minimal MLServer runtime that serves one ONNX file with ONNX Runtime.

Runs inside ``bench/.peers/mlserver-venv`` (loaded by MLServer through the
``implementation`` field of ``model-settings.json``), never in the project's venv.
"""

from __future__ import annotations

import onnxruntime as ort

# mlserver is installed in the peer venv only: the project's type check does not see it.
from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]
from mlserver.utils import get_model_uri  # type: ignore[import-not-found]


class OnnxModel(MLModel):  # type: ignore[misc]
    """Decode every input as a numpy array, run the session, encode every output."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        extra = self.settings.parameters.extra if self.settings.parameters else None
        options.intra_op_num_threads = int((extra or {}).get("intra_op_num_threads", 0))
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(n, r) for n, r in zip(self._outputs, results, strict=True)
            ],
        )
