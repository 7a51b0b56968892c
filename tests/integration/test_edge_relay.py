"""KServe v2 relayed over MQTT to an edge agent that opens no inbound port.

Real parts throughout: mosquitto, ``edgefabric store serve`` with TUF, an in-process agent
started with ``grpc_listen=False`` (the fabric of tests/integration/test_edge_agent.py), a
gateway with ``--pool edge=mqtt://...`` and tritonclient calling the gateway. The agent's relay
is also probed directly on its topic, the way a misbehaving client would.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from edge_agent.relay import InferRelay
from edgefabric import relay, topics
from edgefabric.dataplane import DataPlane
from edgefabric.models.repository import ModelRepository
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import Message, MqttClient
from edgefabric.samples import MLP_CONFIG, mlp_model, write_model
from edgefabric.wire.v1.fleet_pb2 import Event
from edgefabric.wire.v1.relay_pb2 import RelayError
from gateway.pools.edge import EdgePool
from tests.conftest import GatewayThread
from tests.integration.gated import GatedRuntime
from tests.integration.test_edge_agent import (  # the agent fabric and its store, reused
    DEVICE,
    TIMEOUT_S,
    Fabric,
    fabric,  # noqa: F401
    store_home,  # noqa: F401
)
from tests.mqtt_broker import ConnectMqtt

pytestmark = pytest.mark.integration

BATCH = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)


class RelayProbe:
    """Publishes raw requests to an agent's relay topic and collects the answers."""

    def __init__(self, mqtt: MqttClient) -> None:
        self.mqtt = mqtt
        self.answers: queue.Queue[Message] = queue.Queue()
        mqtt.subscribe(topics.relay_responses(mqtt.client_id), self.answers.put)

    def send(
        self,
        device: str,
        payload: bytes,
        properties: list[tuple[str, str]] | None = None,
        *,
        response_topic: str | None = None,
    ) -> bytes:
        correlation = os.urandom(8)
        self.mqtt.publish(
            topics.device_infer(device),
            payload,
            response_topic=response_topic or topics.relay_response(self.mqtt.client_id, device),
            correlation_data=correlation,
            user_properties=properties or [],
            wait=True,
        )
        return correlation

    def answer(self, correlation: bytes) -> Message:
        message = self.answers.get(timeout=TIMEOUT_S)
        assert message.correlation_data == correlation
        return message

    def ask(self, device: str, payload: bytes, properties: list[tuple[str, str]] | None = None):
        return self.answer(self.send(device, payload, properties))


def status_of(message: Message) -> str:
    return dict(message.user_properties)[relay.STATUS_PROPERTY]


def error_of(message: Message) -> RelayError:
    return RelayError.FromString(message.payload)


def infer_request(model: str = "mlp", version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="probe")
    request.inputs.add(name="x", datatype="FP32", shape=list(BATCH.shape))
    request.raw_input_contents.append(BATCH.tobytes())
    return request


def local_ort() -> np.ndarray[Any, Any]:
    """What ONNX Runtime in this process makes of BATCH with the store's mlp:1."""
    session = ort.InferenceSession(
        mlp_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"x": BATCH})
    return np.asarray(logits)


def triton_infer(address: str, model: str = "mlp", version: str = "") -> np.ndarray[Any, Any]:
    client = grpcclient.InferenceServerClient(address)
    try:
        x = grpcclient.InferInput("x", list(BATCH.shape), "FP32")
        x.set_data_from_numpy(BATCH)
        result = client.infer(model, [x], model_version=version, client_timeout=TIMEOUT_S)
        logits: np.ndarray[Any, Any] | None = result.as_numpy("logits")
        assert logits is not None
        return logits
    finally:
        client.close()


def edge_pool(gateway: GatewayThread) -> EdgePool:
    router = gateway.gateway.router
    assert router is not None
    pool = router.pools["edge"]
    assert isinstance(pool, EdgePool)
    return pool


def wait_pool(gateway: GatewayThread, condition: Callable[[EdgePool], bool]) -> None:
    """Wait (on the gateway's loop, no polling) until ``condition`` holds for the edge pool."""
    pool = edge_pool(gateway)

    async def until() -> None:
        changed = asyncio.Event()
        remove = pool.add_listener(changed.set)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while not condition(pool):
                    await changed.wait()
                    changed.clear()
        finally:
            remove()

    gateway.call(until)


def serving(model: str, version: str = "1") -> Callable[[EdgePool], bool]:
    return lambda pool: any(a.available and a.serves.get(model) == version for a in pool.agents())


@pytest.fixture
def portless(fabric: Fabric) -> Fabric:  # noqa: F811
    """The fabric's agent started with no inbound port, serving mlp:1."""
    fabric.start_agent(grpc_listen=False)
    fabric.desire(("mlp", 1))
    fabric.wait_for(Event.RECONCILED)
    return fabric


def gateway_for(
    start_gateway: Callable[..., GatewayThread], broker: PrivateBroker, repository: Path, **extra
) -> GatewayThread:
    return start_gateway(repository, pools=(f"edge={broker.url}",), **extra)


def test_the_gateway_answers_through_an_agent_with_no_inbound_port(
    portless: Fabric, start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    agent = portless.agent
    assert agent is not None
    assert agent.relay is not None
    assert not agent.server.listening
    birth = portless.status.get(timeout=TIMEOUT_S)
    assert (birth.online, birth.grpc_endpoint) == (True, "")
    empty = tmp_path / "empty"
    empty.mkdir()
    gateway = gateway_for(start_gateway, portless.broker, empty)
    wait_pool(gateway, serving("mlp"))

    logits = triton_infer(gateway.address)

    np.testing.assert_allclose(logits, local_ort(), rtol=1e-6, atol=1e-7)
    assert agent.relay.counters.answered == 1
    client = grpcclient.InferenceServerClient(gateway.address)
    try:
        assert client.is_model_ready("mlp")
        metadata = client.get_model_metadata("mlp")  # relayed as ModelMetadata
        assert [(i.name, i.datatype) for i in metadata.inputs] == [("x", "FP32")]
        assert list(metadata.versions) == ["1"]
    finally:
        client.close()
    with pytest.raises(InferenceServerException) as unknown:
        triton_infer(gateway.address, model="nope")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as wrong_version:
        triton_infer(gateway.address, version="7")
    assert wrong_version.value.status() == "StatusCode.NOT_FOUND"
    assert "no version 7" in wrong_version.value.message()
    assert edge_pool(gateway).stats().latency_ewma_s is not None  # fed to the routing policy


def test_bad_expired_and_misaddressed_relay_requests(
    portless: Fabric, connect_mqtt: ConnectMqtt
) -> None:
    agent = portless.agent
    assert agent is not None
    assert agent.relay is not None
    stats_before = agent.server.data.statistics("mlp")[0][2].execution_count
    probe = RelayProbe(connect_mqtt(portless.broker))

    garbage = probe.ask(DEVICE, b"\xff\x00 not protobuf")
    assert status_of(garbage) == "INVALID_ARGUMENT"
    assert "not a serialized inference.ModelInferRequest" in error_of(garbage).message

    wrong_rpc = probe.ask(DEVICE, b"", [(relay.RPC_PROPERTY, "ModelLoad")])
    assert status_of(wrong_rpc) == "INVALID_ARGUMENT"
    assert "expected one of" in error_of(wrong_rpc).message

    unknown = probe.ask(DEVICE, infer_request("nope").SerializeToString())
    assert (status_of(unknown), error_of(unknown).code) == ("NOT_FOUND", "NOT_FOUND")

    past = str(int(time.time() * 1000) - 1000)
    expired = probe.ask(
        DEVICE, infer_request().SerializeToString(), [(relay.DEADLINE_PROPERTY, past)]
    )
    assert status_of(expired) == "DEADLINE_EXCEEDED"
    assert "it was not run" in error_of(expired).message
    assert agent.server.data.statistics("mlp")[0][2].execution_count == stats_before

    # Answers go only to ef/v1/relay/resp/{client}/{this device}: these are dropped (not
    # even a topic naming another device), the next one is answered.
    for forged in (
        topics.device_status(DEVICE),
        topics.relay_response(probe.mqtt.client_id, "dev-2"),
        f"{topics.PREFIX}/relay/resp/{probe.mqtt.client_id}",  # the old layout
    ):
        probe.send(DEVICE, infer_request().SerializeToString(), response_topic=forged)
    ok = probe.ask(DEVICE, infer_request().SerializeToString())
    assert status_of(ok) == relay.STATUS_OK
    response = pb.ModelInferResponse.FromString(ok.payload)
    logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(3, 8)
    np.testing.assert_allclose(logits, local_ort(), rtol=1e-6, atol=1e-7)
    assert agent.relay.counters.unanswerable == 3
    assert agent.relay.counters.expired == 1
    assert agent.server.data.statistics("mlp")[0][2].execution_count == stats_before + 1
    status = portless.status.get(timeout=TIMEOUT_S)  # the retained birth, not the probe's bytes
    assert status.online
    assert status.device_id == DEVICE
    assert portless.status.empty()


def test_a_stopped_agent_is_unavailable_or_fails_over_to_local(
    portless: Fabric, start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    local = tmp_path / "local"
    write_model(local, "mlp", mlp_model(), config=MLP_CONFIG)
    edge_only = gateway_for(start_gateway, portless.broker, empty)
    with_fallback = gateway_for(start_gateway, portless.broker, local, routes=("mlp=edge:1,local",))
    for gateway in (edge_only, with_fallback):
        wait_pool(gateway, serving("mlp"))
    agent = portless.agent
    assert agent is not None
    assert agent.relay is not None
    triton_infer(with_fallback.address)
    assert agent.relay.counters.answered == 1  # the route sends mlp to the edge first

    portless.stop_agent()  # publishes its offline status
    for gateway in (edge_only, with_fallback):
        wait_pool(gateway, lambda pool: not pool.healthy)

    with pytest.raises(InferenceServerException) as down:
        triton_infer(edge_only.address)
    assert down.value.status() == "StatusCode.UNAVAILABLE"
    np.testing.assert_allclose(
        triton_infer(with_fallback.address), local_ort(), rtol=1e-6, atol=1e-7
    )
    assert agent.relay.counters.answered == 1


class _RelayOnLoop:
    """An InferRelay over a gated data plane, on an event loop thread of its own."""

    def __init__(self, repository: Path, mqtt: MqttClient, max_in_flight: int) -> None:
        self.runtime = GatedRuntime()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.repository = ModelRepository(repository, self.runtime)
        self.data = DataPlane(self.repository)
        self.relay = InferRelay(self.data, "gated-1", max_in_flight=max_in_flight)

        async def start() -> None:
            await self.repository.load_all()
            self.data.set_ready(True)
            await self.relay.attach(mqtt)

        self.call(start)

    def call(self, factory: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(factory(), self.loop).result(TIMEOUT_S)

    def close(self) -> None:
        self.runtime.gate.opened.set()
        self.call(self.relay.stop)
        self.repository.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT_S)
        self.loop.close()


@pytest.fixture
def gated_relay(
    shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, tmp_path: Path
) -> Iterator[_RelayOnLoop]:
    write_model(tmp_path / "repo", "mlp", mlp_model(), config=MLP_CONFIG)
    running = _RelayOnLoop(tmp_path / "repo", connect_mqtt(shared_mqtt_broker), max_in_flight=1)
    yield running
    running.close()


def test_relayed_requests_past_the_bound_are_refused_at_once(
    gated_relay: _RelayOnLoop, shared_mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt
) -> None:
    probe = RelayProbe(connect_mqtt(shared_mqtt_broker))
    held = probe.send("gated-1", infer_request().SerializeToString())
    gated_relay.runtime.gate.wait_entered()  # the first request runs, held at the gate

    shed = probe.ask("gated-1", infer_request().SerializeToString())

    assert status_of(shed) == "RESOURCE_EXHAUSTED"
    assert error_of(shed).retry_after_ms > 0
    assert "relay bound" in error_of(shed).message
    gated_relay.runtime.gate.opened.set()
    assert status_of(probe.answer(held)) == relay.STATUS_OK
    assert gated_relay.relay.counters.shed == 1
