"""The gateway's admin gRPC service: operator actions next to the KServe v2 API, same port.

One service, ``edgefabric.gateway.v1.Admin``, whose messages are ``google.protobuf.Struct``
(no generated code; see docs/adr for the decision):

- ``SwapVersion`` (server streaming): ``{"model": "mlp", "to": "local@2", "steps": 4,
  "step_s": 1.0}`` -> one ``{"phase", "new_share", "detail"}`` per phase reached
  (:mod:`gateway.swap`). The swap runs in the gateway: a client that leaves mid-way cancels it
  and the original route is restored.

It is an ordinary gRPC method: the server's interceptors (authentication, the admin role)
apply to it as to any other non-inference RPC, and each swap, done or failed, joins the audit
log as ``gateway.route.swap`` when the gateway runs with a home. :func:`swap` is the client.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from edgefabric.errors import EdgefabricError, InvalidInputError, UnsupportedError
from edgefabric.kserve.servicer import abort_with
from edgefabric.security.access import record_admin
from gateway.router import Router
from gateway.swap import SwapPlan, SwapProgress, swap_version

__all__ = ["ADMIN_SERVICE", "SWAP_METHOD", "admin_handler", "swap"]

ADMIN_SERVICE = "edgefabric.gateway.v1.Admin"
SWAP_METHOD = f"/{ADMIN_SERVICE}/SwapVersion"
_SWAP_FIELDS = {"model": str, "to": str, "steps": float, "step_s": float}


def swap_plan_from(request: Struct) -> SwapPlan:
    """The swap a ``SwapVersion`` request asks for; InvalidInputError names what is wrong."""
    fields: dict[str, Any] = json_format.MessageToDict(request)
    unknown = sorted(set(fields) - set(_SWAP_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"SwapVersion: unknown field {unknown[0]!r}; expected {', '.join(_SWAP_FIELDS)}"
        )
    for name in ("model", "to"):
        if not isinstance(fields.get(name), str):
            raise InvalidInputError(
                f"SwapVersion: {name!r} must be a string, got {fields.get(name)!r}"
            )
    steps = fields.get("steps", 4)
    step_s = fields.get("step_s", 1.0)
    if not isinstance(steps, float | int) or isinstance(steps, bool) or steps != int(steps):
        raise InvalidInputError(f"SwapVersion: 'steps' must be a whole number, got {steps!r}")
    if not isinstance(step_s, float | int) or isinstance(step_s, bool) or not math.isfinite(step_s):
        raise InvalidInputError(f"SwapVersion: 'step_s' must be seconds, got {step_s!r}")
    return SwapPlan(fields["model"], fields["to"], steps=int(steps), step_s=float(step_s))


def _progress_message(progress: SwapProgress) -> Struct:
    message = Struct()
    message.update(
        {"phase": progress.phase, "new_share": progress.new_share, "detail": progress.detail}
    )
    return message


def admin_handler(router: Callable[[], Router | None]) -> grpc.GenericRpcHandler[Any, Any]:
    """The service's handler; ``router`` returns the gateway's router (``None``: no routing)."""

    async def swap_version_rpc(
        request: Struct, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Struct]:
        try:
            plan = swap_plan_from(request)
            current = router()
            if current is None:
                raise UnsupportedError(
                    "version swaps go through the gateway's router, and this gateway has none: "
                    "start it with a --route for the model (e.g. --route MODEL=local) or a --pool"
                )
            outcome = "failed"
            try:
                async for progress in swap_version(current, plan):
                    yield _progress_message(progress)
                outcome = "done"
            finally:
                details = {"to": plan.target, "steps": plan.steps, "outcome": outcome}
                await record_admin("gateway.route.swap", plan.model, details)
        except EdgefabricError as exc:
            await abort_with(context, exc, "SwapVersion")

    return grpc.method_handlers_generic_handler(
        ADMIN_SERVICE,
        {
            "SwapVersion": grpc.unary_stream_rpc_method_handler(
                swap_version_rpc,
                request_deserializer=Struct.FromString,
                response_serializer=Struct.SerializeToString,
            )
        },
    )


def swap(
    address: str,
    model: str,
    to: str,
    *,
    steps: int = 4,
    step_s: float = 1.0,
    metadata: Sequence[tuple[str, str]] = (),
    credentials: grpc.ChannelCredentials | None = None,
    timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Ask the gateway at ``address`` to swap; yields each phase as the gateway reports it.

    Raises ``grpc.RpcError`` with the gateway's status and message when the swap fails.
    """
    request = Struct()
    request.update({"model": model, "to": to, "steps": steps, "step_s": step_s})
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    with channel:
        call = channel.unary_stream(
            SWAP_METHOD,
            request_serializer=Struct.SerializeToString,
            response_deserializer=Struct.FromString,
        )
        for message in call(request, metadata=tuple(metadata), timeout=timeout_s):
            yield json_format.MessageToDict(message)
