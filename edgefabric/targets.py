"""Where a model version lives in the store's TUF repository (shared by store and agent)."""

from __future__ import annotations

__all__ = ["golden_target_path", "model_target_path"]


def model_target_path(name: str, version: int) -> str:
    """The TUF target path of a model version's ONNX file."""
    return f"models/{name}/{version}/model.onnx"


def golden_target_path(name: str, version: int) -> str:
    """The TUF target path of a model version's golden vectors."""
    return f"models/{name}/{version}/golden.npz"
