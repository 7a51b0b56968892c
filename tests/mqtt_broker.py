"""Private mosquitto brokers and connected MQTT clients for the tests (fixtures in conftest).

A missing mosquitto fails the tests with the install hint rather than skipping them: ``make test``
installs it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, MqttClient

ConnectMqtt = Callable[..., MqttClient]


def unique_client_id(prefix: str = "test") -> str:
    """A client id no other test on a shared broker uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A mosquitto of this test's own (it may stop, kill or restart it)."""
    with PrivateBroker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def shared_mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """One mosquitto for tests that only publish and subscribe; never stop it."""
    with PrivateBroker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def connect_mqtt() -> Iterator[ConnectMqtt]:
    """``connect_mqtt(broker, client_id=None, **options)``: a connected client, closed after
    the test."""
    clients: list[MqttClient] = []

    def connect(broker: PrivateBroker, client_id: str | None = None, **options: Any) -> MqttClient:
        client = MqttClient(
            BrokerAddress.parse(broker.url), client_id or unique_client_id(), **options
        )
        clients.append(client)
        client.connect(timeout_s=10)
        return client

    yield connect
    for client in clients:
        client.close()
