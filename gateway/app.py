"""Assemble and run the gateway: repository, runtime, data plane, gRPC server, metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from edgefabric.dataplane import DataPlane
from edgefabric.kserve.admission import AdmissionConfig
from edgefabric.kserve.server import KServeServer, ServerOptions, start_server
from edgefabric.metrics import ServingMetrics
from edgefabric.models.repository import ModelRepository
from edgefabric.runtime.base import Runtime
from edgefabric.runtime.onnx import OnnxRuntime, OrtOptions
from edgefabric.security.access import AccessControl
from edgefabric.security.audit import store_recorder
from edgefabric.security.limits import TenantLimits
from edgefabric.security.tokens import TokenStore, TokenVerifier
from edgefabric.telemetry import tracing
from edgefabric.telemetry.endpoint import MetricsEndpoint
from edgefabric.telemetry.gateway import GatewayMetrics
from gateway.admin import admin_handler
from gateway.pools.base import Pool
from gateway.pools.edge import EdgePool
from gateway.pools.remote import RemoteKServePool
from gateway.reporting import build_reporter
from gateway.route_feed import build_route_feed
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
        self.reporter = build_reporter(settings)  # routing statistics for the dashboard
        local = self.reporter.observe_local if self.reporter is not None else None
        self.data = DataPlane(self.repository, metrics=metrics, observer=local)
        self.router = _build_router(settings, self.data)
        self.access = _access_control(settings)
        self.route_feed = (
            None
            if self.router is None
            else build_route_feed(
                settings,
                self.router,
                parse_routes(settings.routes),
                self.access,
                settings.report_gateway_id(),
            )
        )  # the store's route table (--routes-from-broker)
        self.telemetry = GatewayMetrics(metrics.registry, self._pool_health)
        if self.router is not None:
            self.router.observer = self.telemetry.observe_route
            if self.reporter is not None:
                self.router.observer = self.reporter.route_observer(self.telemetry.observe_route)
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._tracing = False
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
        if self.route_feed is not None:
            await self.route_feed.start()
        self._server = await start_server(
            self.data,
            ServerOptions(
                address=self.settings.grpc_address,
                port=self.settings.grpc_port,
                max_message_bytes=self.settings.max_message_bytes,
                max_concurrent_rpcs=self.settings.max_concurrent_rpcs or None,
                limits=self.settings.request_limits(),
                tls=self.settings.server_tls(),
                insecure=self.settings.insecure,
                access=self.access,
                max_deadline_s=self.settings.max_deadline_s or None,
                admission=AdmissionConfig(
                    max_in_flight=self.settings.admission_max_in_flight,
                    min_in_flight=self.settings.admission_min_in_flight,
                ),
            ),
            self.router,
            (admin_handler(lambda: self.router),),
        )
        if self.settings.metrics_port >= 0:
            settings = self.settings
            self._metrics_endpoint = MetricsEndpoint(
                self.data.metrics.registry, settings.metrics_address, settings.metrics_port
            )
            self.metrics_port = self._metrics_endpoint.port
        endpoint = tracing.endpoint_from(self.settings.otlp_endpoint)
        if endpoint and not tracing.enabled():
            tracing.configure("edgefabric-gateway", endpoint=endpoint)
            self._tracing = True
        if self.reporter is not None:
            await self.reporter.start()

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain in-flight requests (health NOT_SERVING first), then release the models."""
        if self._server is None:
            return
        await self._server.stop(self.settings.drain_grace_s if grace_s is None else grace_s)
        self._server = None
        if self.reporter is not None:  # after the drain: the last report counts it
            await self.reporter.stop()
        if self.route_feed is not None:
            await self.route_feed.stop()
        if self.router is not None:
            await self.router.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
            self._metrics_endpoint = None
        if self._tracing:
            tracing.shutdown()
            self._tracing = False
        self.repository.close()

    def _pool_health(self) -> dict[str, bool]:
        """Whether each pool is up: ``local`` (this process) and every remote one."""
        health = {"local": self.data.ready()}
        if self.router is not None:
            health.update((name, pool.healthy) for name, pool in self.router.pools.items())
        return health

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


def _access_control(settings: GatewaySettings) -> AccessControl:
    """Tokens (``auth required``), tenant limits and the audit trail of admin RPCs."""
    env_home = os.environ.get("EDGEFABRIC_HOME")
    home = settings.home or (Path(env_home) if env_home else None)
    verifier = None
    if settings.auth == "required":
        home = home or Path.home() / ".edgefabric"
        store = TokenStore.in_home(home)
        if not store.path.exists():
            log.warning(
                "auth required but %s holds no tokens yet: every call will be refused until "
                "`edgefabric token create` makes one",
                store.path,
            )
        verifier = TokenVerifier(store)
    return AccessControl(
        verifier,
        default_limits=TenantLimits(
            settings.tenant_rate_per_s, settings.tenant_burst, settings.tenant_max_concurrent
        ),
        audit=store_recorder(home) if home is not None else None,
    )


def _build_router(settings: GatewaySettings, data: DataPlane) -> Router | None:
    """A router when pools or routes are configured; ``None`` keeps the plain local path."""
    if not settings.pools and not settings.routes and not settings.routes_from_broker:
        return None
    pools: dict[str, Pool] = {}
    mqtt_tls = settings.mqtt_tls()
    for item in settings.pools:
        name, _, target = item.partition("=")
        if target.startswith(("mqtt://", "mqtts://")):
            pools[name] = EdgePool(
                name,
                target,
                max_message_bytes=settings.max_message_bytes,
                tls=mqtt_tls if target.startswith("mqtts://") else None,
            )
            continue
        pools[name] = RemoteKServePool(
            name, target.removeprefix("grpc://"), max_message_bytes=settings.max_message_bytes
        )
    routes = parse_routes(settings.routes)
    return Router(data, pools, routes, RoutingPolicy())
