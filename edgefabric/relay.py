"""The wire of KServe v2 calls relayed over MQTT 5 to edge agents (docs/adr/0009).

Both ends import this module: the agent (:mod:`edge_agent.relay`) and the gateway's edge pool
(:mod:`gateway.pools.edge`). A request is the serialized KServe v2 request message, published
to ``ef/v1/dev/{device}/infer`` with a response topic, correlation data and these user
properties:

    ef-rpc          ModelInfer (when absent), ModelMetadata or ModelConfig
    ef-deadline-ms  Unix time in milliseconds after which the answer is useless (optional)

The answer goes to the response topic with the same correlation data and user property
``ef-status``: ``OK`` with the serialized KServe v2 response, or a gRPC status code name with a
:class:`~edgefabric.wire.v1.relay_pb2.RelayError`. Everything here is pure: no sockets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    RequestCancelledError,
    UnsupportedError,
    grpc_status_for,
)
from edgefabric.wire.v1.relay_pb2 import RelayError

__all__ = [
    "DEADLINE_PROPERTY",
    "RPCS",
    "RPC_PROPERTY",
    "STATUS_OK",
    "STATUS_PROPERTY",
    "decode_reply",
    "decode_request",
    "encode_error",
    "request_properties",
]

RPC_PROPERTY = "ef-rpc"
DEADLINE_PROPERTY = "ef-deadline-ms"
STATUS_PROPERTY = "ef-status"
STATUS_OK = "OK"

RPCS: dict[str, tuple[Any, Any]] = {
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
}
"""The relayed RPCs: name -> (request message type, response message type)."""

_ERRORS: dict[str, type[EdgefabricError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "NOT_FOUND": ModelNotFoundError,
    "UNAVAILABLE": ModelNotReadyError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "CANCELLED": RequestCancelledError,
    "UNIMPLEMENTED": UnsupportedError,
}


def request_properties(rpc: str, deadline_unix_s: float | None) -> list[tuple[str, str]]:
    """The user properties of one relayed request."""
    if rpc not in RPCS:
        raise ValueError(f"cannot relay {rpc!r}; expected one of {sorted(RPCS)}")
    properties = [(RPC_PROPERTY, rpc)]
    if deadline_unix_s is not None:
        properties.append((DEADLINE_PROPERTY, str(math.ceil(deadline_unix_s * 1000))))
    return properties


def decode_request(
    properties: Iterable[tuple[str, str]], payload: bytes
) -> tuple[str, Any, float | None]:
    """``(rpc, request message, deadline as Unix seconds or None)``.

    Raises :class:`InvalidInputError` naming what was expected and what arrived.
    """
    values = dict(properties)
    rpc = values.get(RPC_PROPERTY, "ModelInfer")
    types = RPCS.get(rpc)
    if types is None:
        raise InvalidInputError(
            f"user property {RPC_PROPERTY}={rpc!r}: expected one of {sorted(RPCS)}"
        )
    deadline_unix_s = None
    raw_deadline = values.get(DEADLINE_PROPERTY)
    if raw_deadline is not None:
        if not raw_deadline.isdigit():
            raise InvalidInputError(
                f"user property {DEADLINE_PROPERTY}={raw_deadline!r}: expected Unix time in "
                "milliseconds (digits only)"
            )
        deadline_unix_s = int(raw_deadline) / 1000
    try:
        request = types[0].FromString(payload)
    except DecodeError:
        raise InvalidInputError(
            f"the payload ({len(payload)} bytes) is not a serialized inference.{rpc}Request; "
            "publish the KServe v2 request message as tritonclient's service_pb2 encodes it"
        ) from None
    return rpc, request, deadline_unix_s


def encode_error(error: EdgefabricError) -> tuple[list[tuple[str, str]], bytes]:
    """User properties and payload of an error answer."""
    code = grpc_status_for(error).name
    retry_after_ms = error.retry_after_ms if isinstance(error, OverloadedError) else 0
    payload = RelayError(code=code, message=str(error), retry_after_ms=retry_after_ms)
    return [(STATUS_PROPERTY, code)], payload.SerializeToString()


def decode_reply(
    rpc: str, properties: Iterable[tuple[str, str]], payload: bytes, *, source: str
) -> Any:
    """The KServe v2 response of an ``OK`` answer; raises the project error an error answer
    carries. ``source`` names the answering agent in messages about malformed answers."""
    status = dict(properties).get(STATUS_PROPERTY)
    if status == STATUS_OK:
        try:
            return RPCS[rpc][1].FromString(payload)
        except DecodeError:
            raise InternalError(f"{source} answered {rpc} with an unreadable payload") from None
    if status is None:
        raise InternalError(f"{source} answered {rpc} without the {STATUS_PROPERTY} property")
    try:
        error = RelayError.FromString(payload)
    except DecodeError:
        raise InternalError(f"{source} answered {status} with an unreadable error") from None
    if status == "RESOURCE_EXHAUSTED":
        raise OverloadedError(error.message, error.retry_after_ms)
    raise _ERRORS.get(status, InternalError)(error.message or f"{source} answered {status}")
