"""The gateway's router: sends each request to the pool that can meet its deadline.

Pools are the gateway's own ONNX Runtime sessions (``local``) and remote KServe v2 servers
(:class:`RemoteKServePool`). For every request the sans-I/O :class:`RoutingPolicy` picks a
primary and a failover order from live pool snapshots; the router sends, fails over on
retryable failures (the backend unreachable or not ready) while deadline remains, reports
every outcome back to the policy (passive ejection), and copies the request to a shadow pool
when the route asks for one (its answer is compared, never returned).

It implements :class:`edgefabric.kserve.forwarding.Forwarder`: the servicer asks it about
every model first; models served only locally and with no route stay on the local path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from edgefabric.dataplane import DataPlane
from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    ModelNotFoundError,
    ModelNotReadyError,
    TransportError,
)
from edgefabric.kserve import converters
from gateway.pools.remote import RemoteKServePool
from gateway.routing import PoolSnapshot, Route, RoutingPolicy, split_target

__all__ = ["LOCAL_POOL", "Router", "ShadowStats"]

log = logging.getLogger(__name__)

LOCAL_POOL = "local"
_EWMA_ALPHA = 0.2
_RETRYABLE = (TransportError, ModelNotReadyError)


@dataclass
class ShadowStats:
    """How often a shadow pool's answer matched the primary's, byte for byte."""

    sent: int = 0
    agreed: int = 0
    failed: int = 0


class Router:
    """Local sessions plus remote pools behind one routing policy."""

    def __init__(
        self,
        data: DataPlane,
        pools: Mapping[str, RemoteKServePool],
        routes: Mapping[str, Route],
        policy: RoutingPolicy,
        *,
        local_capacity: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._data = data
        self._pools = dict(pools)
        self._routes = dict(routes)
        self._policy = policy
        self._local_capacity = local_capacity
        self._clock = clock
        self._local_in_flight = 0
        self._local_ewma_s: float | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.shadow: dict[str, ShadowStats] = {}

    async def start(self) -> None:
        """Connect to every remote pool (a pool that is down is retried by its health loop)."""
        await asyncio.gather(*(pool.start() for pool in self._pools.values()))

    async def stop(self) -> None:
        """Let shadow copies finish, then close the pools."""
        if self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        await asyncio.gather(*(pool.stop() for pool in self._pools.values()))

    # ------------------------------------------------------------------ Forwarder

    def forwards(self, model: str) -> bool:
        """Routed: the model has a route, or only a remote pool serves it."""
        if model in self._routes:
            return True
        if self._data.model_ready(model):
            return False
        return any(model in pool.models() for pool in self._pools.values())

    async def infer(
        self, request: pb.ModelInferRequest, time_remaining_s: float | None, *, stream: bool
    ) -> pb.ModelInferResponse:
        """Send to the chosen pool; fail over on retryable failures while deadline remains."""
        model = request.model_name
        now = self._clock()
        deadline = None if time_remaining_s is None else now + time_remaining_s
        route = self._routes.get(model)
        plan = self._policy.choose(
            model,
            route,
            self._snapshots(),
            deadline_s=deadline,
            now_s=now,
            site=_site(request, route),
            version=request.model_version,
            stream=stream,
        )
        primary: asyncio.Future[pb.ModelInferResponse] | None = None
        if plan.shadow is not None:
            primary = asyncio.get_running_loop().create_future()
            self._copy_to_shadow(plan.shadow, request, deadline, primary)
        try:
            return await self._first_answer(
                model, request, (plan.primary, *plan.fallbacks), deadline, primary
            )
        finally:
            if primary is not None and not primary.done():
                primary.cancel()

    async def _first_answer(
        self,
        model: str,
        request: pb.ModelInferRequest,
        order: tuple[str, ...],
        deadline: float | None,
        primary: asyncio.Future[pb.ModelInferResponse] | None,
    ) -> pb.ModelInferResponse:
        last: EdgefabricError | None = None
        for name in order:
            remaining = None if deadline is None else deadline - self._clock()
            if remaining is not None and remaining <= 0:
                break
            started = self._clock()
            try:
                response = await self._send(name, request, remaining)
            except _RETRYABLE as exc:
                self._policy.record(
                    name, ok=False, latency_s=self._clock() - started, now_s=self._clock(),
                    retryable=True,
                )  # fmt: skip
                log.info("pool %s failed for %s (%s); failing over", name, model, exc)
                last = exc
                continue
            except EdgefabricError:
                self._policy.record(
                    name, ok=False, latency_s=self._clock() - started, now_s=self._clock(),
                    retryable=False,
                )  # fmt: skip
                raise
            self._policy.record(
                name, ok=True, latency_s=self._clock() - started, now_s=self._clock(),
                retryable=False,
            )  # fmt: skip
            if primary is not None:
                primary.set_result(response)
            return response
        if last is not None:
            raise last
        raise DeadlineExceededError(
            f"model {model!r}: the deadline passed before any pool answered"
        )

    async def model_ready(self, name: str, version: str) -> bool:
        """Ready somewhere: locally or on a healthy pool that reports it."""
        if self._data.model_ready(name, version):
            return True
        for pool in self._pools.values():
            if pool.healthy and name in pool.models():
                try:
                    if await pool.model_ready(name, version):
                        return True
                except EdgefabricError:
                    continue
        return False

    async def metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        """Metadata from where the model lives (local first)."""
        if self._data.model_ready(name):
            served, chosen = self._data.resolve(name, version)
            versions = [chosen.version] if version else list(served.versions)
            return converters.metadata_to_proto(served.signature, versions, served.config.platform)
        return await self._remote(name).metadata(name, version)

    async def config(self, name: str, version: str) -> mc.ModelConfig:
        """Config from where the model lives (local first)."""
        if self._data.model_ready(name):
            return self._data.model_config(name, version)
        return await self._remote(name).config(name, version)

    def index(self) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """Remote models, each once, as READY entries."""
        seen: dict[str, pb.RepositoryIndexResponse.ModelIndex] = {}
        for pool in self._pools.values():
            if not pool.healthy:
                continue
            for name, model in sorted(pool.models().items()):
                for version in model.versions or ("",):
                    key = f"{name}:{version}"
                    seen.setdefault(
                        key,
                        pb.RepositoryIndexResponse.ModelIndex(
                            name=name, version=version, state="READY"
                        ),
                    )
        return list(seen.values())

    # ------------------------------------------------------------------ internals

    def _local_models(self) -> set[str]:
        return {entry.name for entry in self._data.repository_index(ready_only=True)}

    def _remote(self, name: str) -> RemoteKServePool:
        for pool in self._pools.values():
            if name in pool.models():
                return pool
        raise ModelNotFoundError(f"no pool serves a model named {name!r}")

    def _snapshots(self) -> list[PoolSnapshot]:
        snapshots = [
            PoolSnapshot(
                name=LOCAL_POOL,
                kind="local",
                healthy=self._data.ready(),
                serves=frozenset(self._local_models()),
                latency_ewma_s=self._local_ewma_s,
                in_flight=self._local_in_flight,
                capacity=self._local_capacity,
            )
        ]
        for name, pool in self._pools.items():
            stats = pool.stats()
            snapshots.append(
                PoolSnapshot(
                    name=name,
                    kind="remote",
                    healthy=pool.healthy,
                    serves=frozenset(pool.models()),
                    latency_ewma_s=stats.latency_ewma_s,
                    in_flight=stats.in_flight,
                    capacity=max(len(stats.per_channel), 1) * 8,
                )
            )
        return snapshots

    async def _send(
        self, target: str, request: pb.ModelInferRequest, remaining_s: float | None
    ) -> pb.ModelInferResponse:
        name, version = split_target(target)
        if version and not request.model_version:
            pinned = pb.ModelInferRequest()
            pinned.CopyFrom(request)
            pinned.model_version = version
            request = pinned
        if name != LOCAL_POOL:
            pool = self._pools.get(name)
            if pool is None:
                raise ModelNotReadyError(f"pool {name!r} is not configured")
            return await pool.infer(request, timeout_s=remaining_s)
        self._local_in_flight += 1
        started = time.perf_counter()
        try:
            decoded = converters.request_from_proto(
                request, now_s=time.monotonic(), time_remaining_s=remaining_s
            )
            response = converters.response_to_proto(await self._data.infer(decoded))
        finally:
            self._local_in_flight -= 1
        elapsed = time.perf_counter() - started
        previous = self._local_ewma_s
        self._local_ewma_s = (
            elapsed if previous is None else previous + _EWMA_ALPHA * (elapsed - previous)
        )
        return response

    def _copy_to_shadow(
        self,
        name: str,
        request: pb.ModelInferRequest,
        deadline: float | None,
        primary: asyncio.Future[pb.ModelInferResponse],
    ) -> None:
        copy = pb.ModelInferRequest()
        copy.CopyFrom(request)
        stats = self.shadow.setdefault(name, ShadowStats())

        async def shadow() -> None:
            remaining = None if deadline is None else max(deadline - self._clock(), 0.001)
            stats.sent += 1
            try:
                answer = await self._send(name, copy, remaining)
                expected = await asyncio.wait_for(primary, timeout=remaining or 30.0)
            except (EdgefabricError, TimeoutError, asyncio.CancelledError):
                stats.failed += 1
                return
            if list(answer.raw_output_contents) == list(expected.raw_output_contents):
                stats.agreed += 1

        task = asyncio.create_task(shadow())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)


def _site(request: pb.ModelInferRequest, route: Route | None) -> str:
    """The request's site, from the parameter the route's affinity label names."""
    if route is None or not route.affinity_label:
        return ""
    param = request.parameters.get(route.affinity_label)
    return param.string_param if param is not None else ""
