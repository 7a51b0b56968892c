"""Runtimes turn a model file into something that runs inference; one I/O seam per backend."""

from edgefabric.runtime.base import LoadedModel, Runtime, RunTimings

__all__ = ["LoadedModel", "RunTimings", "Runtime"]
