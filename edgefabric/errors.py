"""The project's one exception tree and its gRPC status table.

Every layer raises these; transports map them to wire status codes in exactly one place
(:func:`grpc_status_for`). Foreign errors (ONNX Runtime, gRPC, paho) are wrapped at the I/O
boundary that meets them, never leaked upward.

    EdgefabricError
    ├── InvalidInputError ........ INVALID_ARGUMENT   malformed tensor, bad parameter
    ├── ModelNotFoundError ....... NOT_FOUND          unknown model or version
    ├── ModelNotReadyError ....... UNAVAILABLE        known but not loaded / down
    ├── OverloadedError .......... RESOURCE_EXHAUSTED shed for overload (carries retry-after)
    ├── DeadlineExceededError .... DEADLINE_EXCEEDED  the request's deadline passed
    ├── RequestCancelledError .... CANCELLED          the client went away
    ├── UnauthenticatedError ..... UNAUTHENTICATED
    ├── PermissionDeniedError .... PERMISSION_DENIED
    ├── UnsupportedError ......... UNIMPLEMENTED      a protocol feature we do not offer
    ├── ModelLoadError ........... INTERNAL           a model failed to load (repository API)
    ├── TransportError ........... UNAVAILABLE        broker/peer unreachable or dropped (MQTT)
    ├── StoreError ............... FAILED_PRECONDITION the model store refused a change
    │   ├── InvalidModelError ....                    not ONNX, fails the checker or ORT load
    │   ├── ConflictError ........                    duplicate version, illegal stage change
    │   └── SigningKeyError ......                    keys missing, unreadable or below threshold
    ├── IntegrityError ........... DATA_LOSS          hash or signature mismatch: tampered/damaged
    └── InternalError ............ INTERNAL           anything unexpected; message kept generic
"""

from __future__ import annotations

import grpc

__all__ = [
    "ConflictError",
    "DeadlineExceededError",
    "EdgefabricError",
    "IntegrityError",
    "InternalError",
    "InvalidInputError",
    "InvalidModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "OverloadedError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "SigningKeyError",
    "StoreError",
    "TransportError",
    "UnauthenticatedError",
    "UnsupportedError",
    "grpc_status_for",
]


class EdgefabricError(Exception):
    """Base of every error the project raises on purpose; its message is safe to show a client."""


class InvalidInputError(EdgefabricError):
    """The request is malformed: names the input, what was expected and what arrived."""


class ModelNotFoundError(EdgefabricError):
    """No model (or version) of that name is known."""


class ModelNotReadyError(EdgefabricError):
    """The model is known but cannot serve right now (unloaded, loading, draining)."""


class OverloadedError(EdgefabricError):
    """Shed for overload; the client may retry after ``retry_after_ms``."""

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class DeadlineExceededError(EdgefabricError):
    """The request's deadline passed (or cannot be met) before it was answered."""


class RequestCancelledError(EdgefabricError):
    """The client cancelled the request."""


class UnauthenticatedError(EdgefabricError):
    """No or invalid credentials."""


class PermissionDeniedError(EdgefabricError):
    """Valid credentials, but not allowed to do this."""


class UnsupportedError(EdgefabricError):
    """A protocol feature this server deliberately does not offer."""


class ModelLoadError(EdgefabricError):
    """A model could not be loaded; the message says which file and why."""


class TransportError(EdgefabricError):
    """A broker or peer could not be reached, or the connection dropped mid-exchange."""


class StoreError(EdgefabricError):
    """The model store refused a change; the store is left as it was."""


class InvalidModelError(StoreError):
    """The file is not a usable ONNX model (checker, ONNX Runtime load, signature)."""


class ConflictError(StoreError):
    """The change conflicts with the store's state (duplicate version, illegal stage change)."""


class SigningKeyError(StoreError):
    """Signing keys are missing, unreadable or fewer than the role's threshold."""


class IntegrityError(EdgefabricError):
    """Bytes or metadata do not match their recorded hash or signature."""


class InternalError(EdgefabricError):
    """Something unexpected; details go to the log under a correlation id."""


_STATUS_TABLE: tuple[tuple[type[EdgefabricError], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ModelNotReadyError, grpc.StatusCode.UNAVAILABLE),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (RequestCancelledError, grpc.StatusCode.CANCELLED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnsupportedError, grpc.StatusCode.UNIMPLEMENTED),
    (ModelLoadError, grpc.StatusCode.INTERNAL),
    (TransportError, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.FAILED_PRECONDITION),
    (IntegrityError, grpc.StatusCode.DATA_LOSS),
    (InternalError, grpc.StatusCode.INTERNAL),
)


def grpc_status_for(error: EdgefabricError) -> grpc.StatusCode:
    """The gRPC status code that ``error`` travels as on every RPC."""
    for error_type, code in _STATUS_TABLE:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL
