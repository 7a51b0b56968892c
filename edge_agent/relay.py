"""KServe v2 calls relayed over MQTT: how a device with no inbound port serves the gateway.

:class:`InferRelay` answers the requests published to ``ef/v1/dev/{device}/infer`` (wire:
:mod:`edgefabric.relay`, docs/adr/0009) through the same :class:`DataPlane` the device's local
gRPC server uses, with no gRPC hop. It

- drops work whose ``ef-deadline-ms`` has passed (answering DEADLINE_EXCEEDED, never running it)
  and hands the rest of the deadline to the data plane, which drops it while queued;
- bounds the relayed requests in progress: past ``max_in_flight`` it answers RESOURCE_EXHAUSTED
  at once instead of queueing;
- answers only on ``ef/v1/relay/resp/{client}/{device}`` topics naming this device, so a forged
  response topic cannot make the device publish onto another device's answers or onto fleet
  topics (its own status included), and the broker ACL can confine each device to its own;
- answers every malformed request with INVALID_ARGUMENT and keeps serving.

Messages arrive on paho's thread and are handed to the event loop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from edgefabric import relay, topics
from edgefabric.dataplane import DataPlane
from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    InternalError,
    ModelNotReadyError,
    OverloadedError,
    TransportError,
)
from edgefabric.kserve import converters
from edgefabric.mqtt import Message, MqttClient
from edgefabric.telemetry import tracing

__all__ = ["InferRelay", "RelayCounters"]

log = logging.getLogger(__name__)

_REPLY_QOS = 1
_RETRY_AFTER_MS = 50  # a hint to the gateway when the bound is reached


class RelayCounters:
    """What the relay did so far (read by tests and the status view; loop thread only)."""

    def __init__(self) -> None:
        self.answered = 0
        self.failed = 0
        self.shed = 0
        self.expired = 0
        self.unanswerable = 0
        """Requests dropped without an answer: no or a foreign response topic."""


class InferRelay:
    """Serves relayed KServe v2 requests from ``data``; :meth:`attach` to a connected client."""

    def __init__(
        self,
        data: DataPlane,
        device_id: str,
        *,
        max_in_flight: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.topic = topics.device_infer(device_id)
        self.device_id = device_id
        self.counters = RelayCounters()
        self._data = data
        self._max_in_flight = max_in_flight
        self._wall_clock = wall_clock
        self._mqtt: MqttClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def in_flight(self) -> int:
        """Relayed requests being answered now."""
        return len(self._running)

    async def attach(self, mqtt: MqttClient) -> None:
        """Subscribe on ``mqtt`` (kept across reconnects) and answer through it."""
        self._loop = asyncio.get_running_loop()
        self._mqtt = mqtt
        self._closing = False
        await asyncio.to_thread(mqtt.subscribe, self.topic, self._arrived, 1)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Refuse new requests; let running ones answer for ``grace_s``, then cancel them."""
        self._closing = True
        mqtt = self._mqtt
        if mqtt is not None:
            with contextlib.suppress(TransportError, RuntimeError):
                mqtt.unsubscribe(self.topic)
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._mqtt = None

    # -- on paho's thread ----------------------------------------------------------------------

    def _arrived(self, message: Message) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the agent is gone
                loop.call_soon_threadsafe(self._accept, message)

    # -- on the event loop ---------------------------------------------------------------------

    def _accept(self, message: Message) -> None:
        if not message.response_topic or message.correlation_data is None:
            self.counters.unanswerable += 1
            log.warning(
                "relay: dropped a request on %s without response topic and correlation data "
                "(MQTT 5 request/response is required)",
                message.topic,
            )
            return
        parsed = topics.parse_relay_response(message.response_topic)
        if parsed is None or parsed[1] != self.device_id:
            self.counters.unanswerable += 1
            log.warning(
                "relay: refused to answer on %r; answers go only to %s/relay/resp/{client}/%s",
                message.response_topic,
                topics.PREFIX,
                self.device_id,
            )
            return
        if self._closing or not self._data.ready():
            self._answer_error(message, ModelNotReadyError("the agent is stopping"))
            return
        if len(self._running) >= self._max_in_flight:
            self.counters.shed += 1
            error = OverloadedError(
                f"the device is answering {self._max_in_flight} relayed requests already "
                "(its relay bound); retry later or send to another agent",
                _RETRY_AFTER_MS,
            )
            self._answer_error(message, error)
            return
        task = asyncio.get_running_loop().create_task(self._answer(message))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, message: Message) -> None:
        try:
            with tracing.span(
                "relay",
                kind="server",
                incoming=lambda: tracing.carrier_from_metadata(message.user_properties),
            ):
                payload = await self._serve(message)
        except EdgefabricError as exc:
            self._answer_error(message, exc)
            return
        except Exception as exc:  # the one place foreign errors become an answer
            correlation_id = uuid.uuid4().hex[:12]
            log.error("relay: request failed (correlation id %s)", correlation_id, exc_info=exc)
            self._answer_error(
                message, InternalError(f"internal error; correlation id {correlation_id}")
            )
            return
        self.counters.answered += 1
        self._publish(message, [(relay.STATUS_PROPERTY, relay.STATUS_OK)], payload)

    async def _serve(self, message: Message) -> bytes:
        rpc, request, deadline_unix_s = relay.decode_request(
            message.user_properties, message.payload
        )
        remaining_s = None
        if deadline_unix_s is not None:
            remaining_s = deadline_unix_s - self._wall_clock()
            if remaining_s <= 0:
                self.counters.expired += 1
                raise DeadlineExceededError(
                    f"the relayed {rpc} reached the device {-remaining_s * 1e3:.0f} ms after its "
                    "deadline; it was not run"
                )
        response: Any
        if rpc == "ModelInfer":
            decoded = converters.request_from_proto(
                request, now_s=time.monotonic(), time_remaining_s=remaining_s
            )
            response = converters.response_to_proto(await self._data.infer(decoded))
        elif rpc == "ModelMetadata":
            served, version = self._data.resolve(request.name, request.version)
            versions = [version.version] if request.version else list(served.versions)
            response = converters.metadata_to_proto(
                served.signature, versions, served.config.platform
            )
        else:
            config = self._data.model_config(request.name, request.version)
            response = pb.ModelConfigResponse(config=config)
        payload: bytes = response.SerializeToString()
        return payload

    def _answer_error(self, message: Message, error: EdgefabricError) -> None:
        self.counters.failed += 1
        properties, payload = relay.encode_error(error)
        self._publish(message, properties, payload)

    def _publish(self, message: Message, properties: list[tuple[str, str]], payload: bytes) -> None:
        mqtt = self._mqtt
        if mqtt is None or message.response_topic is None:
            return
        try:
            mqtt.publish(
                message.response_topic,
                payload,
                qos=_REPLY_QOS,
                correlation_data=message.correlation_data,
                user_properties=properties,
            )
        except (TransportError, RuntimeError, ValueError) as exc:
            log.info("relay: answer to %s not sent: %s", message.response_topic, exc)
