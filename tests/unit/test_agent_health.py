"""Health reporting: process sampling, latency windows and the Health message."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.message import Message

from edge_agent import health
from edge_agent.health import LatencyStats, LatencyWindow, ProcessSampler, build_health
from edge_agent.slots import ModelSlots, SlotState
from edgefabric.wire.v1 import fleet_pb2

pytestmark = pytest.mark.unit


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- ProcessSampler ----------------------------------------------------------------------------


def test_cpu_percent_is_cpu_time_over_wall_time_since_last_sample() -> None:
    clock, cpu = iter([10.0, 12.0, 13.0, 13.0]), iter([5.0, 6.5, 8.5, 9.0])
    sampler = ProcessSampler(
        clock=lambda: next(clock), cpu_seconds=lambda: next(cpu), rss_bytes=lambda: 4096
    )
    assert sampler.sample() == (75.0, 4096)  # 1.5 s of CPU in 2 s
    assert sampler.sample() == (200.0, 4096)  # two busy threads for 1 s
    assert sampler.sample() == (0.0, 4096)  # no time passed


def test_cpu_percent_and_rss_are_never_negative() -> None:
    clock, cpu = iter([0.0, 1.0]), iter([2.0, 1.0])
    sampler = ProcessSampler(
        clock=lambda: next(clock), cpu_seconds=lambda: next(cpu), rss_bytes=lambda: -1
    )
    assert sampler.sample() == (0.0, 0)


def test_real_process_has_a_resident_size() -> None:
    _, rss = ProcessSampler().sample()
    assert rss > 1024 * 1024


def test_rss_falls_back_to_getrusage_without_proc(tmp_path: Path) -> None:
    assert health._rss_bytes(str(tmp_path / "missing")) > 1024 * 1024


# -- LatencyWindow -----------------------------------------------------------------------------


def test_percentiles_over_a_known_window() -> None:
    window = LatencyWindow()
    for ms in reversed(range(1, 101)):  # order of arrival does not matter
        window.record("m", 1, ms / 1000, ok=True)
    assert window.snapshot()[("m", 1)] == pytest.approx(LatencyStats(100, 0, 50.0, 99.0))


def test_single_sample_is_every_percentile() -> None:
    window = LatencyWindow()
    window.record("m", 1, 0.25, ok=True)
    assert window.snapshot() == {("m", 1): LatencyStats(1, 0, 250.0, 250.0)}


def test_errors_are_counted_but_not_in_percentiles() -> None:
    window = LatencyWindow()
    for _ in range(3):
        window.record("m", 2, 0.010, ok=True)
    window.record("m", 2, 30.0, ok=False)  # timed out: an error, not a latency sample
    window.record("m", 2, 0.0, ok=False)  # refused at once
    requests, errors, p50_ms, p99_ms = window.snapshot()[("m", 2)]
    assert (requests, errors) == (5, 2)
    assert p50_ms == pytest.approx(10.0)
    assert p99_ms == pytest.approx(10.0)


def test_versions_are_kept_apart() -> None:
    window = LatencyWindow()
    window.record("m", 1, 0.001, ok=True)
    window.record("m", 2, 0.002, ok=False)
    window.record("other", 1, 0.003, ok=True)
    snapshot = window.snapshot()
    assert snapshot[("m", 1)] == pytest.approx(LatencyStats(1, 0, 1.0, 1.0))
    assert snapshot[("m", 2)] == LatencyStats(1, 1, 0.0, 0.0)
    assert snapshot[("other", 1)] == pytest.approx(LatencyStats(1, 0, 3.0, 3.0))


def test_window_keeps_the_last_n_samples_and_all_counts() -> None:
    window = LatencyWindow(max_samples=10)
    for _ in range(90):
        window.record("m", 1, 1.0, ok=True)  # slow, then pushed out
    for _ in range(10):
        window.record("m", 1, 0.002, ok=True)
    assert window.snapshot()[("m", 1)] == pytest.approx(LatencyStats(100, 0, 2.0, 2.0))


def test_window_forgets_samples_older_than_max_age() -> None:
    clock = FakeClock()
    window = LatencyWindow(max_age_s=60.0, clock=clock)
    window.record("m", 1, 1.0, ok=True)
    clock.now += 30
    window.record("m", 1, 0.005, ok=True)
    assert window.snapshot()[("m", 1)].p99_ms == pytest.approx(1000.0)
    clock.now += 31  # the first sample is 61 s old
    assert window.snapshot()[("m", 1)] == pytest.approx(LatencyStats(2, 0, 5.0, 5.0))
    clock.now += 60
    assert window.snapshot()[("m", 1)] == LatencyStats(2, 0, 0.0, 0.0)


def test_forget_drops_a_version() -> None:
    window = LatencyWindow()
    window.record("m", 1, 0.001, ok=True)
    window.forget("m", 1)
    window.forget("m", 99)
    assert window.snapshot() == {}


@pytest.mark.parametrize("latency_s", [-0.001, float("nan"), float("inf")])
def test_impossible_latency_is_refused(latency_s: float) -> None:
    with pytest.raises(ValueError, match="'m' version 1: latency must be finite"):
        LatencyWindow().record("m", 1, latency_s, ok=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_samples": 0}, "max_samples"), ({"max_age_s": 0.0}, "max_age_s")],
)
def test_window_bounds_are_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatencyWindow(**kwargs)  # type: ignore[arg-type]


# -- build_health ------------------------------------------------------------------------------


def install(slots: ModelSlots, tmp_path: Path, version: int) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    model = incoming / f"{slots.name}-{version}.onnx"
    model.write_bytes(b"not parsed by slots")
    slots.install_verified(version, model, None, {"name": slots.name, "version": version})


@pytest.fixture
def slots(tmp_path: Path) -> list[ModelSlots]:
    """``resnet`` 3 serving, 4 failed; ``tiny`` 1 verified, nothing active."""
    root = tmp_path / "models"
    resnet = ModelSlots(root, "resnet")
    install(resnet, tmp_path, 3)
    for state in (SlotState.LOADING, SlotState.SELF_TEST, SlotState.READY):
        resnet.set_state(3, state)
    resnet.activate(3)
    resnet.set_state(4, SlotState.DOWNLOADING)
    resnet.set_state(4, SlotState.FAILED, "signature: target hash mismatch")
    tiny = ModelSlots(root, "tiny")
    install(tiny, tmp_path, 1)
    return [tiny, resnet]


def report(
    slots: list[ModelSlots], latency: LatencyWindow, **overrides: object
) -> fleet_pb2.Health:
    fields: dict[str, object] = {
        "device_id": "dev-7",
        "now_ms": 1_700_000_000_123,
        "slots": slots,
        "latency": latency,
        "execution_provider": "CPUExecutionProvider",
        "metadata_age_s": 12.5,
        "cpu_percent": 37.5,
        "rss_bytes": 123_456_789,
        "applied_sequence": 42,
        "outbox_pending": 3,
        "self_tests": {("resnet", 3): True, ("resnet", 4): False},
    }
    fields.update(overrides)
    return build_health(**fields)  # type: ignore[arg-type]


def unset_fields(message: Message) -> list[str]:
    """Names of fields still at their default (proto3 cannot tell 'unset' otherwise)."""
    return [f.name for f in message.DESCRIPTOR.fields if not getattr(message, f.name)]


def test_health_fills_every_field(slots: list[ModelSlots]) -> None:
    latency = LatencyWindow()
    for ms in (4, 5, 6):
        latency.record("resnet", 3, ms / 1000, ok=True)
    latency.record("resnet", 3, 0.5, ok=False)

    health_msg = report(slots, latency)

    assert unset_fields(health_msg) == []
    assert (health_msg.device_id, health_msg.at_ms) == ("dev-7", 1_700_000_000_123)
    assert health_msg.execution_provider == "CPUExecutionProvider"
    assert (health_msg.metadata_age_s, health_msg.cpu_percent) == (12.5, 37.5)
    assert (health_msg.rss_bytes, health_msg.applied_sequence) == (123_456_789, 42)
    assert health_msg.outbox_pending == 3

    slot_rows = [(s.model, s.version, s.state, s.reason, s.active) for s in health_msg.slots]
    assert slot_rows == [
        ("resnet", 3, "READY", "", True),
        ("resnet", 4, "FAILED", "signature: target hash mismatch", False),
        ("tiny", 1, "VERIFIED", "", False),
    ]
    assert unset_fields(health_msg.slots[1]) == ["active"]

    serving = health_msg.models[0]
    assert unset_fields(serving) == []
    assert (serving.model, serving.version, serving.requests, serving.errors) == (
        "resnet",
        3,
        4,
        1,
    )
    assert (serving.p50_ms, serving.p99_ms) == pytest.approx((5.0, 6.0))
    assert serving.self_test_passed


def test_failed_self_test_is_reported_without_traffic(slots: list[ModelSlots]) -> None:
    health_msg = report(slots, LatencyWindow())
    assert [(m.model, m.version, m.self_test_passed) for m in health_msg.models] == [
        ("resnet", 3, True),
        ("resnet", 4, False),
    ]
    failed = health_msg.models[1]
    assert (failed.requests, failed.errors, failed.p50_ms, failed.p99_ms) == (0, 0, 0.0, 0.0)


def test_traffic_to_a_version_without_a_slot_is_reported(slots: list[ModelSlots]) -> None:
    latency = LatencyWindow()
    latency.record("gone", 9, 0.001, ok=True)
    health_msg = report(slots, latency, self_tests={})
    assert [(m.model, m.version, m.self_test_passed) for m in health_msg.models] == [
        ("gone", 9, False),
        ("resnet", 3, False),
    ]


def test_metadata_never_refreshed_is_negative(slots: list[ModelSlots]) -> None:
    assert report(slots, LatencyWindow(), metadata_age_s=None).metadata_age_s < 0


def test_health_round_trips_on_the_wire(slots: list[ModelSlots]) -> None:
    health_msg = report(slots, LatencyWindow())
    assert fleet_pb2.Health.FromString(health_msg.SerializeToString()) == health_msg


def test_empty_device_reports_resources_only() -> None:
    health_msg = report([], LatencyWindow(), self_tests={}, outbox_pending=0)
    assert (len(health_msg.slots), len(health_msg.models)) == (0, 0)
    assert health_msg.rss_bytes == 123_456_789
