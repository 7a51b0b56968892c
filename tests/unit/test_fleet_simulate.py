"""The simulated device and the simulator's knobs, without a broker."""

from __future__ import annotations

import argparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefabric.desired import seal_desired
from edgefabric.wire.v1.fleet_pb2 import DesiredState, DeviceStatus, Event, Health, ModelRef
from model_store.sim_device import Behaviour, SimulatedDevice
from model_store.simulate import (
    device_ids,
    expand_labels,
    failing_devices,
    register_simulate,
    settings_from_args,
)

pytestmark = pytest.mark.unit

KEY = Ed25519PrivateKey.generate()


def desired(sequence: int, *models: tuple[str, int], device_id: str = "d1") -> bytes:
    state = DesiredState(
        device_id=device_id,
        sequence=sequence,
        models=[ModelRef(name=n, version=v) for n, v in models],
    )
    return seal_desired(state, KEY)


def make_device(**options: object) -> SimulatedDevice:
    values: dict[str, object] = {
        "labels": {"site": "a"},
        "serving": {"mlp": 1},
        "behaviour": Behaviour(requests_per_s=10.0),
        "public_key": KEY.public_key(),
    }
    values.update(options)
    return SimulatedDevice("d1", **values)  # type: ignore[arg-type]


def kinds(payloads: list[bytes]) -> list[str]:
    return [Event.Kind.Name(Event.FromString(p).kind) for p in payloads]


def test_install_reports_the_agents_events_in_order() -> None:
    device = make_device()
    events = device.on_desired(desired(1, ("mlp", 2)), now_ms=1000)
    assert kinds(events) == [
        "DESIRED_RECEIVED",
        "DOWNLOAD_STARTED",
        "VERIFIED",
        "SELF_TEST_PASSED",
        "SWITCHED",
        "RECONCILED",
    ]
    decoded = [Event.FromString(p) for p in events]
    assert {e.sequence for e in decoded} == {1}
    assert [e.event_id for e in decoded] == [1, 2, 3, 4, 5, 6]
    assert device.active == {"mlp": 2}
    assert device.applied_sequence == 1


def test_rollback_to_a_kept_version_skips_the_download() -> None:
    device = make_device()
    device.on_desired(desired(1, ("mlp", 2)), now_ms=1000)
    events = device.on_desired(desired(2, ("mlp", 1)), now_ms=2000)
    assert kinds(events) == ["DESIRED_RECEIVED", "SELF_TEST_PASSED", "SWITCHED", "RECONCILED"]


def test_unsigned_wrong_device_and_replayed_states_are_rejected() -> None:
    device = make_device()
    forged = seal_desired(
        DesiredState(device_id="d1", sequence=1, models=[ModelRef(name="mlp", version=9)]),
        Ed25519PrivateKey.generate(),
    )
    for payload in (forged, desired(1, ("mlp", 9), device_id="d2")):
        assert kinds(device.on_desired(payload, now_ms=1)) == ["REJECTED"]
    device.on_desired(desired(3, ("mlp", 2)), now_ms=2)
    replay = device.on_desired(desired(3, ("mlp", 9)), now_ms=3)
    assert kinds(replay) == ["REJECTED"]
    assert "not newer" in Event.FromString(replay[0]).message
    assert device.active == {"mlp": 2}


def test_a_failing_version_is_refused_and_the_old_one_keeps_serving() -> None:
    device = make_device(fails=frozenset({("mlp", 2)}))
    events = device.on_desired(desired(1, ("mlp", 2)), now_ms=1000)
    assert kinds(events) == [
        "DESIRED_RECEIVED",
        "DOWNLOAD_STARTED",
        "VERIFIED",
        "INSTALL_FAILED",
        "ROLLED_BACK",
        "RECONCILED",
    ]
    assert Event.FromString(events[4]).version == 1
    again = device.on_desired(desired(2, ("mlp", 2)), now_ms=2000)
    assert kinds(again) == ["DESIRED_RECEIVED", "INSTALL_FAILED", "RECONCILED"]
    report = Health.FromString(device.health(3000))
    assert {(s.version, s.state, s.active) for s in report.slots} == {
        (1, "READY", True),
        (2, "FAILED", False),
    }
    failed = next(m for m in report.models if m.version == 2)
    assert not failed.self_test_passed


def test_health_counts_requests_errors_and_latency_per_version() -> None:
    behaviour = Behaviour(
        error_rates={("mlp", 2): 0.2}, p99_ms={("mlp", 2): 55.0}, requests_per_s=10.0
    )
    device = make_device(behaviour=behaviour, now_ms=0)
    device.on_desired(desired(1, ("mlp", 2)), now_ms=10_000)  # 100 requests on version 1
    report = Health.FromString(device.health(20_000))  # and 100 on version 2
    by_version = {m.version: m for m in report.models}
    assert (by_version[1].requests, by_version[1].errors) == (100, 0)
    assert 18.0 <= by_version[1].p99_ms <= 22.0
    assert (by_version[2].requests, by_version[2].errors, by_version[2].p99_ms) == (100, 20, 55.0)
    assert by_version[2].self_test_passed
    assert report.applied_sequence == 1


def test_only_keep_previous_versions_stay_on_the_device() -> None:
    device = make_device(behaviour=Behaviour(keep_previous=1))
    for sequence, version in enumerate((2, 3, 4), start=1):
        device.on_desired(desired(sequence, ("mlp", version)), now_ms=sequence)
    report = Health.FromString(device.health(10))
    assert {(s.version, s.state) for s in report.slots} == {(3, "UNLOADED"), (4, "READY")}


def test_birth_and_will_statuses() -> None:
    device = make_device()
    birth = DeviceStatus.FromString(device.status(online=True, now_ms=5))
    assert (birth.online, dict(birth.labels), birth.at_ms) == (True, {"site": "a"}, 5)
    will = DeviceStatus.FromString(device.will())
    assert (will.online, will.device_id, will.at_ms) == (False, "d1", 0)


# -- the simulator's knobs ---------------------------------------------------------------------


def test_device_ids_and_label_templates() -> None:
    assert device_ids("sim", 3) == ["sim-0000", "sim-0001", "sim-0002"]
    assert device_ids("x", 12345)[-1] == "x-12344"
    labels = {"site": "plant-{i%10}", "rack": "r{i//4}", "n": "{i}", "class": "camera"}
    assert expand_labels(labels, 13) == {
        "site": "plant-3",
        "rack": "r3",
        "n": "13",
        "class": "camera",
    }
    with pytest.raises(ValueError, match="divides by zero"):
        expand_labels({"x": "{i%0}"}, 1)


def test_failing_devices_are_an_exact_stable_share() -> None:
    ids = device_ids("sim", 200)
    chosen = failing_devices(ids, ("mlp", 2), 0.05, "seed")
    assert len(chosen) == 10
    assert chosen == failing_devices(ids, ("mlp", 2), 0.05, "seed")
    assert chosen != failing_devices(ids, ("mlp", 3), 0.05, "seed")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_simulate(parser.add_subparsers())
    return parser.parse_args(["simulate", "--broker", "mqtt://127.0.0.1:1883", *argv])


def test_arguments_become_settings() -> None:
    settings = settings_from_args(
        parse(
            "--devices", "50", "--labels", "site=plant-{i%10},class=cam", "--labels", "tier=b",
            "--serving", "mlp:1", "--fail-version", "mlp:2@10%", "--error-rate", "mlp:2=0.2",
            "--p99-ms", "mlp:2=45", "--health-interval-s", "2", "--no-health-after-reconcile",
        )
    )  # fmt: skip
    assert settings.devices == 50
    assert settings.labels == {"site": "plant-{i%10}", "class": "cam", "tier": "b"}
    assert settings.serving == {"mlp": 1}
    assert settings.failures == {("mlp", 2): 0.1}
    assert settings.behaviour.error_rates == {("mlp", 2): 0.2}
    assert settings.behaviour.p99_ms == {("mlp", 2): 45.0}
    assert (settings.health_interval_s, settings.health_after_reconcile) == (2.0, False)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (("--fail-version", "mlp:2"), "NAME:VERSION@FRACTION"),
        (("--fail-version", "mlp:2@1.5"), r"must be in \[0, 1\]"),
        (("--error-rate", "mlp=0.1"), "NAME:VERSION"),
        (("--labels", "novalue"), "KEY=VALUE"),
        (("--devices", "0"), "1 or more"),
    ],
)
def test_bad_arguments_say_what_was_expected(argv: tuple[str, ...], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        settings_from_args(parse(*argv))
