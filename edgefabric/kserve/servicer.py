"""The KServe v2 ``GRPCInferenceService``: converts messages and delegates to the data plane.

Every RPC goes through one error guard: project errors become their status code from
:func:`edgefabric.errors.grpc_status_for`; anything else becomes INTERNAL with a correlation id
(the details go to the log only).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from edgefabric.dataplane import DataPlane
from edgefabric.errors import EdgefabricError, OverloadedError, UnsupportedError, grpc_status_for
from edgefabric.kserve import converters
from edgefabric.kserve.admission import Admission, AdmissionConfig, Refusal, RefusalReason
from edgefabric.kserve.forwarding import Forwarder
from edgefabric.kserve.limits import DEFAULT_LIMITS, RequestLimits
from edgefabric.security.access import admitted, record_admin, require_model, visible
from edgefabric.telemetry import tracing

__all__ = ["InferenceServicer"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[object, object]
_REFUSED = pb.ModelInferResponse()


def _internal_message(exc: BaseException, rpc: str) -> str:
    correlation_id = uuid.uuid4().hex[:12]
    log.error(
        "%s failed (correlation id %s)",
        rpc,
        correlation_id,
        exc_info=exc,
        extra={"correlation_id": correlation_id},
    )
    return f"internal error; correlation id {correlation_id}"


async def abort_with(context: Context, exc: Exception, rpc: str) -> None:
    """End the RPC with the status that ``exc`` travels as."""
    if isinstance(exc, EdgefabricError):
        trailing: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, OverloadedError):
            trailing = (("retry-after-ms", str(exc.retry_after_ms)),)
        await context.abort(grpc_status_for(exc), str(exc), trailing_metadata=trailing)
    await context.abort(grpc.StatusCode.INTERNAL, _internal_message(exc, rpc))


def guarded(
    method: Callable[[InferenceServicer, Req, Context], Awaitable[Resp]],
) -> Callable[[InferenceServicer, Req, Context], Awaitable[Resp]]:
    """Apply the error table to one unary RPC."""

    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:  # the one place foreign errors turn into statuses
            remaining = context.time_remaining()
            if context.done() or (remaining is not None and remaining <= 0):
                # The client's deadline passed or it left: gRPC has answered it already.
                log.debug("%s ended before its answer: %s", method.__name__, exc)
                raise asyncio.CancelledError from None
            await abort_with(context, exc, method.__name__)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``inference.GRPCInferenceService`` over a :class:`DataPlane`."""

    def __init__(
        self,
        data: DataPlane,
        forwarder: Forwarder | None = None,
        *,
        limits: RequestLimits = DEFAULT_LIMITS,
        max_deadline_s: float | None = None,
        admission: AdmissionConfig | None = None,
    ) -> None:
        self._data = data
        self._admission = Admission(admission)
        self._forwarder = forwarder
        self._limits = limits
        self._max_deadline_s = max_deadline_s

    def _deadline(self, time_remaining_s: float | None) -> float | None:
        """The client's remaining time, capped at ``max_deadline_s`` (none given: the cap)."""
        cap = self._max_deadline_s
        if cap is None:
            return time_remaining_s
        return cap if time_remaining_s is None else min(cap, time_remaining_s)

    def _forwarded(self, model: str) -> Forwarder | None:
        forwarder = self._forwarder
        return forwarder if forwarder is not None and forwarder.forwards(model) else None

    @guarded
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._data.live())

    @guarded
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._data.ready())

    @guarded
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        info = self._data.info
        return pb.ServerMetadataResponse(
            name=info.name, version=info.version, extensions=list(info.extensions)
        )

    @guarded
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        require_model(request.name)
        if forwarder := self._forwarded(request.name):
            return pb.ModelReadyResponse(
                ready=await forwarder.model_ready(request.name, request.version)
            )
        return pb.ModelReadyResponse(ready=self._data.model_ready(request.name, request.version))

    @guarded
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        require_model(request.name)
        if forwarder := self._forwarded(request.name):
            return await forwarder.metadata(request.name, request.version)
        served, version = self._data.resolve(request.name, request.version)
        versions = [version.version] if request.version else list(served.versions)
        return converters.metadata_to_proto(served.signature, versions, served.config.platform)

    @guarded
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        require_model(request.name)
        if forwarder := self._forwarded(request.name):
            return pb.ModelConfigResponse(
                config=await forwarder.config(request.name, request.version)
            )
        return pb.ModelConfigResponse(config=self._data.model_config(request.name, request.version))

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        """Admission first (no decoding, no exception when refused), then the guarded call."""
        remaining_s = self._deadline(context.time_remaining())
        admission = self._admission
        refusal = admission.admit(
            time.monotonic_ns(), None if remaining_s is None else int(remaining_s * 1e9)
        )
        if refusal is not None:
            self._refuse(context, refusal)
            return _REFUSED  # gRPC sends no message with a non-OK status
        try:
            return await self._model_infer(request, context)
        finally:
            admission.done(time.monotonic_ns())

    def _refuse(self, context: Context, refusal: Refusal) -> None:
        context.set_code(
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if refusal.reason is RefusalReason.IN_FLIGHT
            else grpc.StatusCode.DEADLINE_EXCEEDED
        )
        context.set_details(refusal.message)
        context.set_trailing_metadata((("retry-after-ms", str(refusal.retry_after_ms)),))
        self._data.metrics.count_shed("", "", refusal.reason.value)

    @guarded
    async def _model_infer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        with tracing.span(
            "ModelInfer",
            kind="server",
            attributes={"edgefabric.model": request.model_name},
            incoming=lambda: tracing.carrier_from_metadata(context.invocation_metadata()),
        ):
            return await self._infer(request, self._deadline(context.time_remaining()))

    async def _infer(
        self, request: pb.ModelInferRequest, time_remaining_s: float | None, *, stream: bool = False
    ) -> pb.ModelInferResponse:
        with admitted(request.model_name):
            if forwarder := self._forwarded(request.model_name):
                converters.check_limits(request, self._limits)
                return await forwarder.infer(request, time_remaining_s, stream=stream)
            decoded = converters.request_from_proto(
                request,
                now_s=time.monotonic(),
                time_remaining_s=time_remaining_s,
                limits=self._limits,
            )
            return converters.response_to_proto(await self._data.infer(decoded))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently; each answer (or error) is sent as soon as it is ready.

        At most ``max_stream_in_flight`` requests are being answered or waiting to be sent;
        past that no further request is read, so a client that writes without reading is held
        back by HTTP/2 flow control instead of growing the server's queues.
        """
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self._limits.max_stream_in_flight)

        def incoming() -> dict[str, str]:  # the stream's traceparent, read when tracing is on
            return tracing.carrier_from_metadata(context.invocation_metadata())

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                with tracing.span(  # one server span per streamed request
                    "ModelStreamInfer",
                    kind="server",
                    attributes={
                        "edgefabric.model": request.model_name,
                        "edgefabric.request_id": request.id,
                    },
                    incoming=incoming,
                ):
                    response = await self._infer(request, self._deadline(None), stream=True)
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except Exception as exc:  # reported in-band; the stream goes on
                message = (
                    str(exc)
                    if isinstance(exc, EdgefabricError)
                    else _internal_message(exc, "ModelStreamInfer")
                )
                echo = pb.ModelInferResponse(
                    id=request.id,
                    model_name=request.model_name,
                    model_version=request.model_version,
                )
                await answers.put(
                    pb.ModelStreamInferResponse(error_message=message, infer_response=echo)
                )

        async def read_requests() -> None:
            async for request in request_iterator:
                await slots.acquire()  # released once its answer is sent
                task = asyncio.create_task(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
            await answers.put(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (item := await answers.get()) is not None:
                yield item
                slots.release()
            await reader
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    @guarded
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            require_model(request.name)
        rows = [
            row for row in self._data.statistics(request.name, request.version) if visible(row[0])
        ]
        return pb.ModelStatisticsResponse(
            model_stats=[converters.statistics_to_proto(*row) for row in rows]
        )

    @guarded
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        index = converters.index_to_proto(self._data.repository_index(ready_only=request.ready))
        if self._forwarder is not None:
            local = {entry.name for entry in index.models}
            index.models.extend(e for e in self._forwarder.index() if e.name not in local)
        hidden = [entry for entry in index.models if not visible(entry.name)]
        for entry in hidden:
            index.models.remove(entry)
        return index

    @guarded
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        params = converters.parameters_from_proto(request.parameters)
        if any(key.startswith("file:") for key in params):
            raise UnsupportedError("loading models from uploaded files is not supported")
        config = params.get("config", "")
        await self._data.load_model(request.model_name, str(config))
        await record_admin("gateway.model.load", request.model_name, {"config": bool(config)})
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self._data.unload_model(request.model_name)
        await record_admin("gateway.model.unload", request.model_name, {})
        return pb.RepositoryModelUnloadResponse()

    async def _unsupported(self, request: object, context: Context) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "shared memory, trace and log settings are not supported; send tensor contents",
        )

    SystemSharedMemoryStatus = _unsupported
    SystemSharedMemoryRegister = _unsupported
    SystemSharedMemoryUnregister = _unsupported
    CudaSharedMemoryStatus = _unsupported
    CudaSharedMemoryRegister = _unsupported
    CudaSharedMemoryUnregister = _unsupported
    TraceSetting = _unsupported
    LogSettings = _unsupported
