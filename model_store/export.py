"""Write store versions as a Triton-layout model repository.

``<dir>/<name>/config.pbtxt`` and ``<dir>/<name>/<version>/model.onnx``, with a config that
names the exported versions explicitly, so the gateway and Triton serve exactly those. The
model's folder is built beside its final place and swapped in with renames, so a server
watching the folder never sees a half-written model.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import ModelNotFoundError
from edgefabric.models.config import CONFIG_FILENAME, DEFAULT_MODEL_FILENAME, complete_config
from edgefabric.models.contract import ModelContract
from model_store.blobs import BlobStore
from model_store.registry import ModelVersion

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "export_versions", "triton_config"]

DEFAULT_MAX_BATCH_SIZE = 64


def triton_config(
    name: str, contract: ModelContract, versions: Sequence[int], *, max_batch_size: int
) -> mc.ModelConfig:
    """A complete Triton ``ModelConfig`` for ``versions`` of a model with ``contract``."""
    config = mc.ModelConfig(name=name)
    config.version_policy.specific.versions.extend(sorted(versions))
    return complete_config(
        config,
        contract.inputs,
        contract.outputs,
        default_max_batch_size=max_batch_size,
        source=name,
    )


def export_versions(
    versions: Sequence[ModelVersion],
    blobs: BlobStore,
    destination: Path,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> Path:
    """Write ``versions`` (all of one model) under ``destination``; returns the model folder."""
    if not versions:
        raise ModelNotFoundError("nothing to export: no version matches")
    name = versions[0].name
    contract = ModelContract.from_json(versions[-1].contract)
    config = triton_config(
        name, contract, [v.version for v in versions], max_batch_size=max_batch_size
    )
    destination.mkdir(parents=True, exist_ok=True)
    final = destination / name
    staging = destination / f".{name}.export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / CONFIG_FILENAME).write_text(text_format.MessageToString(config))
        for version in versions:
            folder = staging / str(version.version)
            folder.mkdir()
            (folder / DEFAULT_MODEL_FILENAME).write_bytes(blobs.read(version.sha256))
        retired = destination / f".{name}.retired"
        shutil.rmtree(retired, ignore_errors=True)
        if final.exists():
            final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
