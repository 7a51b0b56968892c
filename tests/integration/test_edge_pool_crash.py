"""An edge agent killed under load: the broker's Last Will moves its requests to another agent.

Two real agent processes (``edgefabric agent run --no-grpc-listen``) serve mlp:1 through a
real mosquitto, the store and gateway of tests/integration/test_edge_relay.py. While clients
call the gateway with a deadline, one agent is frozen (SIGSTOP, so requests are surely held
by it) and then SIGKILLed: it sends no offline status, the broker publishes its Last Will. A
watcher on the broker sees which relayed requests the dead agent never answered; every client
request must still succeed, on the other agent.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from edgefabric import topics
from edgefabric.mqtt import Message
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Event
from gateway.pools.edge import EdgePool
from tests.cli import run_edgefabric
from tests.conftest import GatewayThread
from tests.integration.test_edge_agent import (  # the store and broker fabric, reused
    TIMEOUT_S,
    Fabric,
    fabric,  # noqa: F401
    store_home,  # noqa: F401
)
from tests.integration.test_edge_relay import BATCH, edge_pool, local_ort, wait_pool
from tests.mqtt_broker import ConnectMqtt

pytestmark = pytest.mark.integration

AGENTS = ("crash-a", "crash-b")
CLIENTS = 8  # the pool sends to the frozen agent while it holds fewer than the other
DEADLINE_S = 5.0
AFTER_KILL = 40  # requests that must succeed after the kill


class AgentProcesses:
    """``edgefabric agent run`` per device, killed after the test if still running."""

    def __init__(self, base: Fabric) -> None:
        self.fabric = base
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, device: str) -> None:
        home = self.fabric.home
        self.processes[device] = subprocess.Popen(
            [sys.executable, "-m", "edgefabric.cli", "agent", "run", "--device-id", device,
             "--broker", self.fabric.broker.url, "--trust-root",
             str(home / "tuf" / "metadata" / "root.json"), "--data-dir",
             str(self.fabric.data.parent / device), "--desired-key", str(home / "controller.pub"),
             "--no-grpc-listen", "--health-interval-s", "0.2"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
            process.wait(timeout=TIMEOUT_S)


@pytest.fixture
def agents(fabric: Fabric) -> Iterator[AgentProcesses]:  # noqa: F811
    running = AgentProcesses(fabric)
    yield running
    running.close()


class Load:
    """Client threads calling the gateway with a deadline until stopped; every outcome kept."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stop = threading.Event()
        self.successes: queue.Queue[int] = queue.Queue()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.address)
        try:
            x = grpcclient.InferInput("x", list(BATCH.shape), "FP32")
            x.set_data_from_numpy(BATCH)
            expected = local_ort()
            while not self.stop.is_set():
                try:
                    result = client.infer("mlp", [x], client_timeout=DEADLINE_S)
                except InferenceServerException as exc:
                    self.failures.append(f"{exc.status()}: {exc.message()}")
                    continue
                np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6)
                self.successes.put(1)
        finally:
            client.close()

    def wait_successes(self, count: int) -> None:
        for _ in range(count):
            self.successes.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT_S + DEADLINE_S)


class RelayWatcher:
    """What the broker carried for one device: requests relayed to it, answers it sent.

    Mosquitto forwards messages to one subscriber in the order it took them in, so requests
    that reach the watcher after a marker it published itself reached the broker after it.
    """

    def __init__(self, base: Fabric, connect_mqtt: ConnectMqtt, device: str) -> None:
        self.arrivals: queue.Queue[bytes | None] = queue.Queue()  # None: the marker
        self.answered: set[bytes] = set()
        self.offline = threading.Event()
        self.mqtt = connect_mqtt(base.broker)
        self.marker_topic = f"{topics.PREFIX}/test/{self.mqtt.client_id}/marker"
        self.mqtt.subscribe(topics.device_infer(device), self._asked)
        self.mqtt.subscribe(f"{topics.PREFIX}/relay/resp/+/{device}", self._answered)
        self.mqtt.subscribe(topics.device_status(device), self._status)
        self.mqtt.subscribe(self.marker_topic, lambda _: self.arrivals.put(None))

    def _asked(self, message: Message) -> None:
        self.arrivals.put(message.correlation_data or b"")

    def _answered(self, message: Message) -> None:
        self.answered.add(message.correlation_data or b"")

    def _status(self, message: Message) -> None:
        if message.payload and not DeviceStatus.FromString(message.payload).online:
            self.offline.set()

    def requests_from_now(self, count: int) -> set[bytes]:
        """The correlation data of the next ``count`` requests the broker takes in for the
        device from now on."""
        self.mqtt.publish(self.marker_topic, b"", qos=1, wait=True)
        while self.arrivals.get(timeout=TIMEOUT_S) is not None:
            pass
        found: set[bytes] = set()
        while len(found) < count:
            correlation = self.arrivals.get(timeout=TIMEOUT_S)
            if correlation is not None:
                found.add(correlation)
        return found


def _reconciled(base: Fabric, connect_mqtt: ConnectMqtt) -> Callable[[], None]:
    """Subscribes to every device's events now; the returned call waits until each of AGENTS
    reports RECONCILED."""
    events: queue.Queue[tuple[str, Event]] = queue.Queue()

    def arrived(message: Message) -> None:
        parsed = topics.parse_device_topic(message.topic)
        if parsed is not None:
            events.put((parsed[0], Event.FromString(message.payload)))

    connect_mqtt(base.broker).subscribe(topics.ALL_DEVICE_EVENTS, arrived)

    def wait() -> None:
        pending = set(AGENTS)
        while pending:
            device, event = events.get(timeout=TIMEOUT_S * 2)
            if event.kind == Event.RECONCILED:
                pending.discard(device)

    return wait


def _serving_on(device: str) -> Callable[[EdgePool], bool]:
    return lambda pool: any(
        a.device_id == device and a.available and a.serves.get("mlp") == "1" for a in pool.agents()
    )


def test_an_agent_killed_under_load_loses_no_request_that_had_deadline_left(
    fabric: Fabric,  # noqa: F811
    agents: AgentProcesses,
    connect_mqtt: ConnectMqtt,
    start_gateway: Callable[..., GatewayThread],
    tmp_path: Path,
) -> None:
    victim, survivor = AGENTS
    reconciled = _reconciled(fabric, connect_mqtt)
    for device in AGENTS:
        agents.start(device)
    for device in AGENTS:
        run_edgefabric(
            fabric.home, "fleet", "assign", device, "mlp:1", "--broker", fabric.broker.url
        )
    reconciled()
    empty = tmp_path / "empty"
    empty.mkdir()
    gateway = start_gateway(empty, pools=(f"edge={fabric.broker.url}",))
    for device in AGENTS:
        wait_pool(gateway, _serving_on(device))
    watcher = RelayWatcher(fabric, connect_mqtt, victim)
    load = Load(gateway.address)
    try:
        load.wait_successes(20)
        process = agents.processes[victim]
        process.send_signal(signal.SIGSTOP)  # it holds what it is sent from now on
        held = watcher.requests_from_now(1)  # sent to a frozen agent: it will never answer
        process.kill()
        process.wait(timeout=TIMEOUT_S)
        assert watcher.offline.wait(TIMEOUT_S), "the broker published no Last Will"
        load.wait_successes(AFTER_KILL)
    finally:
        load.close()

    assert load.failures == []
    assert not held & watcher.answered  # lost with the agent, and yet every request was served
    views = {a.device_id: a for a in edge_pool(gateway).agents()}
    assert (views[victim].online, views[survivor].available) == (False, True)
