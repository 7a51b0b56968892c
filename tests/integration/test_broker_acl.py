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
from model_store.pki import FleetCA, Role
from tests.cli import run_edgefabric

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


def test_a_gateway_cannot_publish_desired_state(clients: Clients) -> None:
    observer = Inbox()
    clients.connect("edgefabric-controller").subscribe(f"{topics.PREFIX}/#", observer)
    gateway = clients.connect(GATEWAY)
    gateway.publish(topics.device_desired("dev-a"), _token("forged"), wait=True)
    sentinel = _token("sentinel")
    gateway.publish(topics.device_infer("dev-a"), sentinel, wait=True)
    assert observer.before(topics.device_infer("dev-a"), sentinel) == []


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


# ------------------------------------------------------------------ the real agent and store


def test_an_enrolled_agent_syncs_its_desired_state_over_mutual_tls(
    fleet: Path, broker: PrivateBroker, clients: Clients, tmp_path: Path
) -> None:
    home = Path(shutil.copytree(fleet / "home", tmp_path / "home"))
    events: queue.Queue[Event] = queue.Queue()
    clients.connect("edgefabric-controller").subscribe(
        topics.device_events("dev-a"), lambda m: events.put(Event.FromString(m.payload))
    )
    service = fleet / "edgefabric-store"
    tls_args = [f"--mqtt-{kind}={service / f'{kind}.pem'}" for kind in ("ca", "cert", "key")]
    store = subprocess.Popen(
        [sys.executable, "-m", "edgefabric.cli", "store", "serve", "--broker", broker.url,
         "--home", str(home), *tls_args],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    agent: EdgeAgent | None = None
    try:
        assert store.stdout is not None
        assert "serving the repository" in store.stdout.readline()
        thread.start()
        creds = fleet / "dev-a"
        values: dict[str, Any] = {
            "device_id": "dev-a",
            "broker": broker.url,
            "mqtt_ca": creds / "ca.pem",
            "mqtt_cert": creds / "cert.pem",
            "mqtt_key": creds / "key.pem",
            "trust_root": home / "tuf" / "metadata" / "root.json",
            "data_dir": tmp_path / "device",
            "desired_key": home / "controller.pub",
            "grpc_port": 0,
        }
        agent = EdgeAgent(AgentSettings(**values))
        asyncio.run_coroutine_threadsafe(agent.start(), loop).result(TIMEOUT_S)
        controller = fleet / "edgefabric-controller"
        tls_args = [f"--mqtt-{kind}={controller / f'{kind}.pem'}" for kind in ("ca", "cert", "key")]
        run_edgefabric(home, "fleet", "assign", "dev-a", "mlp:1", "--broker", broker.url, *tls_args)
        kinds: list[str] = []
        while not kinds or kinds[-1] != "RECONCILED":
            kinds.append(Event.Kind.Name(events.get(timeout=TIMEOUT_S).kind))
        assert kinds == [
            "DESIRED_RECEIVED", "DOWNLOAD_STARTED", "VERIFIED", "SELF_TEST_PASSED", "SWITCHED",
            "RECONCILED",
        ]  # fmt: skip
    finally:
        if agent is not None:
            asyncio.run_coroutine_threadsafe(agent.stop(), loop).result(TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT_S)
        loop.close()
        store.terminate()
        store.wait(timeout=30)
        if store.stdout is not None:
            store.stdout.close()
