"""Prometheus metrics of an edge agent and of ``store serve``, scraped over HTTP.

A real mosquitto, an in-process store server and an in-process agent: desired state is sent
with the CLI, the agent downloads, self-tests, switches and rolls back, and both ``/metrics``
endpoints are parsed with ``prometheus_client``'s own text parser.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress
from edgefabric.samples import mlp_model, noisy_mlp_model
from edgefabric.wire.v1.fleet_pb2 import Event
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.store import ModelStore
from tests.cli import run_edgefabric

pytestmark = pytest.mark.integration

DEVICE = "dev-metrics"
TIMEOUT_S = 30.0


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``http://127.0.0.1:port/metrics``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp:1 (good, with golden vectors) and mlp:2 (fails its self-test)."""
    root = tmp_path_factory.mktemp("metrics-store")
    home = root / "home"
    golden = root / "golden.npz"
    np.savez(golden, x=np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16))
    run_edgefabric(home, "keys", "init")
    for version, model in ((1, mlp_model()), (2, noisy_mlp_model())):
        path = root / f"mlp{version}.onnx"
        path.write_bytes(model.SerializeToString())
        run_edgefabric(home, "model", "push", str(path), "--name", "mlp", "--golden", str(golden))
    return home


class Agent:
    """An agent on its own loop in a thread; events arrive on a queue-like condition."""

    def __init__(self, settings: AgentSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agent = EdgeAgent(settings)
        self.events: list[Event] = []
        self.changed = threading.Condition()
        self.agent.listeners.append(self._event)
        asyncio.run_coroutine_threadsafe(self.agent.start(), self.loop).result(TIMEOUT_S)

    def _event(self, event: Event) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, kind: int, version: int) -> None:
        with self.changed:
            found = self.changed.wait_for(
                lambda: any(e.kind == kind and e.version == version for e in self.events),
                TIMEOUT_S,
            )
        assert found, f"no {Event.Kind.Name(kind)} for version {version}: {self.events}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.agent.stop(), self.loop).result(TIMEOUT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT_S)
        self.loop.close()


@pytest.fixture
def fleet(
    store_home: Path, mqtt_broker: PrivateBroker, tmp_path: Path
) -> Iterator[tuple[Path, StoreServer, Agent]]:
    home = Path(shutil.copytree(store_home, tmp_path / "home"))
    store = ModelStore(StoreHome(home))
    server = StoreServer(
        store, StoreServerOptions(broker=BrokerAddress.parse(mqtt_broker.url), metrics_port=0)
    )
    server.start()
    settings: dict[str, Any] = {
        "device_id": DEVICE,
        "broker": mqtt_broker.url,
        "trust_root": home / "tuf" / "metadata" / "root.json",
        "data_dir": tmp_path / "device",
        "desired_key": home / "controller.pub",
        "grpc_port": 0,
        "health_interval_s": 0.2,
        "labels": {"group": "plant-7"},
        "metrics_port": 0,
    }
    agent = Agent(AgentSettings(**settings))
    try:
        yield home, server, agent
    finally:
        agent.close()
        server.stop()
        store.close()


def test_agent_and_store_metrics_follow_installs_rollbacks_and_transfers(
    fleet: tuple[Path, StoreServer, Agent], mqtt_broker: PrivateBroker
) -> None:
    home, server, agent = fleet
    endpoint = agent.agent.metrics_endpoint
    assert endpoint is not None
    assert server.metrics_endpoint is not None
    run_edgefabric(home, "fleet", "assign", DEVICE, "mlp:1", "--broker", mqtt_broker.url)
    agent.wait_for(Event.RECONCILED, 0)
    run_edgefabric(home, "fleet", "assign", DEVICE, "mlp:2", "--broker", mqtt_broker.url)
    agent.wait_for(Event.ROLLED_BACK, 1)
    tensor = grpcclient.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{agent.agent.server.port}") as client:
        client.infer("mlp", [tensor])

    seen = scrape(endpoint.port)
    assert value(seen, "edgefabric_agent_model_serving", model="mlp", version="1") == 1
    assert value(seen, "edgefabric_agent_slot_state", model="mlp", version="1", state="READY")
    assert value(seen, "edgefabric_agent_slot_state", model="mlp", version="2", state="FAILED")
    assert value(seen, "edgefabric_agent_self_tests_total", model="mlp", result="passed") == 1
    assert value(seen, "edgefabric_agent_self_tests_total", model="mlp", result="failed") == 1
    assert value(seen, "edgefabric_agent_rollbacks_total", model="mlp") == 1
    assert value(seen, "edgefabric_agent_mqtt_connected") == 1
    model_bytes = sum(len(p.read_bytes()) for p in (home / "blobs").rglob("*") if p.is_file())
    transferred = value(seen, "edgefabric_agent_transfer_bytes_total", kind="targets") or 0
    assert 0 < transferred <= model_bytes
    # Inference latency on the agent comes from the same ServingMetrics as the gateway's.
    assert value(seen, "edgefabric_inference_requests_total", model="mlp", version="1", code="OK")
    assert value(seen, "edgefabric_inference_compute_seconds_count", model="mlp", version="1")

    assert server.fleet.wait_for(
        lambda devices: DEVICE in devices and bool(devices[DEVICE].failed.get("mlp")), TIMEOUT_S
    )
    stored = scrape(server.metrics_endpoint.port)
    assert value(stored, "edgefabric_fleet_devices", group="plant-7", online="true") == 1
    assert value(
        stored, "edgefabric_fleet_model_devices", group="plant-7", model="mlp", version="1"
    )
    assert value(stored, "edgefabric_fleet_failed_devices", group="plant-7", model="mlp") == 1
    served = value(stored, "edgefabric_repo_served_bytes_total", kind="targets")
    assert served == transferred  # every target byte the agent received, the store sent
    assert (value(stored, "edgefabric_repo_served_chunks_total", kind="metadata") or 0) >= 4
    assert value(stored, "edgefabric_repo_requests_total", kind="metadata", status="OK")
