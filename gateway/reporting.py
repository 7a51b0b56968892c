"""The gateway's routing statistics, published over MQTT for the store's dashboard.

Every ``interval_s`` :class:`StatsReporter` drains :class:`~gateway.route_stats.RouteStats`
and publishes a ``GatewayStats`` message (proto/edgefabric/wire/v1/gateway.proto) on
``ef/v1/gw/{gateway_id}/stats``, QoS 0 and not retained: a lost report loses that interval's
points on the charts, nothing more. Intervals with no traffic publish nothing.

The broker being down never holds up the gateway: the first connection is tried in the
background and again every interval until it succeeds (paho reconnects by itself after that),
and an interval that ends while disconnected is dropped. :meth:`StatsReporter.stop` publishes
what the last, partial interval saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable

from edgefabric import topics
from edgefabric.errors import TransportError
from edgefabric.mqtt import BrokerAddress, MqttClient, MqttTls
from edgefabric.wire.v1.gateway_pb2 import GatewayStats
from edgefabric.wire.v1.gateway_pb2 import PoolInterval as PoolIntervalProto
from gateway.route_stats import PoolInterval, RouteStats
from gateway.settings import GatewaySettings

__all__ = ["ClientFactory", "RouteObserver", "StatsReporter", "build_reporter", "stats_message"]

log = logging.getLogger(__name__)

RouteObserver = Callable[[str, str, str, str, float], None]
"""The router's observer: ``(model, version asked, pool, status name, seconds)``."""
LOCAL_POOL = "local"  # gateway.router.LOCAL_POOL, whose requests the data plane reports

ClientFactory = Callable[[BrokerAddress, str, MqttTls | None], MqttClient]
"""Makes the reporter's (not yet connected) MQTT client: ``(broker, client_id, tls)``."""

_CONNECT_TIMEOUT_S = 5.0  # also bounds how long stop() waits for a connect under way


def stats_message(
    gateway_id: str,
    sequence: int,
    at_ms: int,
    interval_s: float,
    intervals: Iterable[PoolInterval],
) -> GatewayStats:
    """The wire form of one interval (latencies 0 where nothing succeeded)."""
    return GatewayStats(
        gateway_id=gateway_id,
        sequence=sequence,
        at_ms=at_ms,
        interval_s=interval_s,
        pools=[
            PoolIntervalProto(
                model=i.model,
                pool=i.pool,
                requests=i.requests,
                errors=i.errors,
                p50_ms=i.p50_ms or 0.0,
                p99_ms=i.p99_ms or 0.0,
            )
            for i in intervals
        ],
    )


def _default_client(address: BrokerAddress, client_id: str, tls: MqttTls | None) -> MqttClient:
    return MqttClient(address, client_id, tls=tls, reconnect_max_delay_s=5)


class StatsReporter:
    """Publishes ``stats`` for ``gateway_id`` to ``address`` every ``interval_s`` seconds."""

    def __init__(
        self,
        stats: RouteStats,
        address: BrokerAddress,
        gateway_id: str,
        *,
        interval_s: float = 10.0,
        tls: MqttTls | None = None,
        client_factory: ClientFactory = _default_client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.stats = stats
        self.topic = topics.gateway_stats(gateway_id)  # ValueError for a bad id
        self.gateway_id = gateway_id
        self.interval_s = interval_s
        self.address = address
        self.client_id = f"gw-stats-{gateway_id}-{uuid.uuid4().hex[:8]}"
        self._tls = tls if address.tls else None
        self._client_factory = client_factory
        self._client: MqttClient | None = None
        self._clock = clock
        self._sequence = 0
        self._last_s = clock()
        self._connected = False
        self._task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.published = 0
        """Reports handed to the broker connection."""
        self.dropped = 0
        """Reports lost because the broker was not reachable when their interval ended."""

    def observe_local(self, model: str, version: int, seconds: float, code: str) -> None:
        """The data plane's observer: one request answered by this gateway's own sessions,
        whether the router sent it or it took the plain local path."""
        self.stats.record(model, LOCAL_POOL, seconds, code == "OK")

    def route_observer(self, then: RouteObserver) -> RouteObserver:
        """A router observer calling ``then`` and recording attempts at the other pools (the
        local ones are recorded by :meth:`observe_local`, once)."""
        record = self.stats.record

        def observe(model: str, version: str, pool: str, code: str, seconds: float) -> None:
            then(model, version, pool, code, seconds)
            if pool != LOCAL_POOL:
                record(model, pool, seconds, code == "OK")

        return observe

    async def start(self) -> None:
        """Start reporting (connecting in the background)."""
        if self._task is not None:
            raise RuntimeError("the statistics reporter is already started")
        self._last_s = self._clock()
        self._client = self._client_factory(self.address, self.client_id, self._tls)
        self._connected = False
        self._task = asyncio.create_task(self._run(), name="gateway-stats")

    async def stop(self) -> None:
        """Stop, publish the last partial interval if connected, and disconnect."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._connecting is not None:  # a thread cannot be cancelled: let it finish
            await asyncio.wait({self._connecting})
            self._connected = self._connecting.exception() is None
            self._connecting = None
        if self._connected:
            message = self._next_message()
            if message is not None:
                with contextlib.suppress(TransportError):
                    await asyncio.to_thread(self._publish, message, True)
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    def report(self) -> GatewayStats | None:
        """Drain one interval and publish it; the message, or None when the interval saw no
        traffic. Not connected: the interval is dropped (and counted in :attr:`dropped`)."""
        message = self._next_message()
        if message is None:
            return None
        if not self._connected:  # not yet connected once (paho queues nothing before that)
            self.dropped += 1
            return message
        try:
            self._publish(message, False)
        except TransportError as exc:
            self.dropped += 1
            log.debug("gateway statistics for %s dropped: %s", self.topic, exc)
        return message

    def _next_message(self) -> GatewayStats | None:
        now = self._clock()
        interval_s, self._last_s = max(now - self._last_s, 0.0), now
        intervals = self.stats.drain()
        if not intervals:
            return None
        self._sequence += 1
        return stats_message(
            self.gateway_id, self._sequence, round(now * 1000), interval_s, intervals
        )

    def _publish(self, message: GatewayStats, wait: bool) -> None:
        if self._client is None:
            raise TransportError(f"statistics reporter for {self.topic} is not started")
        self._client.publish(self.topic, message.SerializeToString(), qos=0, wait=wait)
        self.published += 1

    async def _run(self) -> None:
        warned = False
        while True:
            if not self._connected and self._client is not None:
                self._connecting = asyncio.create_task(
                    asyncio.to_thread(self._client.connect, _CONNECT_TIMEOUT_S)
                )
                try:
                    await asyncio.shield(self._connecting)
                except TransportError as exc:
                    level = logging.DEBUG if warned else logging.WARNING
                    log.log(
                        level, "gateway statistics: %s; retrying every %g s", exc, self.interval_s
                    )
                    warned = True
                else:
                    self._connected = True
                    log.info("gateway statistics go to %s on %s", self.topic, self.address)
                finally:
                    if self._connecting.done():
                        self._connecting = None
            await asyncio.sleep(self.interval_s)  # the reporting period, not a synchronisation
            self.report()


def build_reporter(settings: GatewaySettings) -> StatsReporter | None:
    """The reporter ``settings`` ask for (see ``GatewaySettings.report_target``), or None."""
    target = settings.report_target()
    if target is None:
        return None
    return StatsReporter(
        RouteStats(),
        BrokerAddress.parse(target),
        settings.report_gateway_id(),
        interval_s=settings.report_interval_s,
        tls=settings.mqtt_tls(),
    )
