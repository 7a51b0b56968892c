"""Telemetry building blocks without sockets: tracing on and off, JSON log lines, collectors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from edgefabric.telemetry import tracing
from edgefabric.telemetry.agent import AgentMetrics
from edgefabric.telemetry.gateway import GatewayMetrics
from edgefabric.telemetry.logs import JsonFormatter, configure_logging
from edgefabric.telemetry.store import StoreMetrics

pytestmark = pytest.mark.unit


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing.configure("unit", exporter=spans)
    try:
        yield spans
    finally:
        tracing.shutdown()


def test_tracing_off_is_a_no_op() -> None:
    assert not tracing.enabled()
    carrier: dict[str, str] = {}
    with tracing.span("x", incoming=lambda: pytest.fail("read while off")) as span:
        tracing.inject(carrier)
        tracing.set_attribute("k", 1)
        assert span is None
    assert carrier == {}
    assert tracing.grpc_metadata() is None
    assert tracing.current_trace_id() is None
    assert tracing.extract({"traceparent": "x"}) is None


def test_inject_and_extract_carry_the_trace_across_a_hop(exporter: InMemorySpanExporter) -> None:
    carrier: dict[str, str] = {}
    with tracing.span("sender", kind="producer"):
        tracing.inject(carrier)
        sent_trace = tracing.current_trace_id()
        metadata = tracing.grpc_metadata()
    assert metadata is not None
    assert dict(metadata) == carrier
    assert carrier["traceparent"].split("-")[1] == sent_trace
    with tracing.span("receiver", kind="consumer", incoming=lambda: carrier):
        assert tracing.current_trace_id() == sent_trace
    sender, receiver = exporter.get_finished_spans()
    assert receiver.parent is not None
    assert receiver.parent.span_id == sender.context.span_id


def test_configure_needs_an_endpoint_or_an_exporter_and_runs_once(
    exporter: InMemorySpanExporter,
) -> None:
    with pytest.raises(RuntimeError, match="already configured"):
        tracing.configure("again", exporter=exporter)
    tracing.shutdown()
    with pytest.raises(ValueError, match=r"needs an OTLP endpoint \(http://HOST:4317\)"):
        tracing.configure("none")


def test_endpoint_setting_wins_over_the_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert tracing.endpoint_from("") == "http://collector:4317"
    assert tracing.endpoint_from("http://mine:4317") == "http://mine:4317"
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert tracing.endpoint_from("") == ""


def test_carrier_keeps_only_trace_context_text_entries() -> None:
    metadata: list[tuple[str, str | bytes]] = [
        ("traceparent", "00-a-b-01"),
        ("authorization", "x"),
        ("tracestate", b"k=v"),
    ]
    assert tracing.carrier_from_metadata(metadata) == {"traceparent": "00-a-b-01"}
    assert tracing.carrier_from_metadata(None) == {}


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "edgefabric.x", logging.WARNING, __file__, 1, "hi %s", ("you",), None
    )
    record.__dict__.update(extra)
    return record


def test_json_log_line_has_the_fields_and_extras() -> None:
    entry = json.loads(JsonFormatter().format(_record(correlation_id="abc123", path=object())))
    assert entry["message"] == "hi you"
    assert (entry["level"], entry["logger"]) == ("WARNING", "edgefabric.x")
    assert entry["correlation_id"] == "abc123"
    assert entry["path"].startswith("<object")
    assert "trace_id" not in entry


def test_json_log_line_carries_the_current_trace_id(exporter: InMemorySpanExporter) -> None:
    with tracing.span("work"):
        entry = json.loads(JsonFormatter().format(_record()))
        assert entry["trace_id"] == tracing.current_trace_id()
        assert len(entry["span_id"]) == 16


def test_bad_log_settings_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="log format 'yaml' is not one of text, json"):
        configure_logging("INFO", "yaml")
    with pytest.raises(ValueError, match="log level 'LOUD' is not one of DEBUG"):
        configure_logging("LOUD", "text")


def test_pool_up_is_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    health = {"local": True, "edge": True}
    metrics = GatewayMetrics(registry, lambda: health)
    assert registry.get_sample_value("edgefabric_pool_up", {"pool": "edge"}) == 1
    health["edge"] = False
    assert registry.get_sample_value("edgefabric_pool_up", {"pool": "edge"}) == 0
    metrics.observe_route("m", "", "edge", "UNAVAILABLE", 0.01)
    labels = {"model": "m", "version": "", "pool": "edge", "code": "UNAVAILABLE"}
    assert registry.get_sample_value("edgefabric_route_requests_total", labels) == 1


def test_agent_events_become_counters() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry, slots=lambda: [("m", 2, "READY")], served=dict, connected=bool)
    metrics.on_event("SELF_TEST_PASSED", "m", "golden vectors match")
    metrics.on_event("INSTALL_FAILED", "m", "m:3 failed its self-test; version 2 keeps serving")
    metrics.on_event("INSTALL_FAILED", "m", "the runtime refused it")
    metrics.on_event("DOWNLOAD_RESUMED", "m", "")
    metrics.on_chunk("targets/abc.m.onnx", 0, 100)
    get = registry.get_sample_value
    assert get("edgefabric_agent_self_tests_total", {"model": "m", "result": "passed"}) == 1
    assert get("edgefabric_agent_self_tests_total", {"model": "m", "result": "failed"}) == 1
    assert get("edgefabric_agent_install_failures_total", {"model": "m"}) == 2
    assert get("edgefabric_agent_download_resumes_total", {"model": "m"}) == 1
    assert get("edgefabric_agent_transfer_bytes_total", {"kind": "targets"}) == 100
    assert get("edgefabric_agent_events_total", {"kind": "INSTALL_FAILED"}) == 2
    assert get("edgefabric_agent_slot_state", {"model": "m", "version": "2", "state": "READY"})
    assert get("edgefabric_agent_mqtt_connected") == 0


@dataclass
class _Device:
    labels: dict[str, str]
    online: bool
    active: dict[str, int] = field(default_factory=dict)
    failed: dict[str, frozenset[int]] = field(default_factory=dict)
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: dict[tuple[str, int], int] = field(default_factory=dict)
    p99_ms: dict[tuple[str, int], float] = field(default_factory=dict)


def test_store_aggregates_devices_per_group_and_keeps_rollout_progress() -> None:
    devices = {
        "a": _Device(
            {"group": "g1"}, True, {"m": 2}, {}, {("m", 2): 10}, {("m", 2): 1}, {("m", 2): 8.0}
        ),
        "b": _Device(
            {"group": "g1"},
            True,
            {"m": 2},
            {"m": frozenset({3})},
            {("m", 2): 5},
            {},
            {("m", 2): 20.0},
        ),
        "c": _Device({}, False, {"m": 1}),
    }
    metrics = StoreMetrics(lambda: devices)
    metrics.on_rollout(
        {"id": "r1", "model": "m", "version": 2, "phase": "BAKING", "stage": 2, "stages": 3,
         "devices": {"ASSIGNED": 1, "INSTALLED": 4}}
    )  # fmt: skip
    metrics.on_answer("targets/abc.m.onnx", "OK", 4096)
    metrics.on_answer("metadata/2.root.json", "ABSENT", 0)
    get = metrics.registry.get_sample_value
    by_version = {"group": "g1", "model": "m", "version": "2"}
    assert get("edgefabric_fleet_devices", {"group": "g1", "online": "true"}) == 2
    assert get("edgefabric_fleet_devices", {"group": "", "online": "false"}) == 1
    assert get("edgefabric_fleet_model_devices", by_version) == 2
    assert (
        get("edgefabric_fleet_model_devices", {**by_version, "group": "", "version": "1"}) is None
    )
    assert get("edgefabric_fleet_failed_devices", {"group": "g1", "model": "m"}) == 1
    assert get("edgefabric_fleet_agent_requests_total", by_version) == 15
    assert get("edgefabric_fleet_agent_errors_total", by_version) == 1
    assert get("edgefabric_fleet_agent_p99_latency_seconds", by_version) == pytest.approx(0.02)
    ref = {"rollout": "r1", "model": "m", "version": "2"}
    assert (get("edgefabric_rollout_stage", ref), get("edgefabric_rollout_stages", ref)) == (2, 3)
    assert get("edgefabric_rollout_phase", {"rollout": "r1", "phase": "BAKING"}) == 1
    assert get("edgefabric_rollout_devices", {"rollout": "r1", "step": "INSTALLED"}) == 4
    assert get("edgefabric_repo_served_bytes_total", {"kind": "targets"}) == 4096
    assert get("edgefabric_repo_served_chunks_total", {"kind": "metadata"}) is None
    assert get("edgefabric_repo_requests_total", {"kind": "metadata", "status": "ABSENT"}) == 1
