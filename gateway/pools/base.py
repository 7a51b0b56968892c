"""What the router needs from a pool, whatever reaches it (gRPC, MQTT relay)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from gateway.pools.traffic import PoolStats

__all__ = ["Pool", "ServedModel"]


class ServedModel(Protocol):
    """A model a pool serves: its name and the versions it reported ready."""

    @property
    def name(self) -> str: ...

    @property
    def versions(self) -> tuple[str, ...]: ...


class Pool(Protocol):
    """A place requests can be sent: :class:`~gateway.pools.remote.RemoteKServePool` (gRPC)
    and :class:`~gateway.pools.edge.EdgePool` (agents over MQTT) both are."""

    async def start(self) -> None:
        """Connect; a backend that is down is retried in the background."""

    async def stop(self) -> None:
        """Disconnect and stop background work."""

    @property
    def healthy(self) -> bool:
        """Whether requests may be sent now."""

    def models(self) -> Mapping[str, ServedModel]:
        """Models served, by name."""

    def stats(self) -> PoolStats:
        """Latency and load, for the routing policy."""

    async def infer(
        self, request: pb.ModelInferRequest, *, timeout_s: float | None
    ) -> pb.ModelInferResponse:
        """Send one request; failures come back as the project's errors."""

    async def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the pool says the model (version) is ready."""

    async def metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        """The model's metadata as the pool describes it."""

    async def config(self, name: str, version: str = "") -> mc.ModelConfig:
        """The model's configuration as the pool describes it."""
