"""Fixtures shared by the integration tests of one area (the rest live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from edgefabric.telemetry import tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every finished span kept in memory; off again afterwards."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,  # imported here: tracing stays unimported for the other tests
    )

    exporter = InMemorySpanExporter()
    tracing.configure("edgefabric-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()
