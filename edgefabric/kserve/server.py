"""A gRPC server for the KServe v2 service, with health checking, reflection and graceful stop."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from edgefabric.dataplane import DataPlane
from edgefabric.kserve.forwarding import Forwarder
from edgefabric.kserve.servicer import InferenceServicer

__all__ = ["INFERENCE_SERVICE", "KServeServer", "ServerOptions", "start_server"]

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where and how to listen. ``port`` 0 picks a free port; read it from the server.

    ``max_concurrent_rpcs``: past this many RPCs in progress, gRPC itself answers
    RESOURCE_EXHAUSTED before any Python runs, so overload is shed in microseconds instead of
    queueing in the event loop until deadlines pass (``None``: no limit).
    """

    address: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int | None = None


class KServeServer:
    """A started server and its bound port."""

    def __init__(self, server: grpc.aio.Server, port: int, data: DataPlane) -> None:
        self.server = server
        self.port = port
        self._data = data
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # set at import

    async def mark(self, status: int) -> None:
        """Set the health status of the whole server and of the inference service."""
        for service in ("", INFERENCE_SERVICE):
            await self.health.set(service, status)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Report NOT_SERVING, refuse new RPCs, let in-flight ones finish for ``grace_s``."""
        self._data.set_ready(False)
        await self.mark(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        log.info("server on port %d stopped", self.port)

    async def wait(self) -> None:
        """Wait until the server terminates."""
        await self.server.wait_for_termination()


async def start_server(
    data: DataPlane, options: ServerOptions, forwarder: Forwarder | None = None
) -> KServeServer:
    """Start serving ``data`` (and what ``forwarder`` routes); returns the server and the
    port it really bound."""
    server = grpc.aio.server(
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(data, forwarder), server
    )
    port = server.add_insecure_port(f"{options.address}:{options.port}")
    if port == 0:
        raise OSError(f"could not bind {options.address}:{options.port}")
    running = KServeServer(server, port, data)
    health_pb2_grpc.add_HealthServicer_to_server(running.health, server)
    reflection.enable_server_reflection(
        (INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    await server.start()
    data.set_ready(True)
    await running.mark(health_pb2.HealthCheckResponse.SERVING)
    log.info("KServe v2 gRPC listening on %s:%d", options.address, port)
    return running
