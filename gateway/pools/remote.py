"""A remote KServe v2 server (Triton, MLServer, another edgefabric gateway) as a pool.

:class:`RemoteKServePool` keeps several HTTP/2 connections to one backend and sends requests
round-robin over them, so load is not pinned to one connection. Inference requests are forwarded
as the message they arrived in: tensor bytes are never decoded. A health loop asks
``ServerReady`` on every connection and rediscovers the backend's models when its repository
index changes. :meth:`RemoteKServePool._rpc` is the one seam where gRPC's failures become the
project's errors (:mod:`edgefabric.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    RequestCancelledError,
    TransportError,
    UnsupportedError,
)
from edgefabric.telemetry import tracing
from gateway.pools.traffic import PoolState, PoolStats, PoolTraffic

__all__ = ["PoolState", "PoolStats", "RemoteKServePool", "RemoteModel"]

log = logging.getLogger(__name__)

_RETRY_AFTER_KEY = "retry-after-ms"

# Codes whose backend message is safe to show the client as it is. UNAVAILABLE lands here only
# while the connection is up (the backend itself says the model cannot serve now); without a
# connection it is a TransportError.
_KEEP_MESSAGE: dict[grpc.StatusCode, type[EdgefabricError]] = {
    grpc.StatusCode.UNAVAILABLE: ModelNotReadyError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,
}


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """A model the backend reported ready, as it describes itself."""

    name: str
    versions: tuple[str, ...]
    metadata: pb.ModelMetadataResponse
    config: mc.ModelConfig | None
    """``None`` when the backend offers no ``ModelConfig`` (or refused it)."""


def _parse_target(target: str) -> str:
    address = target.removeprefix("grpc://")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in address:
        raise ValueError(f"pool target {target!r}: expected HOST:PORT or grpc://HOST:PORT")
    return address


def _retry_after_ms(exc: grpc.aio.AioRpcError) -> int:
    # grpc.aio's Metadata iterates as (key, value) pairs; the stubs type it as sync metadata.
    pairs = cast(Iterable[tuple[str, str | bytes]], exc.trailing_metadata() or ())
    for key, value in pairs:
        if key == _RETRY_AFTER_KEY:
            with contextlib.suppress(TypeError, ValueError):
                return max(0, int(value))
    return 0


def project_error(pool: str, exc: grpc.aio.AioRpcError, *, connected: bool) -> EdgefabricError:
    """The project's error for a failed call to pool ``pool``.

    ``connected``: whether the connection was still up after the failure, which tells a
    backend's own UNAVAILABLE answer from a lost or refused connection.
    """
    code = exc.code()
    details = exc.details() or code.name
    if code is grpc.StatusCode.UNAVAILABLE and not connected:
        return TransportError(
            f"pool '{pool}': backend unreachable or connection lost ({details}); "
            "another pool may serve the request"
        )
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OverloadedError(details, _retry_after_ms(exc))
    if (error_type := _KEEP_MESSAGE.get(code)) is not None:
        return error_type(details)
    correlation_id = uuid.uuid4().hex[:12]
    log.error(
        "pool '%s': backend answered %s: %s (correlation id %s)",
        pool, code.name, details, correlation_id,
    )  # fmt: skip
    return InternalError(f"pool '{pool}': the backend failed; correlation id {correlation_id}")


class _Connection:
    """One channel (its own HTTP/2 connection), its stub and how many requests it carried."""

    def __init__(self, target: str, options: list[tuple[str, Any]]) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.stub: Any = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.requests = 0

    @property
    def connected(self) -> bool:
        return self.channel.get_state() is grpc.ChannelConnectivity.READY


class RemoteKServePool:
    """Speaks KServe v2 gRPC to one backend over ``channels`` HTTP/2 connections (grpc.aio),
    round-robin, so load is not pinned to one connection.

    A backend that is down at :meth:`start` is not fatal: the pool starts unhealthy and the
    health loop admits it once it answers. A lost connection during a request marks the pool
    unhealthy until the next successful health check (passive outlier ejection).
    """

    def __init__(
        self,
        name: str,
        target: str,
        *,
        channels: int = 2,
        max_message_bytes: int = 64 * 1024 * 1024,
        health_interval_s: float = 2.0,
    ) -> None:
        if channels < 1:
            raise ValueError(f"pool '{name}': channels must be at least 1, got {channels}")
        if health_interval_s <= 0:
            raise ValueError(
                f"pool '{name}': health_interval_s must be > 0, got {health_interval_s}"
            )
        self.name = name
        self.target = _parse_target(target)
        self._channel_count = channels
        self._health_interval_s = health_interval_s
        self._probe_timeout_s = max(health_interval_s, 1.0)
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # A private subchannel pool per channel: otherwise channels to one target share a
            # single connection.
            ("grpc.use_local_subchannel_pool", 1),
            # Reconnect soon after a backend returns, within about one health interval.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._state = PoolState.NEW
        self._connections: list[_Connection] = []
        self._next = 0
        self._healthy = False
        self._models: dict[str, RemoteModel] = {}
        self._index_key: tuple[tuple[str, str, str], ...] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._traffic = PoolTraffic(name)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """Where the pool is in its lifecycle."""
        return self._state

    async def start(self) -> None:
        """Open the connections, check health and discover models, then keep checking."""
        if self._state is not PoolState.NEW:
            raise RuntimeError(f"pool '{self.name}' is {self._state.value}; start() runs once")
        self._connections = [
            _Connection(self.target, self._options) for _ in range(self._channel_count)
        ]
        self._state = PoolState.RUNNING
        await self._guarded_check()
        self._health_task = asyncio.create_task(
            self._health_loop(), name=f"pool {self.name} health"
        )

    async def stop(self) -> None:
        """Stop checking and close the connections; requests still running are cancelled."""
        if self._state is not PoolState.RUNNING:
            self._state = PoolState.STOPPED
            return
        self._state = PoolState.STOPPED
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await asyncio.gather(*(c.channel.close(None) for c in self._connections))
        self._update(healthy=False, reason="stopped")

    # -- views ---------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Whether the last health check passed and no connection was lost since."""
        return self._healthy

    def models(self) -> dict[str, RemoteModel]:
        """The models the backend last reported ready (kept while it is unhealthy)."""
        return dict(self._models)

    def stats(self) -> PoolStats:
        """A snapshot of the inference traffic so far."""
        return self._traffic.snapshot(self._in_flight, tuple(c.requests for c in self._connections))

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on the pool's loop) whenever health or the model set changes;
        returns a function that removes it again."""
        return self._traffic.add_listener(callback)

    # -- requests ------------------------------------------------------------------------------

    async def infer(
        self, request: pb.ModelInferRequest, *, timeout_s: float | None
    ) -> pb.ModelInferResponse:
        """Forward ``request`` as it is, with ``timeout_s`` (the caller's remaining deadline)."""
        connection = self._pick()
        connection.requests += 1
        self._traffic.sent()
        self._in_flight += 1
        started = time.perf_counter()
        try:
            response = await self._rpc("ModelInfer", request, timeout_s, connection)
        except EdgefabricError as exc:
            self._traffic.failed(exc)
            if isinstance(exc, TransportError):
                self._update(healthy=False, reason=str(exc))
            raise
        finally:
            self._in_flight -= 1
        self._traffic.succeeded(time.perf_counter() - started)
        return response

    async def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the backend says ``name`` (``version``) is ready."""
        request = pb.ModelReadyRequest(name=name, version=version)
        response = await self._rpc("ModelReady", request, self._probe_timeout_s)
        return bool(response.ready)

    async def metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        """The backend's metadata for ``name`` (``version``), asked now."""
        request = pb.ModelMetadataRequest(name=name, version=version)
        return await self._rpc("ModelMetadata", request, self._probe_timeout_s)

    async def config(self, name: str, version: str = "") -> mc.ModelConfig:
        """The backend's config for ``name`` (``version``), asked now."""
        request = pb.ModelConfigRequest(name=name, version=version)
        response = await self._rpc("ModelConfig", request, self._probe_timeout_s)
        return response.config

    async def ready_versions(self, name: str) -> tuple[str, ...]:
        """The versions of ``name`` the backend's repository index lists as ready, asked now."""
        index = await self._rpc(
            "RepositoryIndex", pb.RepositoryIndexRequest(ready=True), self._probe_timeout_s
        )
        found = {m.version for m in index.models if m.name == name and m.state.upper() == "READY"}
        return tuple(sorted(found - {""}, key=lambda v: (len(v), v)))

    async def load_model(self, name: str, config_json: str = "", timeout_s: float = 120.0) -> None:
        """``RepositoryModelLoad``: (re)load ``name`` on the backend, with ``config_json``
        overriding its configuration when given; returns once the backend has loaded it."""
        request = pb.RepositoryModelLoadRequest(model_name=name)
        if config_json:
            request.parameters["config"].string_param = config_json
        await self._rpc("RepositoryModelLoad", request, timeout_s)
        await self._guarded_check()  # rediscover the model's versions now

    def _pick(self) -> _Connection:
        if self._state is not PoolState.RUNNING:
            if self._state is PoolState.NEW:
                raise RuntimeError(f"pool '{self.name}' is not started; call start() first")
            raise TransportError(f"pool '{self.name}' is stopped")
        connection = self._connections[self._next]
        self._next = (self._next + 1) % len(self._connections)
        return connection

    async def _rpc(
        self,
        method: str,
        request: Any,
        timeout_s: float | None,
        connection: _Connection | None = None,
    ) -> Any:
        """Call ``method`` on the backend; every gRPC failure leaves as a project error."""
        chosen = connection or self._pick()
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExceededError(f"pool '{self.name}': no time left to send the request")
        try:
            return await getattr(chosen.stub, method)(
                request, timeout=timeout_s, metadata=tracing.grpc_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise project_error(self.name, exc, connected=chosen.connected) from exc
        except grpc.aio.UsageError as exc:  # the channel was closed under the call
            raise TransportError(f"pool '{self.name}' is stopped") from exc

    # -- health --------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self._guarded_check()

    async def _guarded_check(self) -> None:
        try:
            await self._check()
        except Exception:  # keep checking whatever one check met
            log.exception("pool '%s': health check failed unexpectedly", self.name)
            self._update(healthy=False, reason="health check failed")

    async def _check(self) -> None:
        """Every connection answers ServerReady; rediscover models when the index changed."""
        ready_request = pb.ServerReadyRequest()
        probes = await asyncio.gather(
            *(
                self._rpc("ServerReady", ready_request, self._probe_timeout_s, connection)
                for connection in self._connections
            ),
            return_exceptions=True,
        )
        answers = [p for p in probes if not isinstance(p, BaseException)]
        if len(answers) < len(probes):
            failure = next(p for p in probes if isinstance(p, BaseException))
            if not isinstance(failure, EdgefabricError):
                raise failure
            self._update(healthy=False, reason=str(failure))
            return
        if not all(answer.ready for answer in answers):
            self._update(healthy=False, reason="the backend reports it is not ready")
            return
        try:
            index = await self._rpc(
                "RepositoryIndex", pb.RepositoryIndexRequest(), self._probe_timeout_s
            )
            key = tuple(sorted((m.name, m.version, m.state) for m in index.models))
            models_changed = key != self._index_key or not self._healthy
            if models_changed:
                self._models = await self._discover(index)
                self._index_key = key
        except TransportError as exc:
            self._update(healthy=False, reason=str(exc))
            return
        self._update(healthy=True, reason="", models_changed=models_changed)

    async def _discover(self, index: pb.RepositoryIndexResponse) -> dict[str, RemoteModel]:
        versions: dict[str, set[str]] = {}
        for entry in index.models:
            if entry.state.upper() == "READY":
                versions.setdefault(entry.name, set()).add(entry.version)
        found = await asyncio.gather(*(self._describe(n, v) for n, v in versions.items()))
        return {model.name: model for model in found if model is not None}

    async def _describe(self, name: str, index_versions: set[str]) -> RemoteModel | None:
        """Metadata and config of one ready model; ``None`` if it went away meanwhile."""
        try:
            metadata = await self.metadata(name)
        except TransportError:
            raise
        except EdgefabricError as exc:
            log.warning("pool '%s': skipping model '%s': %s", self.name, name, exc)
            return None
        try:
            config: mc.ModelConfig | None = await self.config(name)
        except TransportError:
            raise
        except EdgefabricError as exc:
            log.info("pool '%s': no config for model '%s': %s", self.name, name, exc)
            config = None
        known = {v for v in index_versions if v} or set(metadata.versions)
        versions = tuple(sorted(known, key=lambda v: (len(v), v)))  # numeric order for digits
        return RemoteModel(name, versions, metadata, config)

    def _update(self, *, healthy: bool, reason: str, models_changed: bool = False) -> None:
        health_changed = healthy != self._healthy
        self._healthy = healthy
        if health_changed:
            ejected = self._state is PoolState.RUNNING and not healthy
            log.log(
                logging.WARNING if ejected else logging.INFO,
                "pool '%s' (%s) %s%s",
                self.name, self.target, "admitted" if healthy else "ejected",
                f": {reason}" if reason else "",
            )  # fmt: skip
        if health_changed or models_changed:
            self._traffic.notify()
