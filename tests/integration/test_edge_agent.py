"""The edge agent against the real thing: mosquitto, ``edgefabric store serve``, TUF, ORT.

An in-process agent (its own event loop in a thread) is driven only through the broker, the
way the controller drives it: signed desired state in, status/health/events out. Inference goes
to its local KServe v2 port with ``tritonclient``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from edgefabric import topics
from edgefabric.desired import seal_desired
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import Message, MqttClient
from edgefabric.samples import mlp_model, noisy_mlp_model
from edgefabric.wire.v1.fleet_pb2 import DesiredState, DeviceStatus, Event, Health, ModelRef
from tests.cli import run_edgefabric
from tests.mqtt_broker import ConnectMqtt

pytestmark = pytest.mark.integration

DEVICE = "dev-1"
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp:1 and mlp:2 (good, with golden vectors), mlp:3 (fails its self-test anywhere else)."""
    root = tmp_path_factory.mktemp("agent-store")
    home = root / "home"
    golden = root / "golden.npz"
    np.savez(golden, x=np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16))
    run_edgefabric(home, "keys", "init")
    for version, model in ((1, mlp_model()), (2, mlp_model(hidden=48)), (3, noisy_mlp_model())):
        path = root / f"mlp{version}.onnx"
        path.write_bytes(model.SerializeToString())
        run_edgefabric(home, "model", "push", str(path), "--name", "mlp", "--golden", str(golden))
    return home


class Fabric:
    """Broker + store server + one in-process agent, watched over MQTT."""

    def __init__(self, home: Path, broker: PrivateBroker, watcher: MqttClient, data: Path) -> None:
        self.home, self.broker, self.watcher, self.data = home, broker, watcher, data
        self.events: queue.Queue[Event] = queue.Queue()
        self.health: queue.Queue[Health] = queue.Queue()
        self.status: queue.Queue[DeviceStatus] = queue.Queue()
        watcher.subscribe(topics.device_events(DEVICE), self._parse(Event, self.events))
        watcher.subscribe(topics.device_health(DEVICE), self._parse(Health, self.health))
        watcher.subscribe(topics.device_status(DEVICE), self._parse(DeviceStatus, self.status))
        self.store: subprocess.Popen[str] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread()
        self.agent: EdgeAgent | None = None

    @staticmethod
    def _parse(kind: Any, sink: queue.Queue[Any]) -> Callable[[Message], None]:
        return lambda message: sink.put(kind.FromString(message.payload))

    def serve_store(self, chunk_size: int = 1024 * 1024) -> None:
        env = {**os.environ, "EDGEFABRIC_HOME": str(self.home)}
        command = [sys.executable, "-m", "edgefabric.cli", "store", "serve"]
        self.store = subprocess.Popen(
            [*command, "--broker", self.broker.url, "--chunk-size", str(chunk_size)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.store.stdout is not None
        assert "serving the repository" in self.store.stdout.readline()

    def stop_store(self) -> None:
        if self.store is not None:
            self.store.terminate()
            self.store.wait(timeout=30)
            assert self.store.stdout is not None
            self.store.stdout.close()
            self.store = None

    def start_agent(self, **overrides: Any) -> EdgeAgent:
        values: dict[str, Any] = {
            "device_id": DEVICE,
            "broker": self.broker.url,
            "trust_root": self.home / "tuf" / "metadata" / "root.json",
            "data_dir": self.data,
            "desired_key": self.home / "controller.pub",
            "grpc_port": 0,
            "health_interval_s": 0.2,
            "labels": {"site": "plant-7"},
        }
        values.update(overrides)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agent = EdgeAgent(AgentSettings(**values))
        asyncio.run_coroutine_threadsafe(self.agent.start(), self.loop).result(TIMEOUT_S)
        return self.agent

    def stop_agent(self) -> None:
        if self.agent is not None and self.loop is not None:
            asyncio.run_coroutine_threadsafe(self.agent.stop(), self.loop).result(TIMEOUT_S)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT_S)
            self.loop.close()
            self.agent = None

    def desire(self, *models: tuple[str, int]) -> None:
        """Publish signed desired state the way ops do: ``edgefabric fleet assign``."""
        args = ["fleet", "assign", DEVICE, *[f"{n}:{v}" for n, v in models]]
        run_edgefabric(self.home, *args, "--broker", self.broker.url)

    def wait_for(self, kind: int, *, version: int | None = None) -> list[Event]:
        """Events up to and including the first of ``kind`` (for ``version``, if given)."""
        seen = []
        while True:
            event = self.events.get(timeout=TIMEOUT_S)
            seen.append(event)
            if event.kind == kind and (version is None or event.version == version):
                return seen

    def client(self) -> grpcclient.InferenceServerClient:
        assert self.agent is not None
        return grpcclient.InferenceServerClient(f"127.0.0.1:{self.agent.server.port}")


@pytest.fixture
def fabric(
    store_home: Path,
    mqtt_broker: PrivateBroker,
    connect_mqtt: ConnectMqtt,
    tmp_path: Path,
) -> Iterator[Fabric]:
    home = Path(shutil.copytree(store_home, tmp_path / "home"))
    running = Fabric(home, mqtt_broker, connect_mqtt(mqtt_broker, "watcher"), tmp_path / "device")
    running.serve_store()
    yield running
    running.stop_agent()
    running.stop_store()


def _infer(client: grpcclient.InferenceServerClient, version: str = "") -> np.ndarray[Any, Any]:
    batch = np.ones((2, 16), np.float32)
    request = grpcclient.InferInput("x", [2, 16], "FP32")
    request.set_data_from_numpy(batch)
    result: np.ndarray[Any, Any] | None = client.infer(
        "mlp", [request], model_version=version
    ).as_numpy("logits")
    assert result is not None
    return result


def _kinds(events: list[Event]) -> list[str]:
    return [Event.Kind.Name(e.kind) for e in events]


def test_desired_version_is_fetched_verified_self_tested_and_served(fabric: Fabric) -> None:
    fabric.start_agent()
    birth = fabric.status.get(timeout=TIMEOUT_S)
    assert (birth.device_id, birth.online, dict(birth.labels)) == (
        DEVICE,
        True,
        {"site": "plant-7"},
    )
    fabric.desire(("mlp", 1))
    events = fabric.wait_for(Event.RECONCILED)
    assert _kinds(events) == [
        "DESIRED_RECEIVED", "DOWNLOAD_STARTED", "VERIFIED", "SELF_TEST_PASSED", "SWITCHED",
        "RECONCILED",
    ]  # fmt: skip
    client = fabric.client()
    assert client.is_model_ready("mlp", "1")
    for _ in range(3):
        assert _infer(client).shape == (2, 8)
    client.close()
    health = fabric.health.get(timeout=TIMEOUT_S)
    while not health.models or health.models[0].requests < 3:  # older reports still queued
        health = fabric.health.get(timeout=TIMEOUT_S)
    assert health.applied_sequence == 1
    (model,) = health.models
    assert (model.model, model.version, model.requests, model.errors) == ("mlp", 1, 3, 0)
    assert 0 < model.p50_ms <= model.p99_ms
    assert model.self_test_passed
    assert [(s.model, s.version, s.state, s.active) for s in health.slots] == [
        ("mlp", 1, "READY", True)
    ]
    assert health.metadata_age_s >= 0
    assert health.rss_bytes > 0


def test_an_upgrade_switches_and_keeps_the_previous_version_on_disk(fabric: Fabric) -> None:
    fabric.start_agent()
    fabric.desire(("mlp", 1))
    fabric.wait_for(Event.RECONCILED)
    fabric.desire(("mlp", 2))
    assert "SWITCHED" in _kinds(fabric.wait_for(Event.RECONCILED))
    client = fabric.client()
    assert client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("mlp", "1")
    client.close()
    assert (fabric.data / "models" / "mlp" / "1" / "model.onnx").exists()


def test_a_version_failing_its_self_test_is_rolled_back(fabric: Fabric) -> None:
    fabric.start_agent()
    fabric.desire(("mlp", 2))
    fabric.wait_for(Event.RECONCILED)
    fabric.desire(("mlp", 3))
    events = fabric.wait_for(Event.RECONCILED)
    failed = next(e for e in events if e.kind == Event.INSTALL_FAILED)
    assert failed.version == 3
    assert "golden" in failed.message or "elements off" in failed.message
    rolled = next(e for e in events if e.kind == Event.ROLLED_BACK)
    assert (rolled.version, rolled.message) == (2, "version 2 keeps serving")
    client = fabric.client()
    assert client.is_model_ready("mlp", "2")
    assert _infer(client).shape == (2, 8)
    client.close()


def test_forged_foreign_stale_and_garbage_desired_state_is_rejected(
    fabric: Fabric, connect_mqtt: ConnectMqtt
) -> None:
    fabric.start_agent()
    fabric.desire(("mlp", 1))
    fabric.wait_for(Event.RECONCILED)
    attacker = connect_mqtt(fabric.broker, "attacker")
    topic = topics.device_desired(DEVICE)
    forged = DesiredState(device_id=DEVICE, sequence=99, models=[ModelRef(name="mlp", version=2)])
    payloads = {
        "not signed by the controller": seal_desired(forged, Ed25519PrivateKey.generate()),
        "garbage": b"\xff\x00 not protobuf",
        "unsigned": DesiredState(device_id=DEVICE, sequence=100).SerializeToString(),
    }
    for payload in payloads.values():
        attacker.publish(topic, payload, qos=1, wait=True)
        rejected = fabric.wait_for(Event.REJECTED)[-1]
        assert "refusing" in rejected.message or "not a SignedDesiredState" in rejected.message
    client = fabric.client()
    assert client.is_model_ready("mlp", "1")
    client.close()
    assert fabric.agent is not None
    assert fabric.agent.applied_sequence == 1


def test_desired_state_for_another_device_is_ignored(fabric: Fabric) -> None:
    fabric.start_agent()
    fabric.desire(("mlp", 1))
    fabric.wait_for(Event.RECONCILED)
    key_pem = (fabric.home / "keys" / "controller.pem").read_bytes()
    key = load_pem_private_key(key_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    other = DesiredState(device_id="dev-2", sequence=50, models=[ModelRef(name="mlp", version=2)])
    fabric.watcher.publish(topics.device_desired(DEVICE), seal_desired(other, key), wait=True)
    rejected = fabric.wait_for(Event.REJECTED)[-1]
    assert "is for device 'dev-2'" in rejected.message
    client = fabric.client()
    assert client.is_model_ready("mlp", "1")
    client.close()


def test_a_tampered_artifact_is_refused_and_the_old_model_keeps_serving(fabric: Fabric) -> None:
    fabric.start_agent()
    fabric.desire(("mlp", 1))
    fabric.wait_for(Event.RECONCILED)
    digest = hashlib.sha256(mlp_model(hidden=48).SerializeToString()).hexdigest()
    blob = fabric.home / "blobs" / "sha256" / digest[:2] / digest
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-8] + b"tampered")
    fabric.desire(("mlp", 2))
    events = fabric.wait_for(Event.RECONCILED)
    rejected = next(e for e in events if e.kind == Event.REJECTED)
    assert rejected.version == 2
    assert "refused models/mlp/2/model.onnx" in rejected.message
    client = fabric.client()
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "2")
    client.close()
    assert not (fabric.data / "models" / "mlp" / "2" / "model.onnx").exists()


def test_without_broker_or_store_the_last_verified_model_keeps_serving(fabric: Fabric) -> None:
    fabric.start_agent()
    fabric.desire(("mlp", 1))
    fabric.wait_for(Event.RECONCILED)
    fabric.stop_agent()
    fabric.stop_store()
    fabric.broker.stop()
    agent = fabric.start_agent()
    client = fabric.client()
    assert client.is_model_ready("mlp", "1")
    assert _infer(client).shape == (2, 8)
    client.close()
    health = Health.FromString(agent.health())
    assert health.applied_sequence == 1
    assert [(s.version, s.state) for s in health.slots] == [(1, "READY")]


def test_a_version_the_agent_keeps_crashing_on_is_rolled_back(fabric: Fabric) -> None:
    fabric.start_agent()
    fabric.desire(("mlp", 1))
    fabric.wait_for(Event.RECONCILED)
    fabric.desire(("mlp", 2))
    fabric.wait_for(Event.RECONCILED)
    fabric.stop_agent()
    state_path = fabric.data / "agent.json"
    for restart in range(2):  # what a crash during v2's probation leaves behind, twice
        state = json.loads(state_path.read_text())
        state["installing"] = {"model": "mlp", "version": 2}
        state_path.write_text(json.dumps(state))
        fabric.start_agent()
        if restart == 0:
            first = fabric.client()
            assert first.is_model_ready("mlp", "2")  # one crash is tolerated
            first.close()
            fabric.stop_agent()
    rolled = fabric.wait_for(Event.ROLLED_BACK)[-1]
    assert rolled.version == 2
    assert "crashed 2 times" in rolled.message
    client = fabric.client()
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "2")
    client.close()


def test_an_agent_killed_mid_download_resumes_from_disk(fabric: Fabric, tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    big.write_bytes(mlp_model(features=2048, hidden=4096).SerializeToString())  # 32 MiB
    run_edgefabric(fabric.home, "model", "push", str(big), "--name", "big")
    fabric.stop_store()
    fabric.serve_store(chunk_size=64 * 1024)  # 512 round trips: time to kill it mid-way
    command = [
        sys.executable, "-m", "edgefabric.cli", "agent", "run", "--device-id", DEVICE,
        "--broker", fabric.broker.url, "--data-dir", str(fabric.data), "--grpc-port", "0",
        "--trust-root", str(fabric.home / "tuf" / "metadata" / "root.json"),
        "--desired-key", str(fabric.home / "controller.pub"),
    ]  # fmt: skip
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert agent.stdout is not None
    assert "serving on" in agent.stdout.readline()
    fabric.desire(("big", 1))
    fabric.wait_for(Event.DOWNLOAD_STARTED)
    agent.kill()  # kill -9: no goodbye, no cleanup
    agent.wait(timeout=30)
    agent.stdout.close()
    (partial,) = (fabric.data / "partial").iterdir()
    kept = partial.stat().st_size
    assert 0 < kept < big.stat().st_size
    fabric.start_agent()
    events = fabric.wait_for(Event.RECONCILED)
    assert "DOWNLOAD_RESUMED" in _kinds(events)
    verified = next(e for e in events if e.kind == Event.VERIFIED)
    assert f"resumed {kept} bytes from disk" in verified.message
    fetched = int(verified.message.split("fetched ")[1].split(" ")[0])
    assert fetched < big.stat().st_size - kept + 64 * 1024  # the rest plus metadata, no more
    client = fabric.client()
    assert client.is_model_ready("big", "1")
    client.close()
