"""edgefabric.mqtt against a real mosquitto on loopback."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgefabric.errors import TransportError
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, Will
from tests.mqtt_broker import ConnectMqtt, unique_client_id

pytestmark = pytest.mark.integration

WAIT_S = 10.0

# A device that announces itself and then dies without a DISCONNECT (SIGKILL).
DYING_DEVICE = """
import sys, threading
from edgefabric.mqtt import BrokerAddress, MqttClient, Will
url, client_id, topic = sys.argv[1:4]
client = MqttClient(BrokerAddress.parse(url), client_id, will=Will(topic, b"offline"))
client.connect()
client.publish(topic, b"online", retain=True, wait=True)
threading.Event().wait()
"""


def collect(client: MqttClient, topic_filter: str) -> queue.Queue[Message]:
    """Subscribe and return the queue the messages arrive in."""
    received: queue.Queue[Message] = queue.Queue()
    client.subscribe(topic_filter, received.put)
    return received


def test_publish_reaches_subscriber_with_properties(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    topic = f"test/{unique_client_id()}/pub"
    subscriber = connect_mqtt(shared_mqtt_broker)
    publisher = connect_mqtt(shared_mqtt_broker)
    received = collect(subscriber, topic.rsplit("/", 1)[0] + "/+")

    publisher.publish(topic, b"\x00payload", user_properties=[("model", "mlp")], wait=True)

    message = received.get(timeout=WAIT_S)
    assert (message.topic, message.payload, message.qos, message.retain) == (
        topic,
        b"\x00payload",
        1,
        False,
    )
    assert message.user_properties == (("model", "mlp"),)


def test_concurrent_requests_each_get_their_own_reply(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    prefix = f"test/{unique_client_id()}"
    responder = connect_mqtt(shared_mqtt_broker)
    requester = connect_mqtt(shared_mqtt_broker)

    def answer(message: Message) -> None:
        assert message.response_topic is not None
        responder.publish(
            message.response_topic,
            message.payload.upper(),
            correlation_data=message.correlation_data,
        )

    responder.subscribe(f"{prefix}/req", answer)

    def ask(word: str) -> bytes:
        reply = requester.request(
            f"{prefix}/req", word.encode(), response_topic=f"{prefix}/resp", timeout_s=WAIT_S
        )
        return reply.payload

    words = [f"word{i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, words))
    assert replies == [word.upper().encode() for word in words]


def test_request_without_responder_times_out(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    requester = connect_mqtt(shared_mqtt_broker)
    topic = f"test/{unique_client_id()}/nobody"
    with pytest.raises(TransportError, match="no reply"):
        requester.request(topic, b"?", response_topic=f"{topic}/resp", timeout_s=0.2)


def test_failing_handler_does_not_stop_delivery(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    topic = f"test/{unique_client_id()}/flaky"
    subscriber = connect_mqtt(shared_mqtt_broker)
    publisher = connect_mqtt(shared_mqtt_broker)
    received: queue.Queue[bytes] = queue.Queue()

    def flaky(message: Message) -> None:
        if message.payload == b"boom":
            raise RuntimeError("handler bug")
        received.put(message.payload)

    subscriber.subscribe(topic, flaky)
    publisher.publish(topic, b"boom")
    publisher.publish(topic, b"fine")
    assert received.get(timeout=WAIT_S) == b"fine"


def test_last_will_marks_a_killed_device_offline(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    device = unique_client_id("device")
    topic = f"test/{device}/status"
    observer = connect_mqtt(shared_mqtt_broker)
    statuses = collect(observer, topic)
    process = subprocess.Popen(
        [sys.executable, "-c", DYING_DEVICE, shared_mqtt_broker.url, device, topic],
        stderr=subprocess.PIPE,
    )
    try:
        try:
            birth = statuses.get(timeout=WAIT_S)
        except queue.Empty:
            process.kill()
            pytest.fail(f"the device never came online: {process.communicate()[1].decode()}")
        assert birth.payload == b"online"
        process.kill()
        process.wait()
        assert statuses.get(timeout=WAIT_S).payload == b"offline"
    finally:
        process.kill()
        process.communicate()

    late = collect(connect_mqtt(shared_mqtt_broker), topic).get(timeout=WAIT_S)
    assert (late.payload, late.retain) == (b"offline", True)


def test_clean_close_does_not_publish_the_will(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    topic = f"test/{unique_client_id()}/status"
    device = connect_mqtt(shared_mqtt_broker, will=Will(topic, b"offline"))
    device.publish(topic, b"online", retain=True, wait=True)
    device.close()
    marker = f"{topic}/marker"
    observer = connect_mqtt(shared_mqtt_broker)
    statuses = collect(observer, f"{topic}/#")
    observer.publish(marker, b"end")  # delivered after any will, so the queue is complete
    seen: list[bytes] = []
    while not seen or seen[-1] != b"end":
        seen.append(statuses.get(timeout=WAIT_S).payload)
    assert b"offline" not in seen


def test_reconnects_and_resubscribes_after_broker_restart(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    subscriber = connect_mqtt(mqtt_broker, reconnect_min_delay_s=1)
    publisher = connect_mqtt(mqtt_broker, reconnect_min_delay_s=1)
    received = collect(subscriber, "test/after-restart")
    changes: queue.Queue[bool] = queue.Queue()
    subscriber.on_connection_change(changes.put)
    port = mqtt_broker.port

    mqtt_broker.restart()

    assert mqtt_broker.port == port
    assert changes.get(timeout=WAIT_S) is False
    assert changes.get(timeout=WAIT_S) is True
    assert publisher.wait_connected(WAIT_S)
    # Not retained: reported reconnected means the re-subscription was acknowledged.
    publisher.publish("test/after-restart", b"still here", wait=True)
    assert received.get(timeout=WAIT_S).payload == b"still here"


def test_connecting_to_a_stopped_broker_raises_transport_error(
    mqtt_broker: PrivateBroker,
) -> None:
    mqtt_broker.stop()
    client = MqttClient(BrokerAddress.parse(mqtt_broker.url), unique_client_id())
    try:
        with pytest.raises(
            TransportError, match=f"cannot connect to MQTT broker {mqtt_broker.url}"
        ):
            client.connect(timeout_s=WAIT_S)
        mqtt_broker.start()
        client.connect(timeout_s=WAIT_S)  # a failed connect() may be retried
        assert client.connected
    finally:
        client.close()


def test_broker_announces_its_maximum_packet_size(
    tmp_path: Path, connect_mqtt: ConnectMqtt
) -> None:
    with PrivateBroker(tmp_path / "limited", max_packet_size=65536) as broker:
        client = connect_mqtt(broker)
        assert client.max_packet_size == 65536
        client.close()  # before the broker goes, or close() waits out a reconnect back-off


def test_request_from_a_handler_is_refused(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    client = connect_mqtt(shared_mqtt_broker)
    topic = f"test/{unique_client_id()}/nested"
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def nested(_message: Message) -> None:
        try:
            client.request(f"{topic}/x", b"", response_topic=f"{topic}/r", timeout_s=1)
        except TransportError as error:
            outcome.put(error)
        else:
            outcome.put(None)

    client.subscribe(topic, nested)
    client.publish(topic, b"go")
    assert isinstance(outcome.get(timeout=WAIT_S), TransportError)


def test_handlers_run_one_at_a_time_on_the_network_thread(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    topic = f"test/{unique_client_id()}/thread"
    client = connect_mqtt(shared_mqtt_broker)
    threads: queue.Queue[int] = queue.Queue()
    client.subscribe(topic, lambda _message: threads.put(threading.get_ident()))
    client.publish(topic, b"1")
    client.publish(topic, b"2")
    first, second = threads.get(timeout=WAIT_S), threads.get(timeout=WAIT_S)
    assert first == second != threading.get_ident()


def test_reports_reconnected_only_once_the_subscriptions_are_restored(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    subscriber = connect_mqtt(mqtt_broker, reconnect_min_delay_s=1)
    for index in range(50):  # a backlog of SUBSCRIBEs for the broker to work through
        subscriber.subscribe(f"test/restored/{index}", lambda _message: None)
    received = collect(subscriber, "test/restored/last")
    publisher: list[MqttClient] = []
    publisher_ready = threading.Event()
    published = threading.Event()

    def publish_on_report(connected: bool) -> None:  # the instant the subscriber says so
        if connected and publisher_ready.wait(WAIT_S):
            publisher[0].publish("test/restored/last", b"right after", qos=1)
            published.set()

    subscriber.on_connection_change(publish_on_report)

    mqtt_broker.restart()
    publisher.append(connect_mqtt(mqtt_broker))
    publisher_ready.set()

    assert published.wait(WAIT_S), "the subscriber never reported itself reconnected"
    assert received.get(timeout=WAIT_S).payload == b"right after"
    assert subscriber.refused_subscriptions == {}
