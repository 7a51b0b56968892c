"""Edge agents behind one MQTT broker, as a pool: ``--pool NAME=mqtt://HOST:PORT``.

:class:`EdgePool` watches the fleet's retained status (``ef/v1/dev/+/status``: online,
labels) and periodic health (``ef/v1/dev/+/health``: the versions each device serves) to know
which agents are online and what they serve, and exposes those models to the router the way
:class:`~gateway.pools.remote.RemoteKServePool` exposes a backend's. Requests are relayed over
MQTT 5 request/response to one agent (wire: :mod:`edgefabric.relay`, docs/adr/0009), so
devices behind NAT with no inbound port serve too.

Choosing an agent: among online agents whose last health report (younger than
``stale_after_s``) shows the model (and the version asked for), those whose ``site`` label
matches the request's ``site`` parameter first, then the fewest requests in flight, then the
lowest latency. An agent that does not answer in time is skipped until it is heard from again,
and the request goes to the next agent while time remains; when none is left the pool raises
:class:`~edgefabric.errors.TransportError` (UNAVAILABLE), so the router fails over.

Answers come back on ``ef/v1/relay/resp/{identity}/{device}``: ``{identity}`` is the CN of the
pool's client certificate (``mqtts://`` with ``tls``; the name the broker ACL grants, see
docs/adr/0015) or else its client id, and an answer is taken only from the topic of the device
it was asked of. An agent whose status turns offline (its Last Will, after a crash) fails the
requests it holds at once, so they go to the next agent while their deadline lasts.

Threading: paho's thread only hands messages to the event loop (``call_soon_threadsafe``).
``client_factory`` is the one seam where the MQTT client is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from edgefabric import relay, topics
from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    TransportError,
)
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttTls
from edgefabric.telemetry import tracing
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Health
from gateway.pools.traffic import PoolState, PoolStats, PoolTraffic, ewma

__all__ = ["SITE_LABEL", "AgentView", "ClientFactory", "EdgeModel", "EdgePool", "certificate_name"]

log = logging.getLogger(__name__)

SITE_LABEL = "site"
"""The request parameter and the device label that name a site."""

ClientFactory = Callable[[BrokerAddress, str, MqttTls | None], MqttClient]
"""Makes the pool's (not yet connected) MQTT client: ``(broker, client_id, tls)``."""

_READY = "READY"
_QOS = 1
_RECONNECT_MIN_S = 0.5
_RECONNECT_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class EdgeModel:
    """A model some agent reported serving: its name and the versions seen (numeric order)."""

    name: str
    versions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as the pool sees it now."""

    device_id: str
    online: bool
    available: bool
    """Online, heard from within ``stale_after_s``, and not skipped after a missed answer."""
    labels: dict[str, str]
    serves: dict[str, str]
    """Model -> the version its last health report shows active and READY."""
    in_flight: int
    requests: int
    latency_ewma_s: float | None


@dataclass
class _Agent:
    device_id: str
    online: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    serves: dict[str, str] = field(default_factory=dict)
    health_at_s: float | None = None
    skipped: bool = False
    in_flight: int = 0
    requests: int = 0
    latency_ewma_s: float | None = None


def _version_key(version: str) -> tuple[int, str]:
    return (len(version), version)


def _default_client(address: BrokerAddress, client_id: str, tls: MqttTls | None) -> MqttClient:
    return MqttClient(address, client_id, tls=tls, reconnect_max_delay_s=5)


def certificate_name(cert_file: Path) -> str:
    """The Common Name of the first certificate in a PEM file: the identity the broker sees
    (``use_identity_as_username``). ``ValueError`` says why there is none."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read MQTT client certificate {cert_file}: {exc}") from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if names else ""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"MQTT client certificate {cert_file} has no Common Name; the broker takes it as the "
            "username (enroll the gateway with `edgefabric fleet enroll NAME --role gateway`)"
        )
    return name


class EdgePool:
    """Relays KServe v2 requests over MQTT to the agents that serve the model.

    ``relay_timeout_s``: how long one agent gets to answer when the caller set no deadline.
    ``stale_after_s``: an agent whose last health report is older is not sent requests (its
    Last Will may not have arrived yet).
    ``tls``: CA and client certificate for an ``mqtts://`` broker.
    """

    def __init__(
        self,
        name: str,
        broker: str,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        relay_timeout_s: float = 10.0,
        stale_after_s: float = 30.0,
        tls: MqttTls | None = None,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not relay_timeout_s > 0 or not stale_after_s > 0:
            raise ValueError(
                f"pool '{name}': relay_timeout_s and stale_after_s must be positive seconds, got "
                f"{relay_timeout_s} and {stale_after_s}"
            )
        address = BrokerAddress.parse(broker)
        if tls is not None and not address.tls:
            raise ValueError(
                f"pool '{name}': MQTT TLS files (--mqtt-ca/--mqtt-cert/--mqtt-key) need an "
                f"mqtts:// broker, got {broker}"
            )
        self.name = name
        self.target = address.url
        self._address = address
        self._tls = tls
        self.client_id = f"gw-{name}-{uuid.uuid4().hex[:8]}"
        self.identity = (
            certificate_name(tls.cert_file)
            if tls is not None and tls.cert_file is not None
            else self.client_id
        )
        """The ``{client}`` level of the answer topics: the certificate's CN, or the client id."""
        self._reply_filter = topics.relay_responses(self.identity)  # checks the name as a level
        self._max_message_bytes = max_message_bytes
        self._relay_timeout_s = relay_timeout_s
        self._stale_after_s = stale_after_s
        self._client_factory = client_factory or _default_client
        self._clock = clock
        self._wall_clock = wall_clock
        self._state = PoolState.NEW
        self._mqtt: MqttClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connector: asyncio.Task[None] | None = None
        self._connected = False
        self._agents: dict[str, _Agent] = {}
        self._pending: dict[bytes, tuple[asyncio.Future[Message], str]] = {}
        """Correlation data -> (the answer, the device asked)."""
        self._traffic = PoolTraffic(name)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """Where the pool is in its lifecycle."""
        return self._state

    async def start(self) -> None:
        """Connect and subscribe; a broker that is down is retried in the background."""
        if self._state is not PoolState.NEW:
            raise RuntimeError(f"pool '{self.name}' is {self._state.value}; start() runs once")
        self._state = PoolState.RUNNING
        self._loop = asyncio.get_running_loop()
        try:
            await self._connect_once()
        except TransportError as exc:
            log.warning("pool '%s': %s; retrying in the background", self.name, exc)
            self._connector = asyncio.create_task(
                self._connect_until_up(), name=f"pool {self.name} connect"
            )

    async def stop(self) -> None:
        """Fail requests waiting for an answer and disconnect."""
        if self._state is not PoolState.RUNNING:
            self._state = PoolState.STOPPED
            return
        self._state = PoolState.STOPPED
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        self._fail_pending(f"pool '{self.name}' is stopped")
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            await asyncio.to_thread(mqtt.close)
        self._connected = False
        self._changed()

    async def _connect_once(self) -> None:
        client = self._client_factory(self._address, self.client_id, self._tls)
        client.on_connection_change(self._connection_changed)
        await asyncio.to_thread(client.connect, 10.0)
        try:
            for topic_filter, handler in (
                (self._reply_filter, self._reply_arrived),
                (topics.ALL_DEVICE_STATUS, self._fleet_arrived),
                (topics.ALL_DEVICE_HEALTH, self._fleet_arrived),
            ):
                await asyncio.to_thread(client.subscribe, topic_filter, handler, _QOS)
        except BaseException:
            await asyncio.to_thread(client.close)
            raise
        self._mqtt = client
        self._connected = client.connected
        log.info("pool '%s': watching agents on %s as %s", self.name, self.target, self.client_id)
        self._changed()

    async def _connect_until_up(self) -> None:
        delay = _RECONNECT_MIN_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect_once()
                return
            except TransportError as exc:
                delay = min(delay * 2, _RECONNECT_MAX_S)
                log.info("pool '%s': %s; retrying in %.1f s", self.name, exc, delay)

    # -- views ---------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Connected to the broker, and some agent is available."""
        return self._connected and any(self._available(a) for a in self._agents.values())

    def models(self) -> dict[str, EdgeModel]:
        """Models agents reported serving; kept while their agents are offline (so requests
        for them are UNAVAILABLE rather than NOT_FOUND), until a device's status is cleared."""
        versions: dict[str, set[str]] = {}
        for agent in self._agents.values():
            for model, version in agent.serves.items():
                versions.setdefault(model, set()).add(version)
        return {
            name: EdgeModel(name, tuple(sorted(found, key=_version_key)))
            for name, found in sorted(versions.items())
        }

    def agents(self) -> list[AgentView]:
        """Every agent known, by device id."""
        return [
            AgentView(
                device_id=a.device_id,
                online=a.online,
                available=self._available(a),
                labels=dict(a.labels),
                serves=dict(a.serves),
                in_flight=a.in_flight,
                requests=a.requests,
                latency_ewma_s=a.latency_ewma_s,
            )
            for _, a in sorted(self._agents.items())
        ]

    def stats(self) -> PoolStats:
        """Traffic so far; ``per_channel`` holds the requests sent to each available agent."""
        available = [a for _, a in sorted(self._agents.items()) if self._available(a)]
        return self._traffic.snapshot(
            sum(a.in_flight for a in self._agents.values()), tuple(a.requests for a in available)
        )

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on the pool's loop) whenever an agent or the connection changes;
        returns a function that removes it again."""
        return self._traffic.add_listener(callback)

    # -- requests ------------------------------------------------------------------------------

    async def infer(
        self, request: pb.ModelInferRequest, *, timeout_s: float | None
    ) -> pb.ModelInferResponse:
        """Relay ``request`` to the best agent; the next one when an agent does not answer."""
        site_param = request.parameters.get(SITE_LABEL)
        site = site_param.string_param if site_param is not None else ""
        payload = request.SerializeToString()
        self._traffic.sent()
        try:
            return await self._relay(
                "ModelInfer",
                request.model_name,
                request.model_version,
                payload,
                timeout_s=timeout_s,
                site=site,
            )
        except EdgefabricError as exc:
            self._traffic.failed(exc)
            raise

    async def model_ready(self, name: str, version: str = "") -> bool:
        """Whether an available agent serves ``name`` (``version``), from its last report."""
        return bool(self._candidates(name, version, ""))

    async def metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        """The metadata an agent serving ``name`` (``version``) reports, asked now."""
        request = pb.ModelMetadataRequest(name=name, version=version)
        payload = request.SerializeToString()
        response: pb.ModelMetadataResponse = await self._relay(
            "ModelMetadata", name, version, payload, timeout_s=self._relay_timeout_s
        )
        return response

    async def config(self, name: str, version: str = "") -> mc.ModelConfig:
        """The config an agent serving ``name`` (``version``) reports, asked now."""
        request = pb.ModelConfigRequest(name=name, version=version)
        payload = request.SerializeToString()
        response = await self._relay(
            "ModelConfig", name, version, payload, timeout_s=self._relay_timeout_s
        )
        return response.config

    async def _relay(
        self,
        rpc: str,
        model: str,
        version: str,
        payload: bytes,
        *,
        timeout_s: float | None,
        site: str = "",
    ) -> Any:
        """Ask the best agent; on no answer, overload or not-ready ask the next while time
        remains."""
        self._check_sendable(rpc, payload)
        deadline = None if timeout_s is None else self._clock() + timeout_s
        tried: set[str] = set()
        failures: list[EdgefabricError] = []
        while True:
            candidates = [
                a for a in self._candidates(model, version, site) if a.device_id not in tried
            ]
            remaining = self._relay_timeout_s if deadline is None else deadline - self._clock()
            if not candidates or remaining <= 0:
                break
            agent = candidates[0]
            tried.add(agent.device_id)
            try:
                return await self._ask(agent, rpc, payload, min(remaining, self._relay_timeout_s))
            except TransportError as exc:
                if not self._connected:
                    raise
                failures.append(exc)
            except (OverloadedError, ModelNotReadyError) as exc:  # another agent may take it
                failures.append(exc)
        raise self._unanswered(model, version, failures, expired=not tried and remaining <= 0)

    def _check_sendable(self, rpc: str, payload: bytes) -> None:
        if self._state is not PoolState.RUNNING:
            if self._state is PoolState.NEW:
                raise RuntimeError(f"pool '{self.name}' is not started; call start() first")
            raise TransportError(f"pool '{self.name}' is stopped")
        limit = self._max_message_bytes
        broker_limit = self._mqtt.max_packet_size if self._mqtt is not None else None
        if broker_limit:
            limit = min(limit, broker_limit - 1024)  # room for the topic and properties
        if len(payload) > limit:
            raise InvalidInputError(
                f"the {rpc} request is {len(payload)} bytes; pool '{self.name}' relays at most "
                f"{limit} bytes through the broker; send smaller batches"
            )

    def _unanswered(
        self, model: str, version: str, failures: list[EdgefabricError], *, expired: bool
    ) -> EdgefabricError:
        what = f"model '{model}'" + (f" version {version}" if version else "")
        missed = [str(f) for f in failures if isinstance(f, TransportError)]
        if len(missed) > 1:
            return TransportError(
                f"pool '{self.name}': no agent serving {what} answered: " + "; ".join(missed)
            )
        if failures:
            return failures[-1]
        if expired:
            return DeadlineExceededError(f"pool '{self.name}': no time left to relay the request")
        known = self.models().get(model)
        if version and known is not None and version not in known.versions:
            return ModelNotFoundError(
                f"model '{model}' has no version {version} on the agents of pool '{self.name}'; "
                f"they serve version(s) {', '.join(known.versions)}"
            )
        if not self._connected:
            return TransportError(f"pool '{self.name}': not connected to broker {self.target}")
        return ModelNotReadyError(f"pool '{self.name}': no online agent serves {what} now")

    async def _ask(self, agent: _Agent, rpc: str, payload: bytes, timeout_s: float) -> Any:
        """One request to one agent; TransportError when it does not answer in time."""
        mqtt = self._mqtt
        if mqtt is None or not self._connected:
            raise TransportError(f"pool '{self.name}': not connected to broker {self.target}")
        correlation = os.urandom(16)
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = (answer, agent.device_id)
        agent.in_flight += 1
        agent.requests += 1
        started = self._clock()
        try:
            mqtt.publish(
                topics.device_infer(agent.device_id),
                payload,
                qos=_QOS,
                response_topic=topics.relay_response(self.identity, agent.device_id),
                correlation_data=correlation,
                user_properties=[
                    *relay.request_properties(rpc, self._wall_clock() + timeout_s),
                    *(tracing.grpc_metadata() or ()),  # W3C trace context, when tracing is on
                ],
            )
            try:
                message = await asyncio.wait_for(answer, timeout_s)
            except TimeoutError:
                self._skip(agent, f"no answer within {timeout_s:.3g} s")
                raise TransportError(
                    f"pool '{self.name}': agent '{agent.device_id}' did not answer within "
                    f"{timeout_s:.3g} s"
                ) from None
        finally:
            agent.in_flight -= 1
            self._pending.pop(correlation, None)
        response = relay.decode_reply(
            rpc,
            message.user_properties,
            message.payload,
            source=f"pool '{self.name}': agent '{agent.device_id}'",
        )
        elapsed = self._clock() - started
        agent.latency_ewma_s = ewma(agent.latency_ewma_s, elapsed)
        if rpc == "ModelInfer":
            self._traffic.succeeded(elapsed)
        return response

    # -- choosing an agent ---------------------------------------------------------------------

    def _available(self, agent: _Agent) -> bool:
        return (
            agent.online
            and not agent.skipped
            and agent.health_at_s is not None
            and self._clock() - agent.health_at_s <= self._stale_after_s
        )

    def _candidates(self, model: str, version: str, site: str) -> list[_Agent]:
        """Available agents serving ``model`` (``version``), best first."""
        serving = [
            a
            for a in self._agents.values()
            if self._available(a)
            and model in a.serves
            and (not version or a.serves[model] == version)
        ]
        return sorted(
            serving,
            key=lambda a: (
                not site or a.labels.get(SITE_LABEL) != site,
                a.in_flight,
                a.latency_ewma_s if a.latency_ewma_s is not None else 0.0,
                a.requests,
                a.device_id,
            ),
        )

    def _skip(self, agent: _Agent, reason: str) -> None:
        if not agent.skipped:
            agent.skipped = True
            log.warning(
                "pool '%s': skipping agent '%s' until it reports again: %s",
                self.name,
                agent.device_id,
                reason,
            )
            self._changed()

    # -- messages (paho's thread hands them to the loop) ---------------------------------------

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the gateway is gone
                loop.call_soon_threadsafe(callback, *args)

    def _reply_arrived(self, message: Message) -> None:
        self._hand_over(self._settle, message)

    def _fleet_arrived(self, message: Message) -> None:
        self._hand_over(self._fleet_message, message)

    def _connection_changed(self, connected: bool) -> None:
        self._hand_over(self._set_connected, connected)

    def _settle(self, message: Message) -> None:
        pending = self._pending.get(message.correlation_data or b"")
        if pending is None:
            log.debug("pool '%s': dropping a late or unknown answer", self.name)
            return
        answer, device_id = pending
        parsed = topics.parse_relay_response(message.topic)
        if parsed is None or parsed[1] != device_id:
            log.warning(
                "pool '%s': dropping an answer on %s to a request sent to agent '%s'",
                self.name,
                message.topic,
                device_id,
            )
            return
        if not answer.done():
            answer.set_result(message)

    def _set_connected(self, connected: bool) -> None:
        if self._state is not PoolState.RUNNING or connected == self._connected:
            return
        self._connected = connected
        if not connected:
            self._fail_pending(f"pool '{self.name}': lost the connection to broker {self.target}")
        self._changed()

    def _fleet_message(self, message: Message) -> None:
        parsed = topics.parse_device_topic(message.topic)
        if parsed is None:
            return
        device_id, kind = parsed
        if not message.payload:  # a cleared retained status: the device is gone
            if kind == "status" and self._agents.pop(device_id, None) is not None:
                self._fail_agent(device_id, "its status was cleared")
                self._changed()
            return
        try:
            if kind == "status":
                self._apply_status(device_id, DeviceStatus.FromString(message.payload))
            elif kind == "health":
                self._apply_health(device_id, Health.FromString(message.payload))
        except (DecodeError, ValueError) as exc:
            log.warning("pool '%s': ignoring a malformed %s: %s", self.name, message.topic, exc)

    def _apply_status(self, device_id: str, status: DeviceStatus) -> None:
        if status.device_id and status.device_id != device_id:
            raise ValueError(f"the status names device {status.device_id!r}")
        agent = self._agents.setdefault(device_id, _Agent(device_id))
        agent.online = status.online
        agent.labels = dict(status.labels)
        if status.online:
            agent.skipped = False
        else:  # its Last Will after a crash, or a clean stop: it answers nothing more
            self._fail_agent(device_id, "it went offline")
        self._changed()

    def _apply_health(self, device_id: str, health: Health) -> None:
        if health.device_id != device_id:
            raise ValueError(f"the health report names device {health.device_id!r}")
        agent = self._agents.setdefault(device_id, _Agent(device_id, online=True))
        serves = {s.model: str(s.version) for s in health.slots if s.active and s.state == _READY}
        changed = serves != agent.serves or agent.skipped or agent.health_at_s is None
        agent.serves = serves
        agent.health_at_s = self._clock()
        agent.skipped = False
        if changed:
            self._changed()

    def _fail_agent(self, device_id: str, reason: str) -> None:
        """Fail the requests waiting for ``device_id`` at once, so they go elsewhere."""
        for answer, asked in self._pending.values():
            if asked == device_id and not answer.done():
                answer.set_exception(
                    TransportError(
                        f"pool '{self.name}': agent '{device_id}' will not answer: {reason}"
                    )
                )

    def _fail_pending(self, reason: str) -> None:
        for answer, _ in self._pending.values():
            if not answer.done():
                answer.set_exception(TransportError(reason))
        self._pending.clear()

    def _changed(self) -> None:
        self._traffic.notify()
