"""Bounds on what one inference request may ask the decoder to build.

gRPC's ``max_receive_message_length`` caps the bytes of a message; these cap what those bytes
may turn into (tensor sizes, Python objects for BYTES elements, tasks on a stream), so that no
request costs the server much more memory or work than it sent. The defaults sit far above
any real model's needs and are reachable only by requests built to hurt. A request over a
limit is refused with INVALID_ARGUMENT naming the input, the limit and what arrived: sending it
again will not help, so it is not an overload (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "RequestLimits"]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Per-request decoding limits; every field must be at least 1."""

    max_inputs: int = 256
    """Input tensors in one request."""
    max_outputs: int = 256
    """Requested outputs in one request."""
    max_rank: int = 32
    """Dimensions of one tensor's shape (numpy itself stops at 64)."""
    max_tensor_elements: int = 1 << 28
    """Elements of one tensor; zero dimensions do not hide the others from this bound."""
    max_bytes_elements: int = 1 << 20
    """BYTES elements in one request, all inputs together (each becomes a Python object)."""
    max_bytes_element_bytes: int = 64 << 20
    """Length of one BYTES element, in bytes."""
    max_stream_in_flight: int = 128
    """Requests of one ModelStreamInfer stream being answered (or waiting to be sent) at once;
    past it the server reads no further requests from that stream until answers are sent."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"RequestLimits.{name} must be at least 1, got {value}")


DEFAULT_LIMITS = RequestLimits()
