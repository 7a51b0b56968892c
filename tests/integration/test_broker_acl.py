"""Fleet identities against a real mosquitto running the configuration that
``edgefabric fleet broker-config`` writes: mutual TLS, CN as username, the ACL, the CRL.

Mosquitto drops an unauthorised PUBLISH and grants a subscription it will never feed, without
telling the client. So each attack is followed by a *sentinel* the same path may carry; an
authorised observer reads until the sentinel and checks the attack's message is not before it
(one publisher to one subscriber keeps its order), and a positive control shows the attack's
message would have arrived had it been allowed.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from edgefabric import topics
from edgefabric.errors import TransportError
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttTls
from edgefabric.samples import mlp_model
from edgefabric.wire.v1.fleet_pb2 import Event
from edgefabric.wire.v1.gateway_pb2 import GatewayStats
from model_store.pki import FleetCA, Role
from tests.cli import run_edgefabric
from tests.conftest import GatewayThread
from tests.integration.test_edge_relay import (
    edge_pool,
    local_ort,
    serving,
    triton_infer,
    wait_pool,
)

pytestmark = pytest.mark.integration

TIMEOUT_S = 15.0
DEVICES = ("dev-a", "dev-b", "dev-revoked", "dev-late")
CONTROLLERS = ("edgefabric-controller", "edgefabric-store")
GATEWAY = "edgefabric-gateway"
# The TLS alert reaches the client while it sends CONNECT or while it waits for CONNACK; never
# a timeout ("did not answer").
REFUSED = r"cannot connect to MQTT broker|closed before the broker answered"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with mlp:1, every identity enrolled (one revoked) and a broker configuration."""
    root = tmp_path_factory.mktemp("fleet")
    home = root / "home"
    run_edgefabric(home, "keys", "init")
    model = root / "mlp.onnx"
    model.write_bytes(mlp_model().SerializeToString())
    golden = root / "golden.npz"
    np.savez(golden, x=np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16))
    run_edgefabric(home, "model", "push", str(model), "--name", "mlp", "--golden", str(golden))
    for name in DEVICES:
        run_edgefabric(home, "fleet", "enroll", name, "--out", str(root / name))
    for name in CONTROLLERS:
        run_edgefabric(
            home, "fleet", "enroll", name, "--role", "controller", "--out", str(root / name)
        )
    run_edgefabric(
        home, "fleet", "enroll", GATEWAY, "--role", "gateway", "--out", str(root / GATEWAY)
    )
    run_edgefabric(home, "fleet", "revoke", "dev-revoked")
    run_edgefabric(home, "fleet", "broker-config", "--out", str(root / "broker"))
    return root


@pytest.fixture
def broker(fleet: Path, tmp_path: Path) -> Iterator[PrivateBroker]:
    """Mosquitto running the generated mosquitto.conf (on a free loopback port)."""
    with PrivateBroker(
        tmp_path / "mosquitto", config_file=fleet / "broker" / "mosquitto.conf", persistence=False
    ) as running:
        assert running.url.startswith("mqtts://")
        yield running


class Clients:
    """Connects as an enrolled identity; closes every client after the test."""

    def __init__(self, fleet: Path, broker: PrivateBroker) -> None:
        self.fleet, self.address = fleet, BrokerAddress.parse(broker.url)
        self._open: list[MqttClient] = []

    def tls(self, name: str) -> MqttTls:
        folder = self.fleet / name
        return MqttTls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")

    def client(self, name: str, tls: MqttTls | None = None) -> MqttClient:
        client = MqttClient(
            self.address, f"{name}-{uuid.uuid4().hex[:8]}", tls=tls or self.tls(name)
        )
        self._open.append(client)
        return client

    def connect(self, name: str) -> MqttClient:
        client = self.client(name)
        client.connect(timeout_s=TIMEOUT_S)
        return client

    def close(self) -> None:
        for client in self._open:
            client.close()


@pytest.fixture
def clients(fleet: Path, broker: PrivateBroker) -> Iterator[Clients]:
    opened = Clients(fleet, broker)
    yield opened
    opened.close()


class Inbox:
    """Messages one client received, in order."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Message] = queue.Queue()

    def __call__(self, message: Message) -> None:
        self._queue.put(message)

    def before(self, topic: str, payload: bytes) -> list[Message]:
        """Every message received before the sentinel ``payload`` on ``topic`` (which must
        arrive)."""
        seen: list[Message] = []
        while True:
            message = self._queue.get(timeout=TIMEOUT_S)
            if (message.topic, message.payload) == (topic, payload):
                return seen
            seen.append(message)


def _token(kind: str) -> bytes:
    return f"{kind}-{uuid.uuid4().hex}".encode()


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize(
    ("publisher", "topic_of"),
    [
        ("edgefabric-controller", topics.device_desired),
        (GATEWAY, topics.device_infer),
        ("edgefabric-store", topics.repo_response),
    ],
    ids=["desired", "infer", "repo-response"],
)
def test_a_device_cannot_read_another_devices_messages(
    clients: Clients, publisher: str, topic_of: Callable[[str], str]
) -> None:
    sender = clients.connect(publisher)
    secret = _token("secret")
    sender.publish(topic_of("dev-a"), secret, retain=True, wait=True)  # retained, from before
    victim, attacker = Inbox(), Inbox()
    clients.connect("dev-a").subscribe(topic_of("dev-a"), victim)
    spy = clients.connect("dev-b")
    wildcard = topic_of("dev-a").replace("dev-a", "+")
    for topic_filter in (topic_of("dev-a"), wildcard, f"{topics.PREFIX}/#", "#"):
        spy.subscribe(topic_filter, attacker)  # granted, but never fed another's messages
    sender.publish(topic_of("dev-a"), secret, wait=True)  # live
    sentinel = _token("sentinel")
    sender.publish(topic_of("dev-b"), sentinel, wait=True)
    leaked = attacker.before(topic_of("dev-b"), sentinel)
    assert [m.topic for m in leaked if "dev-a" in m.topic] == []
    # Positive control: the rightful device got both (the retained one, then the live one).
    assert victim.before(topic_of("dev-a"), secret) == []
    assert victim.before(topic_of("dev-a"), secret) == []


# ------------------------------------------------------------------ writing


def test_a_device_cannot_publish_another_devices_status_health_or_events(
    clients: Clients,
) -> None:
    observer = Inbox()
    clients.connect("edgefabric-controller").subscribe(f"{topics.PREFIX}/#", observer)
    attacker = clients.connect("dev-b")
    for topic in (
        topics.device_status("dev-a"),
        topics.device_health("dev-a"),
        topics.device_events("dev-a"),
        topics.repo_request("dev-a"),
    ):
        attacker.publish(topic, _token("forged"), qos=1, retain=True, wait=True)
    sentinel = _token("sentinel")
    attacker.publish(topics.device_status("dev-b"), sentinel, wait=True)
    assert [m.topic for m in observer.before(topics.device_status("dev-b"), sentinel)] == []
    # Its own reports go through.
    own = _token("own")
    attacker.publish(topics.device_events("dev-b"), own, wait=True)
    assert observer.before(topics.device_events("dev-b"), own) == []


def test_a_device_cannot_publish_desired_state_at_all(clients: Clients) -> None:
    observer = Inbox()
    clients.connect("edgefabric-controller").subscribe(f"{topics.PREFIX}/#", observer)
    attacker = clients.connect("dev-b")
    for victim in ("dev-b", "dev-a"):  # not even its own
        attacker.publish(topics.device_desired(victim), _token("forged"), retain=True, wait=True)
    attacker.publish(topics.rollout_status("r1"), _token("forged"), retain=True, wait=True)
    sentinel = _token("sentinel")
    attacker.publish(topics.device_status("dev-b"), sentinel, wait=True)
    assert [m.topic for m in observer.before(topics.device_status("dev-b"), sentinel)] == []
    # Nothing was retained either: subscribing now, the device finds only what the
    # controller publishes afterwards.
    late = Inbox()
    clients.connect("dev-a").subscribe(topics.device_desired("dev-a"), late)
    clients.connect("edgefabric-controller").publish(
        topics.device_desired("dev-a"), sentinel, wait=True
    )
    assert late.before(topics.device_desired("dev-a"), sentinel) == []


def test_the_controller_identity_can_publish_desired_state(clients: Clients) -> None:
    device = Inbox()
    clients.connect("dev-a").subscribe(topics.device_desired("dev-a"), device)
    desired = _token("desired")
    clients.connect("edgefabric-controller").publish(
        topics.device_desired("dev-a"), desired, retain=True, wait=True
    )
    assert device.before(topics.device_desired("dev-a"), desired) == []


def test_a_gateway_publishes_statistics_under_its_own_name_only(clients: Clients) -> None:
    observer = Inbox()
    clients.connect("edgefabric-store").subscribe(topics.ALL_GATEWAY_STATS, observer)
    gateway, device = clients.connect(GATEWAY), clients.connect("dev-b")
    gateway.publish(topics.gateway_stats("another-gateway"), _token("forged"), wait=True)
    for name in ("dev-b", GATEWAY):  # a device: not under its own name, nor the gateway's
        device.publish(topics.gateway_stats(name), _token("forged"), wait=True)
    own = _token("own")
    gateway.publish(topics.gateway_stats(GATEWAY), own, wait=True)
    assert observer.before(topics.gateway_stats(GATEWAY), own) == []


def test_a_gateway_cannot_publish_desired_state(clients: Clients) -> None:
    observer = Inbox()
    clients.connect("edgefabric-controller").subscribe(f"{topics.PREFIX}/#", observer)
    gateway = clients.connect(GATEWAY)
    gateway.publish(topics.device_desired("dev-a"), _token("forged"), wait=True)
    sentinel = _token("sentinel")
    gateway.publish(topics.device_infer("dev-a"), sentinel, wait=True)
    assert observer.before(topics.device_infer("dev-a"), sentinel) == []


def test_a_device_or_a_gateway_cannot_publish_routes(clients: Clients) -> None:
    """Only a controller writes the gateways' route table; gateways read it, devices cannot."""
    gateway_view = Inbox()
    gateway = clients.connect(GATEWAY)
    gateway.subscribe(topics.ROUTES, gateway_view)
    device = clients.connect("dev-b")
    for attacker in (device, gateway):
        attacker.publish(topics.ROUTES, _token("forged"), qos=1, retain=True, wait=True)
    table = _token("table")
    clients.connect("edgefabric-store").publish(topics.ROUTES, table, retain=True, wait=True)
    assert gateway_view.before(topics.ROUTES, table) == []
    # Retained: a gateway connecting now finds the controller's table, nothing forged.
    late = Inbox()
    clients.connect(GATEWAY).subscribe(topics.ROUTES, late)
    assert late.before(topics.ROUTES, table) == []
    device_view = Inbox()  # and a device cannot read it, retained or live
    reader = clients.connect("dev-a")
    reader.subscribe(topics.ROUTES, device_view)
    reader.subscribe(topics.device_desired("dev-a"), device_view)
    store = clients.connect("edgefabric-store")
    store.publish(topics.ROUTES, _token("table"), retain=True, wait=True)
    sentinel = _token("sentinel")
    store.publish(topics.device_desired("dev-a"), sentinel, wait=True)
    assert [m.topic for m in device_view.before(topics.device_desired("dev-a"), sentinel)] == []


# ------------------------------------------------------------------ connecting


def test_a_revoked_certificate_is_refused_at_connect(clients: Clients) -> None:
    with pytest.raises(TransportError, match=REFUSED):
        clients.client("dev-revoked").connect(timeout_s=TIMEOUT_S)


def test_a_certificate_revoked_while_the_broker_runs_is_refused_after_a_reload(
    fleet: Path, broker: PrivateBroker, clients: Clients, tmp_path: Path
) -> None:
    home = Path(shutil.copytree(fleet / "home", tmp_path / "home"))
    clients.connect("dev-late")
    run_edgefabric(home, "fleet", "revoke", "dev-late")
    shutil.copyfile(home / "pki" / "crl.pem", fleet / "broker" / "crl.pem")
    try:
        broker.reload()
        with pytest.raises(TransportError, match=REFUSED):
            clients.client("dev-late").connect(timeout_s=TIMEOUT_S)
    finally:
        shutil.copyfile(fleet / "home" / "pki" / "crl.pem", fleet / "broker" / "crl.pem")


def test_a_client_without_a_certificate_is_refused(clients: Clients, fleet: Path) -> None:
    with pytest.raises(TransportError, match=REFUSED):
        clients.client("dev-a", MqttTls(fleet / "dev-a" / "ca.pem")).connect(timeout_s=TIMEOUT_S)


def test_a_device_name_in_a_certificate_from_another_ca_is_refused(
    clients: Clients, fleet: Path, tmp_path: Path
) -> None:
    forged = FleetCA.open(tmp_path / "rogue-ca").issue("dev-a", Role.DEVICE).write(tmp_path / "x")
    tls = MqttTls(fleet / "dev-a" / "ca.pem", forged["cert"], forged["key"])
    with pytest.raises(TransportError, match=REFUSED):
        clients.client("dev-a", tls).connect(timeout_s=TIMEOUT_S)


def test_a_plaintext_client_is_refused(broker: PrivateBroker) -> None:
    plain = BrokerAddress.parse(broker.url.replace("mqtts://", "mqtt://"))
    client = MqttClient(plain, "plaintext")
    with pytest.raises(TransportError):
        client.connect(timeout_s=TIMEOUT_S)


def test_a_device_cannot_answer_on_another_devices_relay_answer_topic(clients: Clients) -> None:
    answers = Inbox()
    clients.connect(GATEWAY).subscribe(topics.relay_responses(GATEWAY), answers)
    attacker = clients.connect("dev-b")
    forged = _token("forged")
    attacker.publish(topics.relay_response(GATEWAY, "dev-a"), forged, qos=1, wait=True)
    sentinel = _token("sentinel")
    attacker.publish(topics.relay_response(GATEWAY, "dev-b"), sentinel, qos=1, wait=True)
    assert answers.before(topics.relay_response(GATEWAY, "dev-b"), sentinel) == []
    # Positive control: the device named in the topic does get through.
    own = _token("own")
    clients.connect("dev-a").publish(topics.relay_response(GATEWAY, "dev-a"), own, wait=True)
    assert answers.before(topics.relay_response(GATEWAY, "dev-a"), own) == []


# ------------------------------------------------------------------ the real agent and store


def _tls_args(folder: Path) -> list[str]:
    return [f"--mqtt-{kind}={folder / f'{kind}.pem'}" for kind in ("ca", "cert", "key")]


class EnrolledFleet:
    """``edgefabric store serve`` and an in-process agent, each with its enrolled identity."""

    def __init__(self, fleet: Path, broker: PrivateBroker, home: Path, data: Path) -> None:
        self.fleet, self.broker, self.home, self.data = fleet, broker, home, data
        self.store: subprocess.Popen[str] | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.agent: EdgeAgent | None = None

    def serve_store(self) -> None:
        self.store = subprocess.Popen(
            [sys.executable, "-m", "edgefabric.cli", "store", "serve", "--broker", self.broker.url,
             "--home", str(self.home), *_tls_args(self.fleet / "edgefabric-store")],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.store.stdout is not None
        assert "serving the repository" in self.store.stdout.readline()

    def start_agent(self, device: str, **overrides: Any) -> EdgeAgent:
        creds = self.fleet / device
        values: dict[str, Any] = {
            "device_id": device,
            "broker": self.broker.url,
            "mqtt_ca": creds / "ca.pem",
            "mqtt_cert": creds / "cert.pem",
            "mqtt_key": creds / "key.pem",
            "trust_root": self.home / "tuf" / "metadata" / "root.json",
            "data_dir": self.data / device,
            "desired_key": self.home / "controller.pub",
            "grpc_port": 0,
            **overrides,
        }
        if not self.thread.is_alive():
            self.thread.start()
        self.agent = EdgeAgent(AgentSettings(**values))
        asyncio.run_coroutine_threadsafe(self.agent.start(), self.loop).result(TIMEOUT_S)
        return self.agent

    def assign(self, device: str, *models: str) -> None:
        """``fleet assign`` as the controller identity."""
        run_edgefabric(
            self.home, "fleet", "assign", device, *models, "--broker", self.broker.url,
            *_tls_args(self.fleet / "edgefabric-controller"),
        )  # fmt: skip

    def close(self) -> None:
        if self.agent is not None:
            asyncio.run_coroutine_threadsafe(self.agent.stop(), self.loop).result(TIMEOUT_S)
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT_S)
        self.loop.close()
        if self.store is not None:
            self.store.terminate()
            self.store.wait(timeout=30)
            if self.store.stdout is not None:
                self.store.stdout.close()


@pytest.fixture
def enrolled(fleet: Path, broker: PrivateBroker, tmp_path: Path) -> Iterator[EnrolledFleet]:
    home = Path(shutil.copytree(fleet / "home", tmp_path / "home"))
    running = EnrolledFleet(fleet, broker, home, tmp_path / "devices")
    try:
        running.serve_store()
        yield running
    finally:
        running.close()


def _reconciled(events: queue.Queue[Event]) -> list[str]:
    kinds: list[str] = []
    while not kinds or kinds[-1] != "RECONCILED":
        kinds.append(Event.Kind.Name(events.get(timeout=TIMEOUT_S).kind))
    return kinds


def test_an_enrolled_agent_syncs_its_desired_state_over_mutual_tls(
    enrolled: EnrolledFleet, clients: Clients
) -> None:
    events: queue.Queue[Event] = queue.Queue()
    clients.connect("edgefabric-controller").subscribe(
        topics.device_events("dev-a"), lambda m: events.put(Event.FromString(m.payload))
    )
    enrolled.start_agent("dev-a")
    enrolled.assign("dev-a", "mlp:1")
    assert _reconciled(events) == [
        "DESIRED_RECEIVED", "DOWNLOAD_STARTED", "VERIFIED", "SELF_TEST_PASSED", "SWITCHED",
        "RECONCILED",
    ]  # fmt: skip


def test_an_enrolled_gateway_relays_to_an_enrolled_agent_through_the_acl_broker(
    enrolled: EnrolledFleet,
    clients: Clients,
    start_gateway: Callable[..., GatewayThread],
    fleet: Path,
    tmp_path: Path,
) -> None:
    events: queue.Queue[Event] = queue.Queue()
    controller = clients.connect("edgefabric-controller")
    controller.subscribe(
        topics.device_events("dev-a"), lambda m: events.put(Event.FromString(m.payload))
    )
    reports: queue.Queue[GatewayStats] = queue.Queue()
    controller.subscribe(
        topics.ALL_GATEWAY_STATS, lambda m: reports.put(GatewayStats.FromString(m.payload))
    )
    agent = enrolled.start_agent("dev-a", grpc_listen=False)
    enrolled.assign("dev-a", "mlp:1")
    assert _reconciled(events)[-1] == "RECONCILED"
    empty = tmp_path / "empty"
    empty.mkdir()
    creds = fleet / GATEWAY
    gateway = start_gateway(
        empty,
        pools=(f"edge={enrolled.broker.url}",),
        mqtt_ca=creds / "ca.pem",
        mqtt_cert=creds / "cert.pem",
        mqtt_key=creds / "key.pem",
        report_interval_s=0.2,  # statistics go to the edge pool's broker, under the CN
    )
    assert edge_pool(gateway).identity == GATEWAY  # the CN: the name the ACL grants
    wait_pool(gateway, serving("mlp"))

    np.testing.assert_allclose(triton_infer(gateway.address), local_ort(), rtol=1e-6, atol=1e-7)
    assert agent.relay is not None
    assert agent.relay.counters.answered == 1
    assert agent.relay.counters.unanswerable == 0
    report = reports.get(timeout=TIMEOUT_S)  # what the gateway routed, through the ACL
    assert report.gateway_id == GATEWAY
    assert [(p.model, p.pool, p.requests) for p in report.pools] == [("mlp", "edge", 1)]
