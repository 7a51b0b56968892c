"""The MQTT relay's wire, topics and settings, and the edge pool's choice of agent (no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from edge_agent.settings import AgentSettings
from edgefabric import relay, topics
from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    TransportError,
    UnsupportedError,
)
from edgefabric.mqtt import Message
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Health, SlotReport
from gateway.pools.edge import EdgePool
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit


def test_a_request_round_trips_with_its_rpc_and_deadline() -> None:
    request = pb.ModelInferRequest(model_name="mlp", id="r1")
    properties = relay.request_properties("ModelInfer", 1_700_000_000.1234)
    rpc, decoded, deadline = relay.decode_request(properties, request.SerializeToString())
    assert (rpc, decoded.model_name, decoded.id) == ("ModelInfer", "mlp", "r1")
    assert deadline == pytest.approx(1_700_000_000.124)  # rounded up to the millisecond


def test_a_request_without_properties_is_a_model_infer_without_deadline() -> None:
    rpc, _, deadline = relay.decode_request([], pb.ModelInferRequest().SerializeToString())
    assert (rpc, deadline) == ("ModelInfer", None)


@pytest.mark.parametrize(
    ("properties", "payload", "message"),
    [
        ([("ef-rpc", "ModelLoad")], b"", r"ef-rpc='ModelLoad': expected one of \['ModelConfig'"),
        ([("ef-deadline-ms", "soon")], b"", r"ef-deadline-ms='soon': expected Unix time"),
        ([("ef-deadline-ms", "-5")], b"", "digits only"),
        ([], b"\xff\x00junk", r"not a serialized inference\.ModelInferRequest"),
    ],
)
def test_malformed_requests_say_what_was_expected(
    properties: list[tuple[str, str]], payload: bytes, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        relay.decode_request(properties, payload)


def test_relaying_an_unknown_rpc_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="cannot relay 'ServerLive'"):
        relay.request_properties("ServerLive", None)


@pytest.mark.parametrize(
    "error",
    [
        InvalidInputError("input 'x': bad"),
        ModelNotFoundError("no model 'nope'"),
        ModelNotReadyError("loading"),
        DeadlineExceededError("too late"),
        UnsupportedError("no"),
        InternalError("internal error; correlation id abc"),
    ],
)
def test_error_answers_come_back_as_the_same_project_error(error: EdgefabricError) -> None:
    properties, payload = relay.encode_error(error)
    with pytest.raises(type(error), match=str(error)):
        relay.decode_reply("ModelInfer", properties, payload, source="agent 'a'")


def test_overload_keeps_its_retry_hint_and_transport_failures_read_unavailable() -> None:
    properties, payload = relay.encode_error(OverloadedError("busy", 50))
    assert properties == [("ef-status", "RESOURCE_EXHAUSTED")]
    with pytest.raises(OverloadedError) as raised:
        relay.decode_reply("ModelInfer", properties, payload, source="agent 'a'")
    assert raised.value.retry_after_ms == 50
    properties, payload = relay.encode_error(TransportError("broker gone"))
    with pytest.raises(ModelNotReadyError, match="broker gone"):  # UNAVAILABLE: retryable
        relay.decode_reply("ModelInfer", properties, payload, source="agent 'a'")


def test_ok_answers_decode_and_malformed_answers_are_internal() -> None:
    response = pb.ModelInferResponse(model_name="mlp", id="r1")
    ok = [("ef-status", "OK")]
    decoded = relay.decode_reply("ModelInfer", ok, response.SerializeToString(), source="a")
    assert decoded.id == "r1"
    with pytest.raises(InternalError, match="agent 'a' answered ModelInfer without the ef-status"):
        relay.decode_reply("ModelInfer", [], b"", source="agent 'a'")
    with pytest.raises(InternalError, match="unreadable payload"):
        relay.decode_reply("ModelInfer", ok, b"\xff\x00", source="agent 'a'")


def test_relay_and_device_topics() -> None:
    assert topics.relay_response("gw-1", "dev-1") == "ef/v1/relay/resp/gw-1/dev-1"
    assert topics.relay_responses("gw-1") == "ef/v1/relay/resp/gw-1/+"
    assert topics.parse_relay_response("ef/v1/relay/resp/gw-1/dev-1") == ("gw-1", "dev-1")
    for not_one in (
        "ef/v1/dev/dev-1/status",
        "ef/v1/relay/resp/gw-1",
        "ef/v1/relay/resp/gw-1/",
        "ef/v1/relay/resp/gw-1/dev-1/x",
        "ef/v1/relay/resp/+/dev-1",
        "ef/v1/relay/resp/gw-1/#",
    ):
        assert topics.parse_relay_response(not_one) is None, not_one
    assert topics.parse_device_topic("ef/v1/dev/dev-1/health") == ("dev-1", "health")
    assert topics.parse_device_topic("ef/v1/dev/dev-1/x/y") is None
    assert topics.parse_device_topic("ef/v1/repo/req/c") is None
    with pytest.raises(ValueError, match="client id 'a/b' cannot be an MQTT topic level"):
        topics.relay_response("a/b", "dev-1")
    with pytest.raises(ValueError, match="device id '\\+' cannot be an MQTT topic level"):
        topics.relay_response("gw-1", "+")


# -- settings ----------------------------------------------------------------------------------


def _gateway(repository: Path, pool: str) -> GatewaySettings:
    values: dict[str, object] = {"model_repository": repository, "pools": (pool,)}
    return GatewaySettings(**values)  # type: ignore[arg-type]


def test_the_gateway_accepts_mqtt_pools_and_names_what_it_refuses(tmp_path: Path) -> None:
    assert _gateway(tmp_path, "edge=mqtt://127.0.0.1:1883").pools == ("edge=mqtt://127.0.0.1:1883",)
    assert _gateway(tmp_path, "edge=mqtts://broker:8883").mqtt_tls() is None  # system CAs
    with pytest.raises(ValidationError, match=r"expected NAME=grpc://HOST:PORT, NAME=mqtt://"):
        _gateway(tmp_path, "edge=ws://broker:8883")
    with pytest.raises(ValidationError, match="the port is not a number"):
        _gateway(tmp_path, "edge=mqtt://broker:http")


def test_an_agent_must_serve_somehow(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("{}")
    values = {
        "device_id": "cam-1",
        "broker": "mqtt://127.0.0.1:1883",
        "trust_root": root,
        "data_dir": tmp_path / "data",
        "allow_unsigned_desired": True,
    }
    portless = AgentSettings(**values, grpc_listen=False)  # type: ignore[arg-type]
    assert portless.relay_max_in_flight == 8
    with pytest.raises(ValidationError, match="the device could serve no one"):
        AgentSettings(**values, grpc_listen=False, relay_max_in_flight=0)  # type: ignore[arg-type]


# -- the edge pool's view of the fleet ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _status(device: str, *, online: bool = True, site: str = "") -> Message:
    labels = {"site": site} if site else {}
    status = DeviceStatus(device_id=device, online=online, labels=labels)
    return Message(topics.device_status(device), status.SerializeToString(), 1, True)


def _health(device: str, **versions: int) -> Message:
    slots = [
        SlotReport(model=name, version=version, state="READY", active=True)
        for name, version in versions.items()
    ]
    slots.append(SlotReport(model="old", version=1, state="UNLOADED", active=False))
    health = Health(device_id=device, slots=slots)
    return Message(topics.device_health(device), health.SerializeToString(), 0, False)


@pytest.fixture
def pool() -> tuple[EdgePool, Clock]:
    clock = Clock()
    edge = EdgePool("edge", "mqtt://127.0.0.1:1883", stale_after_s=10, clock=clock)
    for message in (
        _status("a", site="plant-1"),
        _status("b", site="plant-2"),
        _status("c", site="plant-2"),
        _health("a", mlp=1),
        _health("b", mlp=2),
        _health("c", mlp=2, cnn=1),
    ):
        edge._fleet_message(message)  # what the loop runs for each message paho hands over
    return edge, clock


def _chosen(edge: EdgePool, model: str, version: str = "", site: str = "") -> list[str]:
    return [agent.device_id for agent in edge._candidates(model, version, site)]


def test_models_and_versions_come_from_active_ready_slots(pool: tuple[EdgePool, Clock]) -> None:
    edge, _ = pool
    assert {name: m.versions for name, m in edge.models().items()} == {
        "cnn": ("1",),
        "mlp": ("1", "2"),
    }
    assert _chosen(edge, "mlp", "2") == ["b", "c"]
    assert _chosen(edge, "old") == []


def test_agents_at_the_requested_site_come_first_then_the_least_busy(
    pool: tuple[EdgePool, Clock],
) -> None:
    edge, _ = pool
    assert _chosen(edge, "mlp", site="plant-1") == ["a", "b", "c"]
    edge._agents["b"].in_flight = 2
    assert _chosen(edge, "mlp", site="plant-2") == ["c", "b", "a"]
    assert _chosen(edge, "mlp")[0] in {"a", "c"}


def test_offline_stale_and_cleared_agents_get_no_requests(pool: tuple[EdgePool, Clock]) -> None:
    edge, clock = pool
    edge._fleet_message(_status("a", online=False))
    assert _chosen(edge, "mlp") == ["b", "c"]
    assert "mlp" in edge.models()  # still known: UNAVAILABLE, not NOT_FOUND, while it is away
    clock.now += 11
    edge._fleet_message(_health("c", mlp=2, cnn=1))
    assert _chosen(edge, "mlp") == ["c"]  # b's last report is older than stale_after_s
    edge._fleet_message(Message(topics.device_status("c"), b"", 1, True))
    assert _chosen(edge, "mlp") == []
    assert "cnn" not in edge.models()


def test_a_report_naming_another_device_is_ignored(pool: tuple[EdgePool, Clock]) -> None:
    edge, _ = pool
    forged = Health(
        device_id="z", slots=[SlotReport(model="evil", version=1, state="READY", active=True)]
    )
    edge._fleet_message(Message(topics.device_health("a"), forged.SerializeToString(), 0, False))
    edge._fleet_message(Message(topics.device_health("a"), b"\xff\x00", 0, False))
    assert "evil" not in edge.models()
    assert _chosen(edge, "mlp", "1") == ["a"]


def test_an_answer_is_taken_only_from_the_topic_of_the_device_asked(
    pool: tuple[EdgePool, Clock],
) -> None:
    edge, _ = pool

    async def settle() -> Message:
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        edge._pending[b"corr"] = (answer, "a")

        def reply(device: str) -> Message:
            topic = topics.relay_response(edge.identity, device)
            return Message(topic, b"", 1, False, correlation_data=b"corr")

        edge._settle(reply("b"))  # another device, even with the right correlation data
        assert not answer.done()
        edge._settle(reply("a"))
        return await answer

    assert asyncio.run(settle()).topic.endswith("/a")


def test_an_agent_going_offline_fails_only_its_own_waiting_requests_at_once(
    pool: tuple[EdgePool, Clock],
) -> None:
    edge, _ = pool

    async def go_offline() -> tuple[BaseException | None, bool]:
        loop = asyncio.get_running_loop()
        on_a: asyncio.Future[Message] = loop.create_future()
        on_b: asyncio.Future[Message] = loop.create_future()
        edge._pending |= {b"1": (on_a, "a"), b"2": (on_b, "b")}
        edge._fleet_message(_status("a", online=False))  # its Last Will
        return on_a.exception(), on_b.done()

    error, b_done = asyncio.run(go_offline())
    assert isinstance(error, TransportError)
    assert "agent 'a' will not answer: it went offline" in str(error)
    assert not b_done
