"""Staged rollouts with real agents on a real mosquitto, driven by the store's controller.

The store's serving side (distribution, fleet view, rollout controller) runs in-process so the
test can wait on its fleet view; the agents are ``edgefabric agent run`` processes; ops use the
``edgefabric rollout`` commands. Progress is followed on the retained ``ef/v1/rollouts/{id}``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from edgefabric import topics
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress
from edgefabric.samples import mlp_model, noisy_mlp_model
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.store import ModelStore
from tests.cli import run_edgefabric
from tests.mqtt_broker import ConnectMqtt

pytestmark = pytest.mark.integration

DEVICES = ("cam-a", "cam-b", "cam-c")
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp:1 and mlp:2 (good), mlp:3 (fails its self-test on any device)."""
    root = tmp_path_factory.mktemp("rollout-store")
    home = root / "home"
    golden = root / "golden.npz"
    np.savez(golden, x=np.ones((2, 16), np.float32))
    run_edgefabric(home, "keys", "init")
    for version, model in ((1, mlp_model()), (2, mlp_model(hidden=48)), (3, noisy_mlp_model())):
        path = root / f"mlp{version}.onnx"
        path.write_bytes(model.SerializeToString())
        run_edgefabric(home, "model", "push", str(path), "--name", "mlp", "--golden", str(golden))
    return home


class Fleet:
    """An in-process store server, agent processes, and the retained rollout progress."""

    def __init__(self, home: Path, broker: PrivateBroker, work: Path) -> None:
        self.home, self.broker, self.work = home, broker, work
        self.server: StoreServer | None = None
        self.store: ModelStore | None = None
        self.agents: dict[str, tuple[subprocess.Popen[str], str]] = {}
        self.progress: queue.Queue[dict[str, Any]] = queue.Queue()

    def serve(self) -> StoreServer:
        self.store = ModelStore(StoreHome(self.home))
        options = StoreServerOptions(
            broker=BrokerAddress.parse(self.broker.url),
            client_id="store",
            controller_interval_s=0.2,
        )
        self.server = StoreServer(self.store, options)
        self.server.start()
        return self.server

    def stop_serving(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def start_agent(self, device: str) -> None:
        command = [
            sys.executable, "-m", "edgefabric.cli", "agent", "run", "--device-id", device,
            "--broker", self.broker.url, "--data-dir", str(self.work / device),
            "--trust-root", str(self.home / "tuf" / "metadata" / "root.json"),
            "--desired-key", str(self.home / "controller.pub"), "--grpc-port", "0",
            "--label", "site=plant-7", "--health-interval-s", "0.2",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving on" in line, line
        self.agents[device] = (process, line.rsplit(" ", 1)[1].strip())

    def stop_agents(self) -> None:
        for process, _ in self.agents.values():
            process.terminate()
            process.wait(timeout=30)
            assert process.stdout is not None
            process.stdout.close()
        self.agents.clear()

    def wait_for_devices(self, count: int) -> None:
        assert self.server is not None
        online = lambda views: sum(v.online for v in views.values()) >= count  # noqa: E731
        assert self.server.fleet.wait_for(online, TIMEOUT_S)
        self.server.fleet.flush()  # the CLI reads the device table

    def rollout(self, *args: str) -> str:
        out = run_edgefabric(self.home, "rollout", "start", *args)
        return out.split()[1].rstrip(":")

    def wait_phase(self, rollout_id: str, *phases: str) -> dict[str, Any]:
        while True:
            summary = self.progress.get(timeout=TIMEOUT_S)
            if summary["id"] == rollout_id and summary["phase"] in phases:
                return summary

    def served_version(self, device: str) -> str:
        with grpcclient.InferenceServerClient(self.agents[device][1]) as client:
            tensor = grpcclient.InferInput("x", [1, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
            return str(client.infer("mlp", [tensor]).get_response().model_version)


@pytest.fixture
def fleet(
    store_template: Path, mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, tmp_path: Path
) -> Iterator[Fleet]:
    home = Path(shutil.copytree(store_template, tmp_path / "home"))
    running = Fleet(home, mqtt_broker, tmp_path)
    watcher = connect_mqtt(mqtt_broker, "rollout-watcher")
    watcher.subscribe(
        topics.ALL_ROLLOUTS,
        lambda message: running.progress.put(json.loads(message.payload)),
    )
    running.serve()
    for device in DEVICES:
        running.start_agent(device)
    running.wait_for_devices(len(DEVICES))
    for device in DEVICES:
        run_edgefabric(home, "fleet", "assign", device, "mlp:1", "--broker", mqtt_broker.url)
    assert running.server is not None
    on_v1 = lambda views: all(v.active.get("mlp") == 1 for v in views.values())  # noqa: E731
    assert running.server.fleet.wait_for(on_v1, TIMEOUT_S)
    yield running
    running.stop_agents()
    running.stop_serving()


def test_a_staged_rollout_reaches_every_device(fleet: Fleet) -> None:
    rollout_id = fleet.rollout(
        "mlp:2", "--selector", "site=plant-7", "--stages", "34%,67%,100%", "--gate", "selftest"
    )
    summary = fleet.wait_phase(rollout_id, "COMPLETED", "ROLLED_BACK")
    assert summary["phase"] == "COMPLETED", summary
    assert summary["devices"].get("INSTALLED") == len(DEVICES)
    assert {fleet.served_version(d) for d in DEVICES} == {"2"}
    status = run_edgefabric(fleet.home, "rollout", "status", rollout_id)
    assert "COMPLETED" in status
    assert "stage 3 (100%) [" in status


def test_a_model_failing_its_self_test_rolls_the_fleet_back(fleet: Fleet) -> None:
    rollout_id = fleet.rollout("mlp:3", "--stages", "34%,100%", "--gate", "selftest")
    summary = fleet.wait_phase(rollout_id, "ROLLED_BACK", "COMPLETED")
    assert summary["phase"] == "ROLLED_BACK", summary
    assert {fleet.served_version(d) for d in DEVICES} == {"1"}
    assert "ROLLED_BACK" in run_edgefabric(fleet.home, "rollout", "list")


def test_overlapping_rollouts_of_one_model_are_refused(fleet: Fleet) -> None:
    fleet.rollout("mlp:2", "--stages", "34%,100%", "--bake", "10m")
    env = {**os.environ, "EDGEFABRIC_HOME": str(fleet.home)}
    done = subprocess.run(
        [sys.executable, "-m", "edgefabric.cli", "rollout", "start", "mlp:3"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "is already rolling out mlp" in done.stderr


def test_the_controller_resumes_a_rollout_after_a_restart(fleet: Fleet) -> None:
    rollout_id = fleet.rollout("mlp:2", "--stages", "34%,100%", "--bake", "2s")
    fleet.wait_phase(rollout_id, "BAKING")
    fleet.stop_serving()  # the controller goes away mid-stage
    fleet.serve()
    summary = fleet.wait_phase(rollout_id, "COMPLETED", "ROLLED_BACK")
    assert summary["phase"] == "COMPLETED", summary
    assert {fleet.served_version(d) for d in DEVICES} == {"2"}


def test_operators_can_pause_and_roll_back(fleet: Fleet) -> None:
    rollout_id = fleet.rollout("mlp:2", "--stages", "34%,100%", "--bake", "10m")
    fleet.wait_phase(rollout_id, "BAKING")
    assert "PAUSED" in run_edgefabric(fleet.home, "rollout", "pause", rollout_id)
    fleet.wait_phase(rollout_id, "PAUSED")
    run_edgefabric(fleet.home, "rollout", "resume", rollout_id)
    run_edgefabric(fleet.home, "rollout", "rollback", rollout_id)
    fleet.wait_phase(rollout_id, "ROLLED_BACK")
    assert {fleet.served_version(d) for d in DEVICES} == {"1"}


def test_an_offline_device_catches_up_when_it_returns(fleet: Fleet) -> None:
    process, _ = fleet.agents.pop("cam-c")
    process.terminate()  # a clean stop publishes the offline status
    process.wait(timeout=30)
    assert process.stdout is not None
    process.stdout.close()
    server = fleet.server
    assert server is not None
    offline = lambda views: not views["cam-c"].online  # noqa: E731
    assert server.fleet.wait_for(offline, TIMEOUT_S)
    rollout_id = fleet.rollout("mlp:2", "--stages", "100%", "--gate", "selftest")
    summary = fleet.wait_phase(rollout_id, "COMPLETED", "ROLLED_BACK")
    assert summary["phase"] == "COMPLETED", summary
    fleet.start_agent("cam-c")  # back online: the retained desired state is waiting for it
    caught_up = lambda views: views["cam-c"].active.get("mlp") == 2  # noqa: E731
    assert server.fleet.wait_for(caught_up, TIMEOUT_S)
    assert fleet.served_version("cam-c") == "2"
