"""The fleet view against simulated devices on a real mosquitto."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefabric import topics
from edgefabric.desired import seal_desired
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import MqttClient
from edgefabric.wire.v1.fleet_pb2 import DesiredState, DeviceStatus, ModelRef
from model_store.fleet_view import FleetView, read_rows
from model_store.sim_device import Behaviour
from model_store.simulate import FleetSimulator, SimulationSettings
from tests.mqtt_broker import ConnectMqtt

pytestmark = pytest.mark.integration

WAIT_S = 10.0
KEY = Ed25519PrivateKey.generate()


def assign(controller: MqttClient, device_id: str, sequence: int, version: int) -> None:
    state = DesiredState(
        device_id=device_id, sequence=sequence, models=[ModelRef(name="mlp", version=version)]
    )
    controller.publish(topics.device_desired(device_id), seal_desired(state, KEY), retain=True)


def fake_clock_ms() -> Callable[[], int]:
    """Every reading is one second later: traffic accrues without waiting."""
    return itertools.count(1_000_000, 1000).__next__


@pytest.fixture
def simulate(mqtt_broker: PrivateBroker) -> Iterator[Callable[..., FleetSimulator]]:
    """``simulate(**settings)``: three signed-state devices, one failing mlp:2; stopped after."""
    started: list[FleetSimulator] = []

    def start(**overrides: Any) -> FleetSimulator:
        values: dict[str, Any] = {
            "broker": mqtt_broker.url,
            "devices": 3,
            "prefix": "cam",
            "labels": {"site": "plant-{i%2}"},
            "serving": {"mlp": 1},
            "failures": {("mlp", 2): 1 / 3},
            "behaviour": Behaviour(error_rates={("mlp", 2): 0.25}, requests_per_s=10.0),
            "health_interval_s": 3600.0,  # reports only after reconciles unless asked
        }
        values.update(overrides)
        simulator = FleetSimulator(
            SimulationSettings(**values), public_key=KEY.public_key(), clock_ms=fake_clock_ms()
        )
        started.append(simulator)
        simulator.start()
        return simulator

    yield start
    for simulator in started:
        simulator.stop()


def test_reports_of_simulated_devices_become_device_views(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, simulate: Callable[..., FleetSimulator]
) -> None:
    simulator = simulate()
    controller = connect_mqtt(mqtt_broker)
    with FleetView(controller) as fleet:
        assert fleet.wait_for(lambda views: len(views) == 3, WAIT_S)
        assert {v.labels["site"] for v in fleet.devices().values()} == {"plant-0", "plant-1"}
        for device_id in simulator.device_ids:
            assign(controller, device_id, sequence=1, version=2)
        assert fleet.wait_for(lambda _: set(fleet.reconciled_sequences().values()) == {1}, WAIT_S)
        views = fleet.devices()

    failed = {d for d, v in views.items() if v.failed.get("mlp")}
    assert len(failed) == 1
    (bad,) = failed
    assert views[bad].active == {"mlp": 1}
    assert views[bad].failed == {"mlp": frozenset({2})}
    assert views[bad].self_test[("mlp", 2)] is False
    for device_id in set(views) - failed:
        view = views[device_id]
        assert view.online
        assert view.active == {"mlp": 2}
        assert view.self_test[("mlp", 2)] is True
    rows = fleet.rows({"site": "plant-0"})
    assert [r.device_id for r in rows] == ["cam-0000", "cam-0002"]
    for row in rows:
        (model,) = row.models
        expected = (1, None, (2,)) if row.device_id == bad else (2, 1, ())
        assert (model.active, model.previous, model.failed) == expected


def test_error_rate_and_latency_arrive_with_health_reports(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, simulate: Callable[..., FleetSimulator]
) -> None:
    simulator = simulate(health_interval_s=0.05)
    good = next(d for d in simulator.device_ids if not simulator.device(d).fails)
    controller = connect_mqtt(mqtt_broker)
    with FleetView(controller) as fleet:
        assign(controller, good, sequence=1, version=2)
        assert fleet.wait_for(
            lambda views: good in views and views[good].requests.get(("mlp", 2), 0) >= 100,
            WAIT_S,
        )
        view = fleet.devices()[good]
    requests, errors = view.requests[("mlp", 2)], view.errors[("mlp", 2)]
    assert errors == int(requests * 0.25)
    assert 18.0 <= view.p99_ms[("mlp", 2)] <= 22.0


def test_garbage_is_dropped_and_counted(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, caplog: pytest.LogCaptureFixture
) -> None:
    controller = connect_mqtt(mqtt_broker)
    rogue = connect_mqtt(mqtt_broker)
    with FleetView(controller) as fleet:
        rogue.publish(topics.device_health("d1"), b"\xff\xfe garbage", wait=True)
        impostor = DeviceStatus(device_id="d2", online=True).SerializeToString()
        rogue.publish(topics.device_status("d1"), impostor, wait=True)
        genuine = DeviceStatus(device_id="d3", online=True).SerializeToString()
        rogue.publish(topics.device_status("d3"), genuine, wait=True)
        assert fleet.wait_for(lambda views: "d3" in views, WAIT_S)
        assert list(fleet.devices()) == ["d3"]
        assert fleet.dropped == 2
    assert "names device 'd2', expected 'd1'" in caplog.text


def test_killed_simulator_goes_offline_through_its_last_will(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, tmp_path: Path
) -> None:
    controller = connect_mqtt(mqtt_broker)
    command = [
        sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", "fleet", "simulate",
        "--broker", mqtt_broker.url, "--devices", "2", "--prefix", "doomed",
    ]  # fmt: skip
    with FleetView(controller, tmp_path / "fleet.sqlite3") as fleet:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith("simulating 2 devices")
            assert fleet.wait_for(
                lambda views: len(views) == 2 and all(v.online for v in views.values()), WAIT_S
            )
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        assert fleet.wait_for(lambda views: not any(v.online for v in views.values()), WAIT_S)
        seen = {v.device_id: v.last_seen_s for v in fleet.devices().values()}
    assert all(seen.values())  # last seen stays when they were alive


def test_device_table_survives_a_controller_restart(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, tmp_path: Path
) -> None:
    table = tmp_path / "home" / "fleet.sqlite3"
    settings = SimulationSettings(
        broker=mqtt_broker.url, devices=2, prefix="kept", labels={"site": "a"}, serving={"mlp": 1}
    )
    simulator = FleetSimulator(settings, public_key=None)
    controller = connect_mqtt(mqtt_broker)
    with FleetView(controller, table) as fleet:
        simulator.start()
        try:
            for device_id in simulator.device_ids:
                state = DesiredState(
                    device_id=device_id, sequence=1, models=[ModelRef(name="mlp", version=4)]
                )
                controller.publish(topics.device_desired(device_id), seal_desired(state, KEY))
            assert fleet.wait_for(
                lambda _: set(fleet.reconciled_sequences().values()) == {1}, WAIT_S
            )
        finally:
            simulator.stop()  # the devices say goodbye while the controller still listens
        assert fleet.wait_for(lambda views: not any(v.online for v in views.values()), WAIT_S)

    rows = read_rows(table, {"site": "a"})
    assert [(r.device_id, r.online, r.models[0].active) for r in rows] == [
        ("kept-0000", False, 4),
        ("kept-0001", False, 4),
    ]
    status = subprocess.run(
        [sys.executable, "-m", "edgefabric.cli", "fleet", "status", "--home", str(table.parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "kept-0001" in status.stdout
    assert "2 devices, 0 online" in status.stdout

    again = FleetView(connect_mqtt(mqtt_broker), table)
    again.start()  # health is not retained: versions can only come from the table
    views = again.devices()
    again.stop()
    assert {d: v.active for d, v in views.items()} == {
        "kept-0000": {"mlp": 4},
        "kept-0001": {"mlp": 4},
    }
