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
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from edgefabric.dataplane import DataPlane
from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    TransportError,
    UnsupportedError,
    grpc_status_for,
)
from edgefabric.kserve import converters
from edgefabric.telemetry import tracing
from gateway.pools.base import Pool
from gateway.pools.remote import RemoteKServePool
from gateway.pools.traffic import ewma
from gateway.routing import PoolSnapshot, Route, RoutingPlan, RoutingPolicy, split_target

__all__ = ["LOCAL_POOL", "POOL_PARAMETER", "HedgeStats", "Router", "ShadowStats"]

log = logging.getLogger(__name__)

LOCAL_POOL = "local"
POOL_PARAMETER = "edgefabric.pool"
"""Response parameter naming the pool that answered a routed request."""
_RETRYABLE = (TransportError, ModelNotReadyError)


class _NoAnswerError(Exception):
    """No copy of a hedged request answered; ``hedged``: the second copy was sent too."""

    def __init__(self, last: EdgefabricError | None, *, hedged: bool) -> None:
        super().__init__(str(last))
        self.last = last
        self.hedged = hedged


@dataclass
class HedgeStats:
    """Second copies sent because the primary was slow, and how often they answered first."""

    sent: int = 0
    won: int = 0


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
        pools: Mapping[str, Pool],
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
        self.hedges = HedgeStats()
        # Told of every attempt: (model, version asked, pool, status name, seconds). Metrics.
        self.observer: Callable[[str, str, str, str, float], None] | None = None
        self._target_in_flight: Counter[str] = Counter()
        self._answered = asyncio.Event()

    @property
    def pools(self) -> Mapping[str, Pool]:
        """The remote pools, by name."""
        return MappingProxyType(self._pools)

    async def start(self) -> None:
        """Connect to every remote pool (a pool that is down is retried by its health loop)."""
        await asyncio.gather(*(pool.start() for pool in self._pools.values()))

    async def settle_shadows(self) -> None:
        """Wait until every shadow copy sent so far has been compared (or failed)."""
        while self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)

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
            response = await self._first_answer(model, request, plan, deadline)
        except BaseException:
            if primary is not None:
                primary.cancel()
            raise
        if primary is not None:
            primary.set_result(response)
        return response

    async def _first_answer(
        self,
        model: str,
        request: pb.ModelInferRequest,
        plan: RoutingPlan,
        deadline: float | None,
    ) -> pb.ModelInferResponse:
        """The primary's answer, a hedge's if it is first, else a failover's in order."""
        order: tuple[str, ...] = (plan.primary, *plan.fallbacks)
        last: EdgefabricError | None = None
        if plan.hedge_after_s is not None and plan.fallbacks:
            try:
                return await self._hedged(
                    plan.primary, plan.fallbacks[0], plan.hedge_after_s, request, deadline
                )
            except _NoAnswerError as exc:
                last = exc.last
                order = plan.fallbacks[1:] if exc.hedged else plan.fallbacks
        for name in order:
            remaining = None if deadline is None else deadline - self._clock()
            if remaining is not None and remaining <= 0:
                break
            try:
                return await self._attempt(name, request, deadline)
            except _RETRYABLE as exc:
                log.info("pool %s failed for %s (%s); failing over", name, model, exc)
                last = exc
        if last is not None:
            raise last
        raise DeadlineExceededError(
            f"model {model!r}: the deadline passed before any pool answered"
        )

    async def _hedged(
        self,
        first: str,
        second: str,
        after_s: float,
        request: pb.ModelInferRequest,
        deadline: float | None,
    ) -> pb.ModelInferResponse:
        """``first``; when it has not answered after ``after_s``, also ``second``: the first
        success wins and the other is cancelled. Raises :class:`_NoAnswerError` when every copy
        failed retryably; other errors propagate."""
        tasks = {asyncio.create_task(self._attempt(first, request, deadline)): first}
        last: EdgefabricError | None = None
        hedged = False
        try:
            done, _ = await asyncio.wait(tasks, timeout=after_s)
            if not done:
                hedged = True
                self.hedges.sent += 1
                tasks[asyncio.create_task(self._attempt(second, request, deadline))] = second
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = tasks.pop(task)
                    try:
                        response = task.result()
                    except _RETRYABLE as exc:
                        log.info("pool %s failed (%s)", name, exc)
                        last = exc
                        continue
                    if name == second:
                        self.hedges.won += 1
                    return response
        finally:
            for task in tasks:
                task.cancel()  # the loser: its pool stops working on it
        raise _NoAnswerError(last, hedged=hedged)

    async def _attempt(
        self, name: str, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelInferResponse:
        """One send to target ``name``, its outcome recorded for the policy."""
        remaining = None if deadline is None else deadline - self._clock()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError(f"no time left to send to {name!r}")
        started = self._clock()
        self._target_in_flight[name] += 1
        try:
            response = await self._observed(name, request, remaining)
        except _RETRYABLE:
            self._policy.record(
                name, ok=False, latency_s=self._clock() - started, now_s=self._clock(),
                retryable=True,
            )  # fmt: skip
            raise
        except EdgefabricError:
            self._policy.record(
                name, ok=False, latency_s=self._clock() - started, now_s=self._clock(),
                retryable=False,
            )  # fmt: skip
            raise
        finally:
            self._target_in_flight[name] -= 1
            self._answered.set()
        self._policy.record(
            name, ok=True, latency_s=self._clock() - started, now_s=self._clock(),
            retryable=False,
        )  # fmt: skip
        response.parameters[POOL_PARAMETER].string_param = split_target(name)[0]
        return response

    # ------------------------------------------------------------------ version swaps

    def route(self, model: str) -> Route | None:
        """The route ``model``'s requests follow now (``None``: any pool that serves it)."""
        return self._routes.get(model)

    def set_route(self, model: str, route: Route | None) -> None:
        """Route ``model``'s next requests by ``route`` (``None`` removes its route)."""
        if route is None:
            self._routes.pop(model, None)
        else:
            self._routes[model] = route

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """Replace the whole route table in one step: each request is routed by the old table
        or the new one, never a mix (requests already under way keep their plan)."""
        self._routes = dict(routes)

    def in_flight(self, target: str) -> int:
        """Requests sent to ``target`` (``POOL`` or ``POOL@VERSION``) and not answered yet."""
        return self._target_in_flight[target]

    async def wait_idle(self, targets: Sequence[str]) -> None:
        """Wait until no request is in flight on any of ``targets`` (bound it by a timeout)."""
        while any(self._target_in_flight[t] for t in targets):
            self._answered.clear()
            await self._answered.wait()

    async def served_versions(self, pool: str, model: str) -> tuple[str, ...]:
        """The versions of ``model`` that ``pool`` serves now, asked now."""
        if pool == LOCAL_POOL:
            if not self._data.model_ready(model):
                return ()
            served, _ = self._data.resolve(model)
            return tuple(str(v) for v in sorted(served.versions))
        return await self._loadable(pool).ready_versions(model)

    async def load_versions(self, pool: str, model: str, versions: Sequence[str]) -> None:
        """Make ``pool`` serve exactly ``versions`` of ``model`` (a load with a specific
        version policy; versions kept serve on while the others are loaded or unloaded)."""
        numbers = [_version_number(model, v) for v in versions]
        if pool == LOCAL_POOL:
            policy = {"version_policy": {"specific": {"versions": numbers}}}
            await self._data.load_model(model, json.dumps(policy))
            return
        remote = self._loadable(pool)
        config = await remote.config(model)
        config.version_policy.Clear()
        config.version_policy.specific.versions.extend(numbers)
        await remote.load_model(model, json_format.MessageToJson(config))

    async def version_ready(self, pool: str, model: str, version: str) -> bool:
        """Whether ``pool`` says ``model`` version ``version`` is ready."""
        if pool == LOCAL_POOL:
            return self._data.model_ready(model, version)
        return await self._loadable(pool).model_ready(model, version)

    def _loadable(self, pool: str) -> RemoteKServePool:
        found = self._pools.get(pool)
        if found is None:
            known = ", ".join([LOCAL_POOL, *self._pools])
            raise InvalidInputError(f"no pool named {pool!r}; this gateway has {known}")
        if not isinstance(found, RemoteKServePool):
            raise UnsupportedError(
                f"pool {pool!r} cannot load or unload models from the gateway; "
                "only the local pool and KServe v2 gRPC pools can"
            )
        return found

    # ------------------------------------------------------------------ Forwarder (cont.)

    async def _observed(
        self, target: str, request: pb.ModelInferRequest, remaining_s: float | None
    ) -> pb.ModelInferResponse:
        """:meth:`_send` in a trace span, its outcome told to :attr:`observer`."""
        pool = split_target(target)[0]
        started = time.perf_counter()
        code = "OK"
        try:
            with tracing.span("route", attributes={"edgefabric.pool": pool}):
                return await self._send(target, request, remaining_s)
        except EdgefabricError as exc:
            code = grpc_status_for(exc).name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            if self.observer is not None:
                self.observer(
                    request.model_name,
                    request.model_version,
                    pool,
                    code,
                    time.perf_counter() - started,
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

    def _remote(self, name: str) -> Pool:
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
        self._local_ewma_s = ewma(self._local_ewma_s, time.perf_counter() - started)
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


def _version_number(model: str, version: str) -> int:
    if not version.isdigit():
        raise InvalidInputError(
            f"model {model!r}: version {version!r} is not a version number; "
            "versions are the numbered folders of the model repository"
        )
    return int(version)


def _site(request: pb.ModelInferRequest, route: Route | None) -> str:
    """The request's site, from the parameter the route's affinity label names."""
    if route is None or not route.affinity_label:
        return ""
    param = request.parameters.get(route.affinity_label)
    return param.string_param if param is not None else ""
