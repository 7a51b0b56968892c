"""Who may call what: a server interceptor that authenticates, and the per-call checks.

The interceptor sees every RPC of every service on the server, before the servicer:

    open            grpc.health.v1, server reflection, ServerLive, ServerReady: no token needed
    inference API   the rest of the KServe v2 user RPCs: any valid token (UNAUTHENTICATED
                    without one); the model each call names is checked by the servicer through
                    :func:`require_model` / :func:`admitted`, since it sits in the request
    everything else RepositoryModelLoad/Unload, shared memory, trace/log settings, and any
                    other service on the server (administrative RPCs): the admin role, else
                    PERMISSION_DENIED

The caller is kept in a context variable for the duration of the RPC (tasks the RPC starts
inherit it). Outside an :class:`AccessControl` (the edge agent's server) nothing is checked.

Unary ``ModelInfer`` takes its tenant admission (rate and quota) here too, before the request
is decoded: a refused call costs authentication, a token-bucket step and a status (no protobuf
parsing, no exception, no log line, no tracing or statistics), so a tenant flooding past its
limit takes as little as possible from the others. The servicer then checks the model only.
Streamed requests are admitted one by one in the servicer (:func:`admitted`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from edgefabric.errors import EdgefabricError, PermissionDeniedError, grpc_status_for
from edgefabric.security.audit import AuditRecorder
from edgefabric.security.limits import TenantLimiter, TenantLimits
from edgefabric.security.tokens import Principal, Role, TokenVerifier

__all__ = [
    "ANONYMOUS",
    "AccessControl",
    "admitted",
    "record_admin",
    "require_model",
    "visible",
]

log = logging.getLogger(__name__)

ANONYMOUS = Principal("anonymous", "anonymous", Role.ADMIN, ("*",))
"""Everyone, when the server runs without authentication (loopback only)."""

_KSERVE = "/inference.GRPCInferenceService/"
_OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_OPEN_METHODS = frozenset({_KSERVE + "ServerLive", _KSERVE + "ServerReady"})
_MODEL_INFER = _KSERVE + "ModelInfer"
_REFUSED = pb.ModelInferResponse()  # returned with a non-OK status: gRPC sends no message
_USER_METHODS = frozenset(
    _KSERVE + name
    for name in (
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelConfig",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelStatistics",
        "RepositoryIndex",
    )
)


@dataclass(frozen=True, slots=True)
class _Caller:
    principal: Principal
    access: AccessControl
    admitted: bool = False  # the call holds its tenant admission already (unary ModelInfer)


_caller: ContextVar[_Caller | None] = ContextVar("edgefabric_caller", default=None)


class AccessControl:
    """Authentication (``verifier``; ``None``: everyone is :data:`ANONYMOUS`), per-tenant
    limits (from the token store, else ``default_limits``) and the audit trail of admin RPCs."""

    def __init__(
        self,
        verifier: TokenVerifier | None,
        *,
        default_limits: TenantLimits | None = None,
        audit: AuditRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verifier = verifier
        self.audit = audit
        self.clock = clock
        self._default_limits = default_limits or TenantLimits()
        self._generation = -1
        self.limiter = TenantLimiter({}, self._default_limits)
        self._sync_limits()

    def _sync_limits(self) -> None:
        generation = 0 if self.verifier is None else self.verifier.generation
        if generation != self._generation:
            limits = {} if self.verifier is None else self.verifier.tenant_limits
            self.limiter.configure(limits, self._default_limits, self.clock())
            self._generation = generation

    def authenticate(self, metadata: Mapping[str, str]) -> Principal:
        """The caller the metadata proves (raises ``UnauthenticatedError``)."""
        if self.verifier is None:
            return ANONYMOUS
        principal = self.verifier.authenticate(metadata.get("authorization"))
        self._sync_limits()
        return principal

    def authorize_method(self, principal: Principal, method: str) -> None:
        """Raise ``PermissionDeniedError`` unless ``principal`` may call ``method`` at all."""
        if method in _USER_METHODS or principal.is_admin:
            return
        raise PermissionDeniedError(
            f"{method} needs the admin role; token {principal.token_id} (tenant "
            f"{principal.tenant!r}) has the {principal.role.value} role"
        )

    def interceptor(self) -> grpc.aio.ServerInterceptor[Any, Any]:
        """The interceptor that applies this access control to a ``grpc.aio`` server."""
        return _Interceptor(self)


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    pairs = context.invocation_metadata() or ()
    return {key: value for key, value in pairs if isinstance(value, str)}


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic in stubs only
    def __init__(self, access: AccessControl) -> None:
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in _OPEN_METHODS or method.startswith(_OPEN_PREFIXES):
            return handler
        if method == _MODEL_INFER and handler.unary_unary is not None:
            return _admitting(handler, self._access)
        return _wrap(handler, self._enter_for(method))

    def _enter_for(
        self, method: str
    ) -> Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]:
        access = self._access

        async def enter(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                principal = access.authenticate(_metadata(context))
                access.authorize_method(principal, method)
            except EdgefabricError as exc:
                log.info("%s refused: %s", method, exc)
                await context.abort(grpc_status_for(exc), str(exc))
            _caller.set(_Caller(principal, access))

        return enter


def _admitting(
    handler: grpc.RpcMethodHandler[Any, Any], access: AccessControl
) -> grpc.RpcMethodHandler[Any, Any]:
    """Unary ModelInfer: authenticate, take the tenant's admission, and only then decode the
    request and run the servicer; a refusal is a status on the context (see the module)."""
    inner: Callable[..., Awaitable[Any]] = handler.unary_unary  # type: ignore[assignment]
    decode = handler.request_deserializer
    limiter = access.limiter

    async def behaviour(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            principal = access.authenticate(_metadata(context))
        except EdgefabricError as exc:
            log.info("%s refused: %s", _MODEL_INFER, exc)
            await context.abort(grpc_status_for(exc), str(exc))
        tenant = principal.tenant
        lease = limiter.try_acquire(tenant, access.clock())
        if not isinstance(lease, int):
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details(str(lease))
            context.set_trailing_metadata((("retry-after-ms", str(lease.retry_after_ms)),))
            return _REFUSED
        try:
            try:
                request = raw if decode is None else decode(raw)
            except DecodeError as exc:
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(
                    f"the request body is not a valid inference.ModelInferRequest message "
                    f"({exc}); send a serialized ModelInferRequest, as tritonclient does"
                )
                return _REFUSED
            _caller.set(_Caller(principal, access, admitted=True))
            return await inner(request, context)
        finally:
            limiter.release(tenant, lease, access.clock())

    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=None, response_serializer=handler.response_serializer
    )


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    enter: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler, with ``enter`` run (in the RPC's own task) before the behaviour."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attribute, make in kinds:
        inner = getattr(handler, attribute)
        if inner is None:
            continue
        if inspect.isasyncgenfunction(inner):

            async def streaming(
                request: Any, context: Any, inner: Any = inner
            ) -> AsyncIterator[Any]:
                await enter(context)
                async for item in inner(request, context):
                    yield item

            behaviour: Callable[..., Any] = streaming
        else:

            async def single(request: Any, context: Any, inner: Any = inner) -> Any:
                await enter(context)
                return await inner(request, context)

            behaviour = single
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def require_model(model: str) -> None:
    """Raise ``PermissionDeniedError`` unless the current caller may use ``model``."""
    caller = _caller.get()
    if caller is None or caller.principal.may_use(model):
        return
    principal = caller.principal
    raise PermissionDeniedError(
        f"token {principal.token_id} (tenant {principal.tenant!r}) may not use model "
        f"{model!r}; it may use models matching {', '.join(principal.models) or 'nothing'}"
    )


def visible(model: str) -> bool:
    """Whether the current caller may see ``model`` in listings and statistics."""
    caller = _caller.get()
    return caller is None or caller.principal.may_use(model)


@contextmanager
def admitted(model: str) -> Iterator[None]:
    """Hold one of the caller's tenant's admissions for an inference on ``model``.

    Raises ``PermissionDeniedError`` (model not allowed) or ``OverloadedError`` (over the
    tenant's rate or concurrency limit, with ``retry_after_ms``).
    """
    caller = _caller.get()
    if caller is None:
        yield
        return
    require_model(model)
    if caller.admitted:  # unary ModelInfer: the interceptor holds the admission
        yield
        return
    access, tenant = caller.access, caller.principal.tenant
    lease = access.limiter.acquire(tenant, access.clock())
    try:
        yield
    finally:
        access.limiter.release(tenant, lease, access.clock())


async def record_admin(
    action: str,
    subject: str,
    details: Mapping[str, Any],
    *,
    access: AccessControl | None = None,
    actor: str = "",
) -> None:
    """Append an admin action of the current caller to the audit log, when there is one.

    Outside any RPC (the gateway acting on a message from the store), the action is
    ``actor``'s and goes to ``access``'s log; without both nothing is recorded.
    """
    caller = _caller.get()
    if caller is None:
        if access is None or access.audit is None or not actor:
            return
        recorder = access.audit
    else:
        if caller.access.audit is None:
            return
        principal = caller.principal
        actor = (
            "gateway:anonymous"
            if principal is ANONYMOUS
            else f"token:{principal.token_id}@{principal.tenant}"
        )
        recorder = caller.access.audit
    await asyncio.to_thread(
        lambda: recorder(actor=actor, action=action, subject=subject, details=details)
    )
