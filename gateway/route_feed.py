"""The store's route table, applied to the gateway's router as it changes (docs/adr/0017).

``gateway serve --routes-from-broker`` subscribes to ``ef/v1/routes`` at the fleet broker
(the report broker, else the first edge pool's, with the same TLS files). Each table the
store publishes (:mod:`edgefabric.signed_routes`) is checked by :func:`accept_table`, a pure
function: signed by the controller key given as ``--routes-key``, a sequence newer than the one
applied, every route parseable. A table that fails any check is refused as a whole with one
warning naming why, and the last good table keeps serving. An accepted table replaces the
router's table in one step: the ``--route`` entries, with the store's route instead for every
model the store routes (a model the store stops routing goes back to its ``--route`` entry, or
to any pool that serves it). Each applied table joins the audit log as
``gateway.routes.applied`` when the gateway runs with a home.

The applied sequence is kept in memory: a restarted gateway takes the retained table,
whatever its sequence (only the controller identity may publish there; docs/adr/0015).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefabric import topics
from edgefabric.desired import key_id, load_public_key
from edgefabric.errors import InvalidInputError, TransportError
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttTls
from edgefabric.security.access import AccessControl, record_admin
from edgefabric.signed_routes import open_routes, routes_of
from gateway.router import Router
from gateway.routing import Route, parse_route
from gateway.settings import GatewaySettings

__all__ = ["AcceptedTable", "RouteFeed", "accept_table", "build_route_feed", "merge_routes"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0
_RETRY_S = (0.5, 10.0)  # first and longest wait between attempts to reach the broker


@dataclass(frozen=True)
class AcceptedTable:
    """A verified store table: its sequence, signer, route texts and parsed routes."""

    sequence: int
    key_id: str
    specs: Mapping[str, str]
    routes: Mapping[str, Route] = field(hash=False)


def accept_table(
    payload: bytes, *, public_key: Ed25519PublicKey, applied_sequence: int
) -> AcceptedTable:
    """The table in ``payload`` if the gateway should apply it; InvalidInputError says why not
    (garbage, unsigned, signed by another key, not newer than ``applied_sequence``, or a route
    the gateway cannot parse: the whole table is refused then)."""
    table = open_routes(payload, public_key=public_key, applied_sequence=applied_sequence)
    specs = routes_of(table)
    routes: dict[str, Route] = {}
    for model, spec in specs.items():
        try:
            route = parse_route(f"{model}={spec}")
        except ValueError as exc:
            raise InvalidInputError(
                f"route table {table.sequence}: {exc}; refusing the whole table"
            ) from None
        if route.model != model:
            raise InvalidInputError(
                f"route table {table.sequence}: model {model!r} is not a model name; "
                "refusing the whole table"
            )
        routes[model] = route
    return AcceptedTable(table.sequence, key_id(public_key), specs, routes)


def merge_routes(configured: Mapping[str, Route], store: Mapping[str, Route]) -> dict[str, Route]:
    """The table the router follows: ``configured`` (``--route``), the store's route winning
    for each model it routes."""
    return {**configured, **store}


class RouteFeed:
    """Keeps ``router`` on the store's latest verified route table."""

    def __init__(
        self,
        router: Router,
        configured: Mapping[str, Route],
        address: BrokerAddress,
        public_key: Ed25519PublicKey,
        *,
        client_id: str,
        tls: MqttTls | None = None,
        access: AccessControl | None = None,
    ) -> None:
        self.router = router
        self.configured = dict(configured)
        self.address = address
        self.public_key = public_key
        self.client_id = client_id
        self._tls = tls if address.tls else None
        self._access = access
        self._client: MqttClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._audits: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self._last_payload = b""
        self.table: AcceptedTable | None = None
        """The store table applied last (``None``: none yet)."""
        self.applied = 0
        """Tables applied."""
        self.refused = 0
        """Tables refused (unsigned, forged, replayed, rolled back, unparseable)."""
        self.last_refusal = ""

    @property
    def sequence(self) -> int:
        """The sequence of the table applied last (0: none yet)."""
        return 0 if self.table is None else self.table.sequence

    async def start(self) -> None:
        """Connect and subscribe in the background (the gateway serves meanwhile)."""
        if self._task is not None:
            raise RuntimeError("the route feed is already started")
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._client = MqttClient(
            self.address, self.client_id, tls=self._tls, reconnect_max_delay_s=5
        )
        self._task = asyncio.create_task(self._connect(), name="route-feed")

    async def stop(self) -> None:
        """Stop listening; audit entries under way are written first."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None
        if self._audits:
            await asyncio.gather(*self._audits, return_exceptions=True)

    async def wait(self, predicate: Callable[[RouteFeed], bool], timeout_s: float) -> None:
        """Wait until ``predicate(self)`` holds after a table was applied or refused."""
        if self._changed is None:
            raise RuntimeError("the route feed is not started; call start() first")
        async with asyncio.timeout(timeout_s):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def receive(self, payload: bytes) -> bool:
        """Check one table (on the event loop) and apply it; whether it was applied."""
        if payload == self._last_payload:
            log.debug("route table %d received again; nothing to do", self.sequence)
            return False
        try:
            accepted = accept_table(
                payload, public_key=self.public_key, applied_sequence=self.sequence
            )
        except InvalidInputError as exc:
            self.refused += 1
            self.last_refusal = str(exc)
            kept = f"route table {self.sequence}" if self.table else "the --route entries"
            log.warning("store route table refused: %s; %s keeps serving", exc, kept)
            self._notify()
            return False
        self._last_payload = payload
        self.table = accepted
        self.router.set_routes(merge_routes(self.configured, accepted.routes))
        self.applied += 1
        log.info(
            "store route table %d applied (%s)",
            accepted.sequence,
            ", ".join(f"{m}={s}" for m, s in accepted.specs.items()) or "no store routes",
        )
        self._audit(accepted)
        self._notify()
        return True

    def _audit(self, accepted: AcceptedTable) -> None:
        details = {"sequence": accepted.sequence, "routes": dict(accepted.specs)}
        task = asyncio.create_task(
            record_admin(
                "gateway.routes.applied",
                topics.ROUTES,
                details,
                access=self._access,
                actor=f"controller:{accepted.key_id}",
            )
        )
        self._audits.add(task)
        task.add_done_callback(self._audit_done)

    def _audit_done(self, task: asyncio.Task[None]) -> None:
        self._audits.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("route table not recorded in the audit log: %s", task.exception())

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _on_message(self, message: Message) -> None:
        """On the MQTT thread: hand the table to the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.receive, message.payload)

    async def _connect(self) -> None:
        """Connect (retrying with backoff while the broker is away), then subscribe; paho
        reconnects and re-subscribes by itself from then on."""
        client = self._client
        assert client is not None  # set by start()
        delay_s, warned = _RETRY_S[0], False
        while True:
            try:
                await asyncio.to_thread(client.connect, _CONNECT_TIMEOUT_S)
                await asyncio.to_thread(client.subscribe, topics.ROUTES, self._on_message, 1)
            except TransportError as exc:
                log.log(
                    logging.DEBUG if warned else logging.WARNING,
                    "store route table: %s; retrying (the --route entries serve meanwhile)",
                    exc,
                )
                warned = True
                if client.connected:  # subscribing failed on a live connection: start over
                    await asyncio.to_thread(client.close)
                    client = self._client = MqttClient(
                        self.address, self.client_id, tls=self._tls, reconnect_max_delay_s=5
                    )
                await asyncio.sleep(delay_s)  # backoff before the next attempt
                delay_s = min(delay_s * 2, _RETRY_S[1])
                continue
            log.info("store route table: listening on %s at %s", topics.ROUTES, self.address)
            return


def build_route_feed(
    settings: GatewaySettings,
    router: Router,
    configured: Mapping[str, Route],
    access: AccessControl | None,
    gateway_id: str,
) -> RouteFeed | None:
    """The feed ``settings`` ask for (``routes_from_broker``), or None."""
    if not settings.routes_from_broker:
        return None
    target, key_path = settings.fleet_broker(), settings.routes_key_path()
    if target is None or key_path is None:  # the settings' validator refuses both
        raise ValueError("--routes-from-broker needs a fleet broker and --routes-key")
    return RouteFeed(
        router,
        configured,
        BrokerAddress.parse(target),
        load_public_key(key_path.read_bytes()),
        client_id=f"gw-routes-{gateway_id}-{uuid.uuid4().hex[:8]}",
        tls=settings.mqtt_tls(),
        access=access,
    )
