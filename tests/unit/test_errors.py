"""The exception tree and its one table of gRPC status codes."""

from __future__ import annotations

import grpc
import pytest

from edgefabric import errors
from edgefabric.errors import (
    ConflictError,
    DeadlineExceededError,
    EdgefabricError,
    IntegrityError,
    InternalError,
    InvalidInputError,
    InvalidModelError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    PermissionDeniedError,
    RequestCancelledError,
    SigningKeyError,
    StoreError,
    TransportError,
    UnauthenticatedError,
    UnsupportedError,
    grpc_status_for,
)

pytestmark = pytest.mark.unit

STATUS = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    RequestCancelledError: grpc.StatusCode.CANCELLED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    UnsupportedError: grpc.StatusCode.UNIMPLEMENTED,
    ModelLoadError: grpc.StatusCode.INTERNAL,
    InternalError: grpc.StatusCode.INTERNAL,
    TransportError: grpc.StatusCode.UNAVAILABLE,
    StoreError: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidModelError: grpc.StatusCode.FAILED_PRECONDITION,
    ConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    SigningKeyError: grpc.StatusCode.FAILED_PRECONDITION,
    IntegrityError: grpc.StatusCode.DATA_LOSS,
}


@pytest.mark.parametrize(("error_type", "code"), list(STATUS.items()))
def test_every_error_has_its_status(
    error_type: type[EdgefabricError], code: grpc.StatusCode
) -> None:
    error = error_type("boom")
    assert isinstance(error, EdgefabricError)
    assert str(error) == "boom"
    assert grpc_status_for(error) is code


def test_the_table_covers_every_exported_error() -> None:
    exported = {
        obj
        for name in errors.__all__
        if isinstance(obj := getattr(errors, name), type) and issubclass(obj, EdgefabricError)
    }
    assert exported - {EdgefabricError} == set(STATUS)


def test_the_base_class_is_internal() -> None:
    assert grpc_status_for(EdgefabricError("x")) is grpc.StatusCode.INTERNAL


def test_subclasses_inherit_their_parents_status() -> None:
    class BadTensorError(InvalidInputError):
        pass

    assert grpc_status_for(BadTensorError("x")) is grpc.StatusCode.INVALID_ARGUMENT


def test_overloaded_error_carries_retry_after() -> None:
    error = OverloadedError("queue full", retry_after_ms=250)
    assert error.retry_after_ms == 250
    assert str(error) == "queue full"
    assert OverloadedError("queue full").retry_after_ms == 0
