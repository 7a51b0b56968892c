"""Folding device reports into records: decoding, ordering rules, views, the device table."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefabric import topics
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Event, Health
from model_store.fleet_db import FleetDatabase
from model_store.fleet_records import DeviceRecord, decode, selects

pytestmark = pytest.mark.unit


def status(online: bool = True, at_ms: int = 0, **labels: str) -> DeviceStatus:
    return DeviceStatus(device_id="d1", online=online, at_ms=at_ms, labels=labels)


def event(kind: int, at_ms: int, model: str = "", version: int = 0, **extra: int) -> Event:
    return Event(device_id="d1", kind=kind, at_ms=at_ms, model=model, version=version, **extra)  # type: ignore[arg-type]


def health(at_ms: int, *slots: tuple[str, int, str, bool], models: tuple = ()) -> Health:
    report = Health(device_id="d1", at_ms=at_ms)
    for model, version, state, active in slots:
        report.slots.add(model=model, version=version, state=state, active=active)
    for model, version, requests, errors, p99, passed in models:
        report.models.add(
            model=model,
            version=version,
            requests=requests,
            errors=errors,
            p99_ms=p99,
            self_test_passed=passed,
        )
    return report


def live(record: DeviceRecord, report: object, at_s: float = 100.0) -> None:
    record.apply(report, received_s=at_s, retained=False)  # type: ignore[arg-type]


# -- decoding ------------------------------------------------------------------------------------


def test_decode_returns_the_device_and_typed_report() -> None:
    device_id, report = decode(topics.device_status("d1"), status().SerializeToString())
    assert device_id == "d1"
    assert isinstance(report, DeviceStatus)
    assert report.online


@pytest.mark.parametrize(
    ("topic", "payload", "complaint"),
    [
        ("ef/v1/dev/d1/health", b"\xff\xff\xff", "not a Health"),
        ("ef/v1/dev/d1/status", DeviceStatus(device_id="d2").SerializeToString(), "names device"),
        ("ef/v1/dev/d1/desired", b"x", "not a device status"),
        ("ef/v1/dev/d1/events", b"", "empty payload"),
        ("other/d1/status", b"x", "not a device status"),
    ],
)
def test_decode_rejects_garbage_saying_why(topic: str, payload: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        decode(topic, payload)


def test_selector_needs_every_label() -> None:
    assert selects({}, {"site": "a"})
    assert selects({"site": "a"}, {"site": "a", "class": "cam"})
    assert not selects({"site": "a", "class": "cam"}, {"site": "a"})


# -- status and last seen --------------------------------------------------------------------------


def test_live_birth_sets_online_labels_and_last_seen() -> None:
    record = DeviceRecord("d1")
    live(record, status(site="plant-7"), at_s=50.0)
    assert (record.online, record.labels, record.last_seen_s) == (True, {"site": "plant-7"}, 50.0)


def test_last_will_marks_offline_and_keeps_labels_and_last_seen() -> None:
    record = DeviceRecord("d1")
    live(record, status(site="plant-7"), at_s=50.0)
    live(record, DeviceStatus(device_id="d1", online=False), at_s=90.0)
    assert (record.online, record.labels, record.last_seen_s) == (False, {"site": "plant-7"}, 50.0)


def test_retained_status_does_not_pretend_the_device_was_just_heard() -> None:
    record = DeviceRecord("d1", last_seen_s=40.0)
    record.apply(status(at_ms=10_000), received_s=500.0, retained=True)
    assert record.online
    assert record.last_seen_s == 40.0
    fresh = DeviceRecord("d2")
    fresh.apply(status(at_ms=10_000), received_s=500.0, retained=True)
    assert fresh.last_seen_s == 10.0  # nothing better known: the status's own time


def test_live_health_means_online() -> None:
    record = DeviceRecord("d1")
    live(record, DeviceStatus(device_id="d1", online=False))
    live(record, health(1000), at_s=120.0)
    assert (record.online, record.last_seen_s) == (True, 120.0)


# -- health and events -----------------------------------------------------------------------------


def test_health_sets_active_previous_failed_and_metrics() -> None:
    record = DeviceRecord("d1")
    live(
        record,
        health(
            1000,
            ("mlp", 1, "UNLOADED", False),
            ("mlp", 2, "READY", True),
            ("mlp", 3, "FAILED", False),
            models=(("mlp", 2, 100, 5, 12.5, True), ("mlp", 3, 0, 0, 0.0, False)),
        ),
    )
    view = record.view()
    assert view.active == {"mlp": 2}
    assert record.previous == {"mlp": 1}
    assert view.failed == {"mlp": frozenset({3})}
    assert (view.requests[("mlp", 2)], view.errors[("mlp", 2)]) == (100, 5)
    assert view.p99_ms[("mlp", 2)] == 12.5
    assert view.self_test == {("mlp", 2): True, ("mlp", 3): False}


def test_health_false_self_test_on_a_good_slot_means_never_ran() -> None:
    record = DeviceRecord("d1")
    live(record, health(1000, ("mlp", 1, "READY", True), models=(("mlp", 1, 3, 0, 1.0, False),)))
    assert record.view().self_test == {}


def test_switch_event_newer_than_health_wins_until_a_newer_health() -> None:
    record = DeviceRecord("d1")
    live(record, health(1000, ("mlp", 1, "READY", True)))
    live(record, event(Event.SWITCHED, 2000, "mlp", 2))
    live(record, health(1500, ("mlp", 1, "READY", True)))  # sent before the switch
    assert record.view().active == {"mlp": 2}
    assert record.previous == {"mlp": 1}
    assert record.view().self_test == {("mlp", 2): True}
    live(record, health(3000, ("mlp", 1, "READY", True), ("mlp", 2, "FAILED", False)))
    assert record.view().active == {"mlp": 1}  # it rolled back since


def test_older_health_than_the_last_one_is_ignored() -> None:
    record = DeviceRecord("d1")
    live(record, health(2000, ("mlp", 2, "READY", True)))
    live(record, health(1000, ("mlp", 1, "READY", True)))
    assert record.view().active == {"mlp": 2}


def test_install_failed_is_sticky_and_fails_the_self_test() -> None:
    record = DeviceRecord("d1")
    live(record, event(Event.INSTALL_FAILED, 1000, "mlp", 2))
    live(record, health(2000, ("mlp", 1, "READY", True)))
    view = record.view()
    assert view.failed == {"mlp": frozenset({2})}
    assert view.self_test == {("mlp", 2): False}


def test_reconciled_sequence_and_lost_events_are_counted() -> None:
    record = DeviceRecord("d1")
    assert (
        record.apply(event(Event.DESIRED_RECEIVED, 1, event_id=1), received_s=1, retained=False)
        == 0
    )
    missed = record.apply(
        event(Event.RECONCILED, 2, sequence=4, event_id=5), received_s=2, retained=False
    )
    assert missed == 3
    replayed = record.apply(
        event(Event.SWITCHED, 1, "m", 1, event_id=2), received_s=3, retained=False
    )
    assert replayed == 0
    row = record.row()
    assert (row.reconciled_sequence, row.missed_events, row.last_event) == (4, 3, "SWITCHED m:1")


def test_health_applied_sequence_stands_in_for_a_lost_reconciled_event() -> None:
    record = DeviceRecord("d1")
    report = health(1000, ("mlp", 2, "READY", True))
    report.applied_sequence = 7
    live(record, report)
    assert record.row().reconciled_sequence == 7


def test_row_lists_models_with_health_summary() -> None:
    record = DeviceRecord("d1")
    live(record, status(site="a"))
    live(
        record,
        health(
            1000,
            ("mlp", 1, "UNLOADED", False),
            ("mlp", 2, "READY", True),
            models=(("mlp", 2, 200, 10, 30.0, True),),
        ),
    )
    (model,) = record.row().models
    assert (model.model, model.active, model.previous, model.requests) == ("mlp", 2, 1, 200)
    assert model.error_rate == 0.05
    assert (model.p99_ms, model.self_test, model.failed) == (30.0, True, ())


# -- the device table ------------------------------------------------------------------------------


def filled_record() -> DeviceRecord:
    record = DeviceRecord("d1")
    live(record, status(site="a"))
    live(record, event(Event.INSTALL_FAILED, 500, "mlp", 3, event_id=4))
    live(
        record,
        health(
            1000,
            ("mlp", 1, "UNLOADED", False),
            ("mlp", 2, "READY", True),
            models=(("mlp", 2, 200, 10, 30.0, True),),
        ),
    )
    return record


def test_record_survives_json() -> None:
    record = filled_record()
    again = DeviceRecord.from_json("d1", record.to_json())
    assert again == record
    assert again.view() == record.view()


def test_unreadable_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="device 'd1': unreadable record"):
        DeviceRecord.from_json("d1", '{"format": 1}')


def test_table_saves_loads_and_upserts(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    record = filled_record()
    db = FleetDatabase(path)
    db.save([("d1", record.online, record.last_seen_s, record.to_json())])
    record.online = False
    db.save([("d1", record.online, record.last_seen_s, record.to_json())])
    db.close()
    readonly = FleetDatabase(path, readonly=True)
    assert readonly.load() == {"d1": record}
    readonly.close()


def test_table_skips_unreadable_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = FleetDatabase(tmp_path / "fleet.sqlite3")
    db.save([("bad", True, 1.0, "not json"), ("d1", True, 1.0, filled_record().to_json())])
    assert list(db.load()) == ["d1"]
    assert "bad" in caplog.text
    db.close()
