"""Rollouts over simulated devices (real MQTT, no models): error-rate gates and a controller
killed with SIGKILL in the middle of a stage."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefabric import topics
from edgefabric.desired import load_public_key
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress
from edgefabric.samples import mlp_model
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.sim_device import Behaviour
from model_store.simulate import FleetSimulator, SimulationSettings
from model_store.store import ModelStore
from tests.cli import run_edgefabric
from tests.mqtt_broker import ConnectMqtt

pytestmark = pytest.mark.integration

DEVICES = 20
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim-store")
    home = root / "home"
    run_edgefabric(home, "keys", "init")
    for version, hidden in ((1, 32), (2, 48)):
        path = root / f"mlp{version}.onnx"
        path.write_bytes(mlp_model(hidden=hidden).SerializeToString())
        run_edgefabric(home, "model", "push", str(path), "--name", "mlp")
    return home


class SimFleet:
    def __init__(self, home: Path, broker: PrivateBroker) -> None:
        self.home, self.broker = home, broker
        self.progress: queue.Queue[dict[str, Any]] = queue.Queue()

    def learn_devices(self) -> None:
        """Run the store in-process until it has seen (and saved) every simulated device."""
        store = ModelStore(StoreHome(self.home))
        options = StoreServerOptions(broker=BrokerAddress.parse(self.broker.url), client_id="s1")
        server = StoreServer(store, options)
        server.start()
        try:
            everyone = lambda views: sum(v.online for v in views.values()) >= DEVICES  # noqa: E731
            assert server.fleet.wait_for(everyone, TIMEOUT_S)
        finally:
            server.stop()
            store.close()

    def serve(self) -> subprocess.Popen[str]:
        env = {**os.environ, "EDGEFABRIC_HOME": str(self.home)}
        command = [sys.executable, "-m", "edgefabric.cli", "store", "serve"]
        process = subprocess.Popen(
            [*command, "--broker", self.broker.url], env=env, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        assert "serving the repository" in process.stdout.readline()
        return process

    def wait_phase(self, rollout_id: str, *phases: str) -> dict[str, Any]:
        while True:
            summary = self.progress.get(timeout=TIMEOUT_S)
            if summary["id"] == rollout_id and summary["phase"] in phases:
                return summary


def _stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    process.wait(timeout=30)
    assert process.stdout is not None
    process.stdout.close()


@pytest.fixture
def sim(
    template: Path, mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, tmp_path: Path
) -> Iterator[SimFleet]:
    home = Path(shutil.copytree(template, tmp_path / "home"))
    running = SimFleet(home, mqtt_broker)
    watcher = connect_mqtt(mqtt_broker, "sim-watcher")
    watcher.subscribe(
        topics.ALL_ROLLOUTS, lambda message: running.progress.put(json.loads(message.payload))
    )
    settings = SimulationSettings(
        broker=mqtt_broker.url,
        devices=DEVICES,
        labels={"site": "plant-{i%2}"},
        serving={"mlp": 1},
        behaviour=Behaviour(error_rates={("mlp", 2): 0.3}, requests_per_s=50),
        health_interval_s=0.2,
    )
    public_key = load_public_key((home / "controller.pub").read_bytes())
    with FleetSimulator(settings, public_key=public_key):
        running.learn_devices()
        yield running


def test_an_error_rate_regression_rolls_the_fleet_back(sim: SimFleet) -> None:
    store = sim.serve()
    try:
        out = run_edgefabric(
            sim.home, "rollout", "start", "mlp:2", "--stages", "25%,100%", "--bake", "2s",
            "--gate", "error_rate<0.05",
        )  # fmt: skip
        rollout_id = out.split()[1].rstrip(":")
        summary = sim.wait_phase(rollout_id, "ROLLED_BACK", "COMPLETED")
        assert summary["phase"] == "ROLLED_BACK", summary
        assert summary["stage"] == 1  # stopped in the first stage: 5 of 20 devices touched
        assert "error rate" in run_edgefabric(sim.home, "rollout", "status", rollout_id)
    finally:
        _stop(store)


def test_a_controller_killed_mid_stage_finishes_the_rollout_after_restart(sim: SimFleet) -> None:
    store = sim.serve()
    out = run_edgefabric(
        sim.home, "rollout", "start", "mlp:2", "--selector", "site=plant-0",
        "--stages", "50%,100%", "--bake", "1s", "--no-canary",
    )  # fmt: skip
    rollout_id = out.split()[1].rstrip(":")
    sim.wait_phase(rollout_id, "BAKING")
    _stop(store, signal.SIGKILL)  # no goodbye, no cleanup
    store = sim.serve()
    try:
        summary = sim.wait_phase(rollout_id, "COMPLETED", "ROLLED_BACK")
        assert summary["phase"] == "COMPLETED", summary
        assert summary["devices"]["INSTALLED"] == DEVICES // 2
    finally:
        _stop(store)
