"""Optional OpenTelemetry tracing with W3C trace context (``traceparent``).

Off by default. While off, every function here is a constant-time no-op and OpenTelemetry is
never imported (it is the optional ``otel`` extra). :func:`configure` turns it on for the whole
process: spans go to an OTLP/gRPC collector, or to any span exporter given (tests use the SDK's
in-memory one).

Carriers are plain ``str -> str`` dicts, so one pair of helpers serves every transport:
gRPC metadata (:func:`grpc_metadata`, :func:`carrier_from_metadata`) and MQTT 5 user
properties (:func:`inject` into a dict, then its items as the properties).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any, Literal

__all__ = [
    "TRACEPARENT",
    "carrier_from_metadata",
    "configure",
    "current_ids",
    "current_trace_id",
    "enabled",
    "endpoint_from",
    "extract",
    "grpc_metadata",
    "inject",
    "set_attribute",
    "shutdown",
    "span",
]

TRACEPARENT = "traceparent"
_TRACE_KEYS = (TRACEPARENT, "tracestate")
SpanKind = Literal["server", "client", "internal", "producer", "consumer"]

_NOOP: AbstractContextManager[None] = contextlib.nullcontext()
_state: _Tracing | None = None


class _Tracing:
    """The live OpenTelemetry objects (only built by :func:`configure`)."""

    def __init__(self, service_name: str, endpoint: str | None, exporter: Any) -> None:
        from opentelemetry import trace  # noqa: PLC0415  (optional; imported only when on)
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        self.trace = trace
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            processor: Any = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
        else:
            processor = SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("edgefabric")
        self.propagator = TraceContextTextMapPropagator()
        self.kinds = {
            "server": trace.SpanKind.SERVER,
            "client": trace.SpanKind.CLIENT,
            "internal": trace.SpanKind.INTERNAL,
            "producer": trace.SpanKind.PRODUCER,
            "consumer": trace.SpanKind.CONSUMER,
        }


def enabled() -> bool:
    """Whether tracing is on in this process."""
    return _state is not None


def endpoint_from(setting: str) -> str:
    """The OTLP endpoint to use: the component's setting, else ``OTEL_EXPORTER_OTLP_ENDPOINT``
    ("" when neither is set: tracing stays off)."""
    return setting or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def configure(service_name: str, *, endpoint: str | None = None, exporter: Any = None) -> None:
    """Turn tracing on for this process: spans to the OTLP/gRPC ``endpoint``
    (``http://HOST:4317``) or to ``exporter`` (an OpenTelemetry ``SpanExporter``)."""
    global _state  # noqa: PLW0603  (one tracer per process, like logging's root logger)
    if _state is not None:
        raise RuntimeError("tracing is already configured in this process; call shutdown() first")
    if exporter is None and not endpoint:
        raise ValueError("tracing needs an OTLP endpoint (http://HOST:4317) or an exporter")
    try:
        _state = _Tracing(service_name, endpoint, exporter)
    except ImportError as exc:
        raise RuntimeError(
            f"tracing needs OpenTelemetry ({exc.name} is missing): install edgefabric[otel], "
            "or leave the OTLP endpoint unset"
        ) from None


def shutdown() -> None:
    """Flush pending spans and turn tracing off again."""
    global _state
    state, _state = _state, None
    if state is not None:
        state.provider.shutdown()


def span(
    name: str,
    *,
    kind: SpanKind = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
    incoming: Callable[[], Mapping[str, str]] | None = None,
) -> AbstractContextManager[Any]:
    """A context manager timing one span, child of the current one. ``incoming`` returns the
    carrier of a remote parent (called only when tracing is on); a span ending in an exception
    records it."""
    state = _state
    if state is None:
        return _NOOP
    context = state.propagator.extract(incoming()) if incoming is not None else None
    return state.tracer.start_as_current_span(
        name, context=context, kind=state.kinds[kind], attributes=attributes
    )


def set_attribute(key: str, value: str | int | float | bool) -> None:
    """Set an attribute on the current span (no-op when off)."""
    if _state is not None:
        _state.trace.get_current_span().set_attribute(key, value)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context into ``carrier`` (no-op when off or outside a span)."""
    if _state is not None:
        _state.propagator.inject(carrier)


def extract(carrier: Mapping[str, str]) -> Any:
    """The OpenTelemetry context ``carrier`` holds (``None`` when off)."""
    if _state is None:
        return None
    return _state.propagator.extract(carrier)


def grpc_metadata() -> tuple[tuple[str, str], ...] | None:
    """The current trace context as gRPC metadata to send; ``None`` when there is none."""
    if _state is None:
        return None
    carrier: dict[str, str] = {}
    _state.propagator.inject(carrier)
    return tuple(carrier.items()) or None


def carrier_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> dict[str, str]:
    """The trace-context entries of received gRPC metadata (or MQTT user properties)."""
    return {
        key: value for key, value in metadata or () if key in _TRACE_KEYS and isinstance(value, str)
    }


def current_ids() -> tuple[str, str] | None:
    """The current (trace id, span id) in hex (``None`` when off or outside a span)."""
    if _state is None:
        return None
    context = _state.trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits (``None`` when off or outside a span)."""
    ids = current_ids()
    return None if ids is None else ids[0]
