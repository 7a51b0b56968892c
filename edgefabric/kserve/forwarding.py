"""The seam through which the servicer hands requests for other servers' models onward.

The gateway's router implements :class:`Forwarder`; the servicer asks it first, for every RPC
that names a model, and serves locally whatever it does not forward. The edge agent has no
forwarder.
"""

from __future__ import annotations

from typing import Protocol

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

__all__ = ["Forwarder"]


class Forwarder(Protocol):
    """Routes requests for models that live (also) elsewhere."""

    def forwards(self, model: str) -> bool:
        """Whether requests for ``model`` go through the forwarder."""

    async def infer(
        self, request: pb.ModelInferRequest, time_remaining_s: float | None, *, stream: bool
    ) -> pb.ModelInferResponse:
        """Answer ``request`` from the pool the routing policy picks."""

    async def model_ready(self, name: str, version: str) -> bool:
        """Whether some pool can serve ``name`` (``version``) now."""

    async def metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        """The model's metadata, as the serving pool reports it."""

    async def config(self, name: str, version: str) -> mc.ModelConfig:
        """The model's config, as the serving pool reports it."""

    def index(self) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """Index entries of the forwarded models."""
