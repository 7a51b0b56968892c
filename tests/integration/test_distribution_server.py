"""The repository distribution server and RepoClient over a real mosquitto."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from edgefabric import topics
from edgefabric.errors import IntegrityError, TransportError
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import MqttClient
from edgefabric.repo_client import RepoClient
from edgefabric.wire.v1.repo_pb2 import RepoRequest, RepoResponse
from model_store.distribution import DistributionServer, RepoResponder
from tests.mqtt_broker import ConnectMqtt, unique_client_id

pytestmark = pytest.mark.integration

TIMESTAMP = b'{"signed": {"_type": "timestamp", "version": 3}}'
MODEL = os.urandom(1024 * 1024 + 123)
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
MODEL_PATH = f"targets/models/mlp/3/{MODEL_SHA}.model.onnx"


class BlobStore:
    """Metadata in memory, targets as content-addressed files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / MODEL_SHA).write_bytes(MODEL)
        self.before_open: Callable[[], None] = lambda: None

    def read_metadata(self, name: str) -> bytes | None:
        return TIMESTAMP if name == "timestamp.json" else None

    def open_target(self, sha256: str) -> BinaryIO | None:
        self.before_open()
        path = self.root / sha256
        return path.open("rb") if path.exists() else None


def serve(
    broker: PrivateBroker,
    connect_mqtt: ConnectMqtt,
    store: BlobStore,
    chunk_size: int,
    share_group: str | None = None,
    **options: int,
) -> MqttClient:
    mqtt = connect_mqtt(broker, unique_client_id("store"), **options)
    responder = RepoResponder(store.read_metadata, store.open_target, chunk_size=chunk_size)
    DistributionServer(mqtt, responder, share_group=share_group).start()
    return mqtt


def client_for(
    broker: PrivateBroker, connect_mqtt: ConnectMqtt, *, timeout_s: float = 10, attempts: int = 3
) -> tuple[RepoClient, MqttClient]:
    client_id = unique_client_id("device")
    mqtt = connect_mqtt(broker, client_id)
    return RepoClient(mqtt, client_id, timeout_s, attempts=attempts), mqtt


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_fetches_metadata_and_a_chunked_target(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, store: BlobStore
) -> None:
    serve(shared_mqtt_broker, connect_mqtt, store, chunk_size=128 * 1024)
    client, _ = client_for(shared_mqtt_broker, connect_mqtt)

    assert client.fetch_all("metadata/timestamp.json") == TIMESTAMP
    first = client.fetch(MODEL_PATH)
    assert (first.status, len(first.data), first.total_length) == (
        RepoResponse.OK,
        128 * 1024,
        len(MODEL),
    )
    assert client.fetch_all(MODEL_PATH) == MODEL


def test_missing_files_are_absent(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, store: BlobStore
) -> None:
    serve(shared_mqtt_broker, connect_mqtt, store, chunk_size=4096)
    client, _ = client_for(shared_mqtt_broker, connect_mqtt)

    assert client.fetch("metadata/4.snapshot.json").status == RepoResponse.ABSENT
    assert client.fetch_all("metadata/4.snapshot.json") is None
    assert client.fetch_all(f"targets/models/{'0' * 64}.model.onnx") is None


def test_bad_requests_and_oversized_files_raise(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, store: BlobStore
) -> None:
    serve(shared_mqtt_broker, connect_mqtt, store, chunk_size=4096)
    client, _ = client_for(shared_mqtt_broker, connect_mqtt)

    with pytest.raises(TransportError, match="BAD_REQUEST"):
        client.fetch_all("metadata/../../etc/passwd")
    with pytest.raises(IntegrityError, match="more than the 1000 expected"):
        client.fetch_all(MODEL_PATH, max_length=1000)


def test_chunks_shrink_to_fit_the_brokers_packet_limit(
    tmp_path: Path, connect_mqtt: ConnectMqtt, store: BlobStore
) -> None:
    with PrivateBroker(tmp_path / "limited", max_packet_size=64 * 1024) as broker:
        server = serve(broker, connect_mqtt, store, chunk_size=1024 * 1024)
        client, device = client_for(broker, connect_mqtt)

        first = client.fetch(MODEL_PATH, max_length=1024 * 1024)
        assert first.status == RepoResponse.OK
        assert 60 * 1024 < len(first.data) < 64 * 1024
        assert client.fetch_all(MODEL_PATH) == MODEL
        for mqtt in (server, device):
            mqtt.close()  # before the broker goes, or close() waits out a reconnect back-off


def test_answers_go_only_to_the_requesters_own_topic(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, store: BlobStore
) -> None:
    serve(shared_mqtt_broker, connect_mqtt, store, chunk_size=4096)
    client_id = unique_client_id("device")
    mqtt = connect_mqtt(shared_mqtt_broker, client_id)
    request = RepoRequest(path="metadata/timestamp.json").SerializeToString()

    with pytest.raises(TransportError, match="no reply"):
        mqtt.request(
            topics.repo_request(client_id),
            request,
            response_topic=topics.device_desired("victim"),
            timeout_s=0.3,
        )
    reply = mqtt.request(
        topics.repo_request(client_id),
        request,
        response_topic=topics.repo_response(client_id),
        timeout_s=10,
    )
    assert RepoResponse.FromString(reply.payload).data == TIMESTAMP


def test_transfer_resumes_after_the_broker_dies_mid_transfer(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, store: BlobStore
) -> None:
    # The broker is back before the server notices; reconnecting at once, it subscribes again
    # before the device (1 s back-off) retries, so no retry is lost.
    serve(mqtt_broker, connect_mqtt, store, chunk_size=256 * 1024, reconnect_min_delay_s=0)
    client, _ = client_for(mqtt_broker, connect_mqtt, timeout_s=5, attempts=3)
    opened = 0
    killed = threading.Event()

    def kill_during_the_third_chunk() -> None:
        nonlocal opened
        opened += 1
        if opened == 3:
            mqtt_broker.kill()
            mqtt_broker.start()
            killed.set()

    store.before_open = kill_during_the_third_chunk
    assert client.fetch_all(MODEL_PATH) == MODEL
    assert killed.is_set()


def test_servers_in_a_share_group_answer_each_request_once(
    mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, store: BlobStore
) -> None:
    opened = 0

    def count() -> None:
        nonlocal opened
        opened += 1

    store.before_open = count
    for _ in range(2):
        serve(mqtt_broker, connect_mqtt, store, chunk_size=256 * 1024, share_group="store")
    client, _ = client_for(mqtt_broker, connect_mqtt)

    assert client.fetch_all(MODEL_PATH) == MODEL
    assert opened == 5  # 1 MiB + 123 bytes in 256 KiB chunks, each served by one server
