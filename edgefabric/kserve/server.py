"""A gRPC server for the KServe v2 service, with health checking, reflection and graceful stop."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from edgefabric.dataplane import DataPlane
from edgefabric.kserve.admission import AdmissionConfig
from edgefabric.kserve.forwarding import Forwarder
from edgefabric.kserve.limits import DEFAULT_LIMITS, RequestLimits
from edgefabric.kserve.servicer import InferenceServicer
from edgefabric.security.access import AccessControl
from edgefabric.security.tls import ServerTls, check_exposure

__all__ = ["INFERENCE_SERVICE", "KServeServer", "ServerOptions", "start_server"]

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where and how to listen. ``port`` 0 picks a free port; read it from the server.

    ``max_concurrent_rpcs``: past this many RPCs in progress, gRPC itself answers
    RESOURCE_EXHAUSTED before any Python runs, so overload is shed in microseconds instead of
    queueing in the event loop until deadlines pass (``None``: no limit).

    ``tls``: serve TLS (mutual TLS when it names a client CA); without it the server speaks
    plaintext, which :func:`start_server` refuses on a non-loopback address unless ``insecure``.
    ``access``: authentication, per-tenant limits and the audit trail (``None``: nothing is
    checked). ``max_deadline_s``: the longest a request may wait; a longer client deadline, or
    none, is cut to it (``None``: the client's deadline as given).
    ``admission``: early admission control of ModelInfer (see :mod:`edgefabric.kserve.admission`):
    a request whose deadline is shorter than the wait the requests in flight predict is refused
    at once with DEADLINE_EXCEEDED, before it is decoded.
    """

    address: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int | None = None
    limits: RequestLimits = DEFAULT_LIMITS
    tls: ServerTls | None = None
    insecure: bool = False
    access: AccessControl | None = None
    max_deadline_s: float | None = None
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)


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
    data: DataPlane,
    options: ServerOptions,
    forwarder: Forwarder | None = None,
    handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> KServeServer:
    """Start serving ``data`` (and what ``forwarder`` routes, and the services of
    ``handlers``, e.g. the gateway's admin service); returns the server and the port it
    really bound."""
    check_exposure(options.address, tls=options.tls is not None, insecure=options.insecure)
    server = grpc.aio.server(
        interceptors=[options.access.interceptor()] if options.access is not None else None,
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # Slow-loris and half-open streams (tests/integration/test_slowloris.py): one
            # connection holds at most this many streams, so it cannot take every RPC slot;
            # peers that stop answering pings lose their connection and its streams; a
            # connection that has not finished its handshake in 10 s is closed.
            ("grpc.max_concurrent_streams", 128),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.server_handshake_timeout_ms", 10_000),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(
            data,
            forwarder,
            limits=options.limits,
            max_deadline_s=options.max_deadline_s,
            admission=options.admission,
        ),
        server,
    )
    if handlers:
        server.add_generic_rpc_handlers(tuple(handlers))
    address = f"{options.address}:{options.port}"
    if options.tls is not None:
        port = server.add_secure_port(address, options.tls.credentials())
    else:
        port = server.add_insecure_port(address)
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
    log.info(
        "KServe v2 gRPC listening on %s:%d (%s)",
        options.address,
        port,
        "plaintext" if options.tls is None else ("mutual TLS" if options.tls.mutual else "TLS"),
    )
    return running
