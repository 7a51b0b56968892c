"""The dashboard's memory of fleet reports and its JSON views: pure logic, times passed in."""

from __future__ import annotations

import pytest

from edgefabric.errors import InvalidInputError
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Event, Health
from edgefabric.wire.v1.gateway_pb2 import GatewayStats
from model_store.audit import AuditEntry
from model_store.dashboard.history import MAX_GATEWAY_SERIES, FleetHistory, decode_gateway_stats
from model_store.dashboard.views import audit_events, parse_positive, rollout_json, series_json
from model_store.rollout import DeviceProgress, DeviceStep, RolloutEngine, RolloutSpec
from model_store.rollout.core import DeviceView

pytestmark = pytest.mark.unit

T0 = 1_000_000.0  # a whole number of 10 s buckets


def health(
    device: str,
    requests: int,
    errors: int,
    *,
    p50: float = 5.0,
    p99: float = 20.0,
    version: int = 1,
) -> Health:
    report = Health(device_id=device, at_ms=0)
    report.slots.add(model="mlp", version=version, state="READY", active=True)
    report.models.add(
        model="mlp", version=version, requests=requests, errors=errors, p50_ms=p50, p99_ms=p99
    )
    return report


def test_counts_are_charted_as_deltas_after_each_devices_baseline() -> None:
    history = FleetHistory()
    history.observe("a", health("a", 100, 1), T0, False)  # baseline: not charted
    history.observe("a", health("a", 150, 3), T0 + 1, False)
    history.observe("b", health("b", 7, 0), T0 + 2, False)
    history.observe("b", health("b", 17, 1), T0 + 11, False)  # the next 10 s bucket
    (series,) = history.series(60, T0 + 15)
    assert (series.model, series.pool) == ("mlp", "edge")
    assert [p.t_s for p in series.points] == [T0 - 40 + 10 * i for i in range(6)]
    assert [(p.requests, p.errors) for p in series.points][-2:] == [(50, 2), (10, 1)]
    assert sum(p.requests for p in series.points) == 60


def test_latency_is_the_mean_p50_and_the_highest_p99_per_point() -> None:
    history = FleetHistory()
    history.observe("a", health("a", 10, 0, p50=4.0, p99=10.0), T0, False)
    history.observe("b", health("b", 10, 0, p50=8.0, p99=30.0), T0 + 5, False)
    history.observe("c", health("c", 0, 0, p50=0.0, p99=0.0), T0 + 5, False)  # no traffic yet
    (series,) = history.series(10, T0 + 9)
    (point,) = series.points
    assert (point.p50_ms, point.p99_ms) == (6.0, 30.0)
    empty = history.series(60, T0 + 9).pop().points[0]
    assert (empty.requests, empty.p50_ms, empty.p99_ms) == (0, None, None)


def test_a_counter_that_went_down_is_a_restarted_device() -> None:
    history = FleetHistory()
    history.observe("a", health("a", 500, 50), T0, False)
    history.observe("a", health("a", 20, 2), T0 + 1, False)
    point = history.series(10, T0 + 1)[0].points[-1]
    assert (point.requests, point.errors) == (20, 2)


def test_points_merge_buckets_so_an_hour_is_sixty_points() -> None:
    history = FleetHistory(retention_s=3600, resolution_s=10)
    for minute in range(61):
        history.observe("a", health("a", 60 * minute, 0), T0 + 60 * minute, False)
    (series,) = history.series(3600, T0 + 3600)
    assert len(series.points) == 60
    assert series.points[1].t_s - series.points[0].t_s == 60
    assert sum(p.requests for p in series.points) == 60 * 60  # minute 0 was the baseline


def test_buckets_older_than_the_retention_are_dropped() -> None:
    history = FleetHistory(retention_s=60, resolution_s=10)
    history.observe("a", health("a", 0, 0), T0, False)
    history.observe("a", health("a", 10, 0), T0 + 1, False)
    history.observe("a", health("a", 20, 0), T0 + 1000, False)
    (series,) = history.series(60, T0 + 1000)
    assert sum(p.requests for p in series.points) == 10
    assert history.series(60, T0 + 5000) == []


@pytest.mark.parametrize("window_s", [0, -1, 3601])
def test_a_window_beyond_what_is_kept_is_refused(window_s: float) -> None:
    with pytest.raises(ValueError, match=r"expected 0 < window <= 3600 s"):
        FleetHistory().series(window_s, T0)


def test_device_events_and_status_changes_become_the_timeline() -> None:
    history = FleetHistory(max_events=3)
    switched = Event(
        device_id="a", at_ms=5_000, kind=Event.SWITCHED, model="mlp", version=2, event_id=7
    )
    history.observe("a", DeviceStatus(device_id="a", online=True, at_ms=1), T0, True)  # replay
    history.observe("a", DeviceStatus(device_id="a", online=True, agent_version="1.0"), T0, False)
    history.observe("a", switched, T0 + 1, False)
    history.observe("a", switched, T0 + 2, False)  # the outbox sent it again
    history.observe("a", DeviceStatus(device_id="a", online=False), T0 + 3, False)  # Last Will
    events = history.events()
    assert [(e.kind, e.level) for e in events] == [
        ("ONLINE", "info"),
        ("SWITCHED", "info"),
        ("OFFLINE", "warning"),
    ]
    assert events[1].at_s == 5.0  # the device's own time
    assert events[1].text == "SWITCHED mlp:2"
    assert "Last Will" in events[2].text
    failed = Event(device_id="a", kind=Event.INSTALL_FAILED, model="mlp", version=3, event_id=8)
    history.observe("a", failed, T0 + 4, False)
    assert [e.kind for e in history.events()] == ["SWITCHED", "OFFLINE", "INSTALL_FAILED"]
    assert history.events()[-1].level == "error"
    assert history.events()[-1].at_s == T0 + 4  # no device time: the receive time


def test_the_latest_health_details_are_kept_per_device() -> None:
    history = FleetHistory()
    report = health("a", 1, 0)
    report.execution_provider, report.metadata_age_s = "CUDAExecutionProvider", -1
    history.observe("a", report, T0, False)
    details = history.health()["a"]
    assert details.slots == (
        {"model": "mlp", "version": 1, "state": "READY", "reason": "", "active": True},
    )
    assert (details.execution_provider, details.metadata_age_s) == ("CUDAExecutionProvider", None)


def test_rollout_progress_counts_each_stage_against_its_planned_share() -> None:
    fleet = {
        f"d{i}": DeviceView(device_id=f"d{i}", labels={}, online=True, last_seen_s=0.0)
        for i in range(8)
    }
    spec = RolloutSpec.parse("mlp:2", stages="25%,100%")
    rollout = RolloutEngine().start("ro-0000abcd", spec, fleet, T0)
    rollout.devices = {
        "d0": DeviceProgress(DeviceStep.INSTALLED, 1, T0, 0, ""),
        "d1": DeviceProgress(DeviceStep.FAILED, 1, T0, 0, "self-test"),
    }
    document = rollout_json(rollout, sorted(fleet))
    stages = document["stages"]
    assert isinstance(stages, list)
    first, second = stages
    assert first == {
        "stage": 1,
        "fraction": 0.25,
        "planned": 2,
        "assigned": 2,
        "installed": 1,
        "failed": 1,
        "reverted": 0,
        "state": "current",
    }
    assert (second["planned"], second["assigned"], second["state"]) == (6, 0, "pending")
    assert document["target"] == "mlp:2"
    assert document["devices"] == {
        "ASSIGNED": 0,
        "INSTALLED": 1,
        "FAILED": 1,
        "REVERTING": 0,
        "ROLLED_BACK": 0,
    }


def test_audit_entries_join_the_timeline_with_their_time() -> None:
    entry = AuditEntry(1, "2026-01-02T03:04:05+00:00", "ops", "model.push", "mlp:1", {}, "", "")
    broken = AuditEntry(2, "yesterday", "ops", "model.push", "mlp:2", {}, "", "")
    (event,) = audit_events([entry, broken])
    assert (event.source, event.kind, event.subject) == ("audit", "model.push", "mlp:1")
    assert event.at_s == 1767323045.0
    assert event.text == "model.push mlp:1 by ops"


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf", "3601"])
def test_query_numbers_out_of_range_are_refused_saying_what_is_expected(text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"window=.*expected a number .* \(0, 3600\]"):
        parse_positive("window", text, default=3600, maximum=3600)


def test_query_numbers_default_when_absent() -> None:
    assert parse_positive("window", None, default=600, maximum=3600) == 600
    assert parse_positive("window", "", default=600, maximum=3600) == 600
    assert parse_positive("window", "90.5", default=600, maximum=3600) == 90.5


# -- gateways' reports -------------------------------------------------------------------------


def gateway_stats(gateway: str, *pools: tuple[str, str, int, int, float, float]) -> GatewayStats:
    stats = GatewayStats(gateway_id=gateway, sequence=1, interval_s=10.0)
    for model, pool, requests, errors, p50, p99 in pools:
        stats.pools.add(
            model=model, pool=pool, requests=requests, errors=errors, p50_ms=p50, p99_ms=p99
        )
    return stats


def test_gateway_pools_are_charted_per_gateway_next_to_the_devices() -> None:
    history = FleetHistory()
    history.observe("a", health("a", 100, 1), T0, False)
    history.observe("a", health("a", 110, 1), T0 + 1, False)
    history.observe_gateway(
        "gw-1",
        gateway_stats("gw-1", ("mlp", "local", 40, 2, 3.0, 9.0), ("mlp", "edge", 5, 0, 20, 40)),
        T0 + 2,
    )
    history.observe_gateway("gw-1", gateway_stats("gw-1", ("mlp", "local", 10, 0, 5, 7)), T0 + 4)
    history.observe_gateway("gw-2", gateway_stats("gw-2", ("mlp", "local", 1, 1, 0, 0)), T0 + 5)
    charted = history.series(10, T0 + 9)
    assert [(s.model, s.pool, s.gateway) for s in charted] == [
        ("mlp", "edge", ""),  # the devices' own reports first
        ("mlp", "edge", "gw-1"),  # the same pool as a gateway sees it: a panel of its own
        ("mlp", "local", "gw-1"),
        ("mlp", "local", "gw-2"),
    ]
    points = {(s.pool, s.gateway): s.points[-1] for s in charted}
    local = points["local", "gw-1"]
    assert (local.requests, local.errors, local.p50_ms, local.p99_ms) == (50, 2, 4.0, 9.0)
    assert points["edge", ""].requests == 10
    failed_only = points["local", "gw-2"]
    assert (failed_only.requests, failed_only.errors, failed_only.p99_ms) == (1, 1, None)
    as_json = [series_json(s) for s in charted]
    assert [j["gateway"] for j in as_json] == [None, "gw-1", "gw-1", "gw-2"]


def test_a_gateways_latency_that_is_not_a_finite_positive_number_is_left_out() -> None:
    history = FleetHistory()
    for p50, p99 in ((float("nan"), 5.0), (2.0, float("inf")), (-1.0, 5.0)):
        history.observe_gateway("gw", gateway_stats("gw", ("m", "local", 1, 0, p50, p99)), T0)
    (point,) = history.series(10, T0).pop().points
    assert (point.requests, point.p50_ms, point.p99_ms) == (3, None, None)


def test_a_gateway_report_wakes_whoever_waits_and_old_ones_are_pruned() -> None:
    history = FleetHistory(retention_s=60)
    history.observe_gateway("gw", gateway_stats("gw", ("m", "local", 1, 0, 1, 1)), T0)
    assert history.wait_for(lambda h: bool(h.series(60, T0)), timeout_s=0)
    history.observe_gateway("gw", gateway_stats("gw", ("m", "local", 2, 0, 1, 1)), T0 + 600)
    (series,) = history.series(60, T0 + 600)
    assert sum(p.requests for p in series.points) == 2
    assert (series.model, series.pool, series.gateway) == ("m", "local", "gw")
    assert len(history._state.buckets) == 1  # the report 10 minutes ago is gone


def test_gateway_reports_are_decoded_from_their_own_topic_only() -> None:
    stats = gateway_stats("gw-1", ("mlp", "local", 1, 0, 1.0, 2.0))
    assert decode_gateway_stats("ef/v1/gw/gw-1/stats", stats.SerializeToString()) == (
        "gw-1",
        stats,
    )
    with pytest.raises(InvalidInputError, match=r"expected ef/v1/gw/\{gateway\}/stats"):
        decode_gateway_stats("ef/v1/dev/gw-1/health", stats.SerializeToString())
    with pytest.raises(InvalidInputError, match="3 bytes that are not a GatewayStats message"):
        decode_gateway_stats("ef/v1/gw/gw-1/stats", b"\xff\xff\xff")
    with pytest.raises(InvalidInputError, match="name gateway 'gw-1': a gateway reports under"):
        decode_gateway_stats("ef/v1/gw/gw-2/stats", stats.SerializeToString())
    flood = gateway_stats("gw-1", *[(f"m{i}", "local", 1, 0, 1.0, 1.0) for i in range(1025)])
    assert len(flood.pools) > MAX_GATEWAY_SERIES
    with pytest.raises(InvalidInputError, match="carry 1025 models and pools, more than the"):
        decode_gateway_stats("ef/v1/gw/gw-1/stats", flood.SerializeToString())
