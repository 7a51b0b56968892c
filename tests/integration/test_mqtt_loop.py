"""Many MqttClients on one MqttLoop thread, against a real mosquitto."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttLoop, Will
from tests.mqtt_broker import ConnectMqtt, unique_client_id

pytestmark = pytest.mark.integration

WAIT_S = 10.0


@pytest.fixture
def loop() -> Iterator[MqttLoop]:
    with MqttLoop(name="test-loop") as running:
        yield running


def loop_client(broker: PrivateBroker, loop: MqttLoop, **options: object) -> MqttClient:
    client = MqttClient(
        BrokerAddress.parse(broker.url),
        unique_client_id("loop"),
        loop=loop,
        **options,  # type: ignore[arg-type]
    )
    client.connect(WAIT_S)
    return client


def test_more_clients_than_select_can_watch_share_one_thread(
    shared_mqtt_broker: PrivateBroker, loop: MqttLoop
) -> None:
    """1,100 connections: paho's own loop (select) fails past descriptor 1023."""
    threads_before = set(threading.enumerate())
    clients = [loop_client(shared_mqtt_broker, loop) for _ in range(1100)]
    try:
        assert set(threading.enumerate()) <= threads_before  # no thread per client
        received: queue.Queue[str] = queue.Queue()
        prefix = f"test/{unique_client_id()}"
        last = clients[-1]
        last.subscribe(f"{prefix}/+", lambda message: received.put(message.topic))
        clients[0].publish(f"{prefix}/first", b"x", wait=True)
        assert received.get(timeout=WAIT_S) == f"{prefix}/first"
    finally:
        for client in clients:
            client.close()


def test_handlers_run_on_the_loop_and_may_publish(
    shared_mqtt_broker: PrivateBroker, loop: MqttLoop, connect_mqtt: ConnectMqtt
) -> None:
    prefix = f"test/{unique_client_id()}"
    echo = loop_client(shared_mqtt_broker, loop)
    threads: list[int] = []

    def answer(message: Message) -> None:
        threads.append(threading.get_ident())
        echo.publish(f"{prefix}/answer", message.payload.upper())

    echo.subscribe(f"{prefix}/ask", answer)
    watcher = connect_mqtt(shared_mqtt_broker)
    answers: queue.Queue[bytes] = queue.Queue()
    watcher.subscribe(f"{prefix}/answer", lambda message: answers.put(message.payload))
    for word in (b"one", b"two"):
        watcher.publish(f"{prefix}/ask", word, wait=True)
    assert [answers.get(timeout=WAIT_S), answers.get(timeout=WAIT_S)] == [b"ONE", b"TWO"]
    assert set(threads) == {loop.thread_ident}
    echo.close()


def test_reconnects_and_resubscribes_after_broker_restart(
    mqtt_broker: PrivateBroker, loop: MqttLoop, connect_mqtt: ConnectMqtt
) -> None:
    client = loop_client(mqtt_broker, loop, reconnect_min_delay_s=1)
    received: queue.Queue[bytes] = queue.Queue()
    client.subscribe("test/loop-restart", lambda message: received.put(message.payload))
    changes: queue.Queue[bool] = queue.Queue()
    client.on_connection_change(changes.put)

    mqtt_broker.restart()

    assert changes.get(timeout=WAIT_S) is False
    assert changes.get(timeout=WAIT_S) is True
    publisher = connect_mqtt(mqtt_broker)
    publisher.publish("test/loop-restart", b"back", wait=True)
    assert received.get(timeout=WAIT_S) == b"back"
    client.close()


def test_close_disconnects_cleanly_so_the_will_is_not_sent(
    shared_mqtt_broker: PrivateBroker, loop: MqttLoop, connect_mqtt: ConnectMqtt
) -> None:
    topic = f"test/{unique_client_id()}/will"
    watcher = connect_mqtt(shared_mqtt_broker)
    seen: queue.Queue[bytes] = queue.Queue()
    watcher.subscribe(topic, lambda message: seen.put(message.payload))
    client = loop_client(shared_mqtt_broker, loop, will=Will(topic, b"died", retain=False))
    client.publish(topic, b"hello", wait=True)

    client.close()
    watcher.publish(topic, b"after", wait=True)

    assert [seen.get(timeout=WAIT_S), seen.get(timeout=WAIT_S)] == [b"hello", b"after"]


def test_connecting_before_the_loop_runs_is_a_clear_error(
    shared_mqtt_broker: PrivateBroker,
) -> None:
    idle = MqttLoop(name="not-started")
    client = MqttClient(BrokerAddress.parse(shared_mqtt_broker.url), "early", loop=idle)
    with pytest.raises(RuntimeError, match="start MQTT loop 'not-started'"):
        client.connect(WAIT_S)
    idle.close()
