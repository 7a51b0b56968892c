"""Assemble and run the gateway: repository, runtime, data plane, gRPC server, metrics."""

from __future__ import annotations

import asyncio
import logging
import signal

from edgefabric.dataplane import DataPlane
from edgefabric.kserve.server import KServeServer, ServerOptions, start_server
from edgefabric.metrics import ServingMetrics
from edgefabric.models.repository import ModelRepository
from edgefabric.runtime.base import Runtime
from edgefabric.runtime.onnx import OnnxRuntime, OrtOptions
from gateway.pools.remote import RemoteKServePool
from gateway.router import Router
from gateway.routing import RoutingPolicy, parse_routes
from gateway.settings import GatewaySettings

__all__ = ["Gateway"]

log = logging.getLogger(__name__)


class Gateway:
    """A running gateway. Use :meth:`start`, then :meth:`stop` (or :meth:`run` for a process)."""

    def __init__(self, settings: GatewaySettings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        runtime = runtime or OnnxRuntime(
            OrtOptions(
                providers=settings.execution_providers,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
                inline_max_us=settings.inline_max_us,
            )
        )
        metrics = ServingMetrics()
        self.repository = ModelRepository(
            settings.model_repository,
            runtime,
            default_max_batch_size=settings.default_max_batch_size,
            metrics=metrics,
        )
        self.data = DataPlane(self.repository, metrics=metrics)
        self.router = _build_router(settings, self.data)
        self._server: KServeServer | None = None
        self.metrics_port: int | None = None

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        if self._server is None:
            raise RuntimeError("the gateway is not started; call start() first")
        return self._server.port

    async def start(self) -> None:
        """Load every model, then listen."""
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        await self.repository.load_all()
        if self.router is not None:
            await self.router.start()
        self._server = await start_server(
            self.data,
            ServerOptions(
                address=self.settings.grpc_address,
                port=self.settings.grpc_port,
                max_message_bytes=self.settings.max_message_bytes,
                max_concurrent_rpcs=self.settings.max_concurrent_rpcs or None,
            ),
            self.router,
        )
        if self.settings.metrics_port >= 0:
            self.metrics_port = self.data.metrics.serve_http(
                self.settings.metrics_address, self.settings.metrics_port
            )

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain in-flight requests (health NOT_SERVING first), then release the models."""
        if self._server is None:
            return
        await self._server.stop(self.settings.drain_grace_s if grace_s is None else grace_s)
        self._server = None
        if self.router is not None:
            await self.router.stop()
        self.repository.close()

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("gateway ready on %s:%d", self.settings.grpc_address, self.port)
        print(
            f"edgefabric gateway listening on {self.settings.grpc_address}:{self.port}", flush=True
        )
        await stop.wait()
        log.info("signal received: draining")
        await self.stop()


def _build_router(settings: GatewaySettings, data: DataPlane) -> Router | None:
    """A router when pools or routes are configured; ``None`` keeps the plain local path."""
    if not settings.pools and not settings.routes:
        return None
    pools = {}
    for item in settings.pools:
        name, _, target = item.partition("=")
        pools[name] = RemoteKServePool(
            name, target.removeprefix("grpc://"), max_message_bytes=settings.max_message_bytes
        )
    routes = parse_routes(settings.routes)
    return Router(data, pools, routes, RoutingPolicy())
