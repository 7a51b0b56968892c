"""The edge agent: keeps a device's models at the desired versions and reports how it is doing.

One asyncio loop owns the state; paho's network thread only hands messages over with
``call_soon_threadsafe``. Work is split into four tasks:

- **connection**: connect to the broker (retrying with backoff; the device keeps serving while
  the broker is away), publish the retained birth status, subscribe to ``desired``;
- **reconcile**: act on the newest accepted desired state: download and verify each missing
  version (TUF over MQTT, resumable), install it into a slot, self-test, switch;
- **health**: publish a Health message every ``health_interval_s``;
- **outbox**: deliver events stored on disk, oldest first, whenever connected.

Crash safety: before a version is installed its name is written to ``agent.json``; the marker is
cleared once the version has served for a probation period. Finding the marker at start means
the agent died installing or running that version; after ``max_install_crashes`` such deaths
the version is marked FAILED and the previous one is served again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.fetcher import MqttFetcher
from edge_agent.health import LatencyWindow, ProcessSampler, build_health
from edge_agent.outbox import Outbox
from edge_agent.relay import InferRelay
from edge_agent.serving import DeviceServer, ServingOptions
from edge_agent.settings import AgentSettings
from edge_agent.slots import ModelSlots, SlotState
from edge_agent.sync import ModelSync
from edgefabric import topics
from edgefabric.desired import load_public_key, open_desired
from edgefabric.errors import (
    EdgefabricError,
    IntegrityError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    TransportError,
)
from edgefabric.files import write_atomic
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttTls, Will
from edgefabric.repo_client import RepoClient
from edgefabric.telemetry import tracing
from edgefabric.telemetry.agent import AgentMetrics
from edgefabric.telemetry.endpoint import MetricsEndpoint
from edgefabric.wire.v1.fleet_pb2 import DesiredState, DeviceStatus, Event

__all__ = ["AGENT_VERSION", "EdgeAgent"]

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
PROBATION_S = 30.0
_RETRY_MIN_S = 0.5


def _now_ms() -> int:
    return int(time.time() * 1000)


class EdgeAgent:
    """A running agent; :meth:`start`, then :meth:`stop` (or :meth:`run` for a process)."""

    def __init__(self, settings: AgentSettings, *, probation_s: float = PROBATION_S) -> None:
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self._state_path = data / "agent.json"
        self._state = self._read_state()
        self._probation_s = probation_s
        self._key: Ed25519PublicKey | None = (
            load_public_key(settings.desired_key.read_bytes()) if settings.desired_key else None
        )
        self._slots = ModelSlots.discover(data / "models", keep_previous=settings.keep_previous)
        self.latency = LatencyWindow()
        self.server = DeviceServer(
            data / "serving",
            ServingOptions(
                address=settings.grpc_address,
                port=settings.grpc_port,
                listen=settings.grpc_listen,
                tls=settings.server_tls(),
                insecure=settings.insecure,
            ),
            observer=lambda model, version, seconds, code: self.latency.record(
                model, version, seconds, code == "OK"
            ),
        )
        self.relay = (
            InferRelay(
                self.server.data, settings.device_id, max_in_flight=settings.relay_max_in_flight
            )
            if settings.relay_max_in_flight
            else None
        )
        self.outbox = Outbox(data / "outbox.sqlite3", max_items=settings.outbox_max_items)
        self._sampler = ProcessSampler()
        self._address = BrokerAddress.parse(settings.broker)
        self._tls = (
            MqttTls(settings.mqtt_ca, settings.mqtt_cert, settings.mqtt_key)
            if self._address.tls
            else None
        )
        self._mqtt: MqttClient | None = None
        self._sync: ModelSync | None = None
        self._pending: DesiredState | None = None
        self._self_tests: dict[tuple[str, int], bool] = {}
        self._wake_reconcile = asyncio.Event()
        self._wake_outbox = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listeners: list[Callable[[Event], None]] = []  # for tests and the status view
        self.telemetry = AgentMetrics(
            self.server.data.metrics.registry,
            slots=lambda: [
                (s.name, v, state.value)
                for s in self._slots.values()
                for v, state in s.versions.items()
            ],
            served=self.server.served,
            connected=lambda: self._mqtt is not None and self._mqtt.connected,
        )
        self.listeners.append(
            lambda e: self.telemetry.on_event(Event.Kind.Name(e.kind), e.model, e.message)
        )
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._tracing = False  # this agent turned tracing on (and turns it off at stop)

    # ------------------------------------------------------------------ lifecycle

    @property
    def device_id(self) -> str:
        """This device's id."""
        return self.settings.device_id

    @property
    def applied_sequence(self) -> int:
        """The sequence of the last desired state fully acted on."""
        return int(self._state.get("applied_sequence", 0))

    async def start(self) -> None:
        """Serve what is on disk, then reach for the broker in the background."""
        self._loop = asyncio.get_running_loop()
        endpoint = tracing.endpoint_from(self.settings.otlp_endpoint)
        self._tracing = bool(endpoint) and not tracing.enabled()
        if self._tracing:
            tracing.configure("edgefabric-agent", endpoint=endpoint)
        if self.settings.metrics_port >= 0:
            self.metrics_endpoint = MetricsEndpoint(
                self.server.data.metrics.registry,
                self.settings.metrics_address,
                self.settings.metrics_port,
            )
        await self.server.start()
        await self._recover_from_crash()
        await self.server.restore(self._slots)
        self._tasks = [
            asyncio.create_task(self._connection(), name="agent-connection"),
            asyncio.create_task(self._reconciler(), name="agent-reconcile"),
            asyncio.create_task(self._health_reporter(), name="agent-health"),
            asyncio.create_task(self._outbox_sender(), name="agent-outbox"),
        ]

    async def stop(self) -> None:
        """Say goodbye on the status topic, stop the tasks and the server."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._state.pop("installing", None) is not None:  # a clean stop is not a crash
            self._save_state()
        if self.relay is not None:
            await self.relay.stop()
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            try:
                await asyncio.to_thread(self._publish_status, mqtt, online=False, wait=True)
            except TransportError as exc:
                log.info("could not publish the offline status: %s", exc)
            await asyncio.to_thread(mqtt.close)
        await self.server.stop()
        self.outbox.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        if self._tracing:
            tracing.shutdown()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT."""
        import signal  # noqa: PLC0415

        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        endpoint = self._endpoint() or "the MQTT relay only (no inbound port)"
        print(f"edgefabric agent {self.device_id} serving on {endpoint}", flush=True)
        await stop.wait()
        await self.stop()

    # ------------------------------------------------------------------ persisted state

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
            return state if isinstance(state, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); starting from a clean state", self._state_path, exc)
            return {}

    def _save_state(self) -> None:
        write_atomic(self._state_path, json.dumps(self._state, sort_keys=True).encode())

    async def _recover_from_crash(self) -> None:
        marker = self._state.pop("installing", None)
        if not marker:
            return
        name, version = str(marker["model"]), int(marker["version"])
        slots = self._slots.get(name)
        self._save_state()
        if slots is None or slots.state(version) is None:
            return
        crashes = slots.record_crash(version)
        log.warning("the agent stopped while installing or probing %s:%d", name, version)
        if crashes < self.settings.max_install_crashes:
            return
        reason = f"the agent crashed {crashes} times while installing or running it"
        if slots.state(version) is not SlotState.FAILED:
            slots.set_state(version, SlotState.FAILED, reason)
        served = await self.server.rollback(slots) if slots.active == version else slots.active
        self._event(
            Event.ROLLED_BACK, name, version, f"{reason}; serving version {served or 'none'}"
        )

    # ------------------------------------------------------------------ events

    def _event(self, kind: int, model: str = "", version: int = 0, message: str = "") -> None:
        event_id = int(self._state.get("next_event_id", 1))
        self._state["next_event_id"] = event_id + 1
        self._save_state()
        event = Event(
            device_id=self.device_id,
            at_ms=_now_ms(),
            kind=kind,  # type: ignore[arg-type]
            model=model,
            version=version,
            message=message,
            sequence=self._pending.sequence if self._pending else self.applied_sequence,
            event_id=event_id,
        )
        log.info("event %s %s:%s %s", Event.Kind.Name(kind), model, version, message)
        self.outbox.put(topics.device_events(self.device_id), event.SerializeToString())
        self._wake_outbox.set()
        for listener in self.listeners:
            listener(event)

    # ------------------------------------------------------------------ MQTT

    def _endpoint(self) -> str:
        """host:port of the inbound gRPC server; "" when the device opens no port."""
        if not self.server.listening:
            return ""
        return f"{self.settings.grpc_address}:{self.server.port}"

    def _publish_status(self, mqtt: MqttClient, *, online: bool, wait: bool = False) -> None:
        status = DeviceStatus(
            device_id=self.device_id,
            online=online,
            at_ms=_now_ms(),
            agent_version=AGENT_VERSION,
            labels=self.settings.labels,
            grpc_endpoint=self._endpoint(),
        )
        topic = topics.device_status(self.device_id)
        mqtt.publish(topic, status.SerializeToString(), qos=1, retain=True, wait=wait)

    def _client(self) -> MqttClient:
        offline = DeviceStatus(device_id=self.device_id, online=False, agent_version=AGENT_VERSION)
        will = Will(topics.device_status(self.device_id), offline.SerializeToString())
        client = MqttClient(
            self._address,
            self.device_id,
            will=will,
            tls=self._tls,
            reconnect_max_delay_s=max(int(self.settings.retry_max_s), 1),
        )
        client.on_connection_change(self._connection_changed)
        return client

    def _connection_changed(self, connected: bool) -> None:
        """On paho's thread: re-announce the device and flush the outbox after a reconnect."""
        mqtt = self._mqtt
        if connected and mqtt is not None:
            self._publish_status(mqtt, online=True)
        if connected and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_outbox.set)

    async def _connection(self) -> None:
        delay = _RETRY_MIN_S
        while True:
            client = self._client()
            try:
                await asyncio.to_thread(client.connect, self.settings.repo_timeout_s)
                break
            except TransportError as exc:
                log.warning("broker unreachable (%s); serving on, retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
        self._mqtt = client
        repo = RepoClient(client, self.device_id, timeout_s=self.settings.repo_timeout_s)
        fetcher = MqttFetcher(
            repo, self.settings.data_dir / "partial", on_chunk=self.telemetry.on_chunk
        )
        self._sync = ModelSync(
            self.settings.data_dir / "metadata",
            self.settings.trust_root.read_bytes(),
            fetcher,
            self.settings.data_dir / "download",
        )
        if self.relay is not None:  # before the birth status: online means answering
            await self.relay.attach(client)
        self._publish_status(client, online=True)
        await asyncio.to_thread(
            client.subscribe, topics.device_desired(self.device_id), self._desired_arrived
        )
        self._wake_outbox.set()

    def _desired_arrived(self, message: Message) -> None:
        """On paho's thread: hand the payload to the loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._accept_desired, message.payload)

    def _accept_desired(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message: nothing desired
        newest = max(self.applied_sequence, self._pending.sequence if self._pending else 0)
        try:
            state = open_desired(
                payload, device_id=self.device_id, public_key=self._key, applied_sequence=newest
            )
        except InvalidInputError as exc:
            log.warning("dropped a desired-state message: %s", exc)
            self._event(Event.REJECTED, message=str(exc))
            return
        self._pending = state
        models = ", ".join(f"{m.name}:{m.version}" for m in state.models)
        self._event(Event.DESIRED_RECEIVED, message=f"sequence {state.sequence}: {models}")
        self._wake_reconcile.set()

    # ------------------------------------------------------------------ reconcile

    async def _reconciler(self) -> None:
        delay = _RETRY_MIN_S
        while True:
            await self._wake_reconcile.wait()
            self._wake_reconcile.clear()
            state = self._pending
            if state is None or state.sequence <= self.applied_sequence:
                continue
            try:
                await self._reconcile(state)
            except TransportError as exc:
                log.warning("store unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                self._wake_reconcile.set()
                continue
            delay = _RETRY_MIN_S
            if self._pending is state:
                self._state["applied_sequence"] = state.sequence
                self._save_state()
                served = ", ".join(f"{n}:{v}" for n, v in sorted(self.server.served().items()))
                self._event(Event.RECONCILED, message=f"serving {served or 'nothing'}")

    async def _reconcile(self, state: DesiredState) -> None:
        for ref in state.models:
            if self._pending is not state:
                return  # a newer state arrived; start over with it
            name, version = ref.name, int(ref.version)
            if self.server.served().get(name) == version:
                continue
            slots = self._slots.setdefault(
                name,
                ModelSlots(
                    self.settings.data_dir / "models",
                    name,
                    keep_previous=self.settings.keep_previous,
                ),
            )
            if slots.state(version) is SlotState.FAILED:
                reason = slots.reason(version)
                self._event(Event.INSTALL_FAILED, name, version, f"failed before: {reason}")
                continue
            if slots.state(version) in (None, SlotState.DOWNLOADING) and not await self._download(
                slots, version
            ):
                continue
            await self._install(slots, version)

    async def _download(self, slots: ModelSlots, version: int) -> bool:
        """Fetch and verify into the slot; False when refused (TransportError propagates)."""
        name = slots.name
        assert self._sync is not None  # reconcile runs only once connected
        if slots.state(version) is None:
            slots.set_state(version, SlotState.DOWNLOADING)
            self._event(Event.DOWNLOAD_STARTED, name, version)
        else:
            self._event(Event.DOWNLOAD_RESUMED, name, version)
        try:
            downloaded = await asyncio.to_thread(self._sync.fetch, name, version)
        except (IntegrityError, ModelNotFoundError) as exc:
            slots.set_state(version, SlotState.FAILED, str(exc))
            self._event(Event.REJECTED, name, version, str(exc))
            return False
        stage = str(downloaded.custom.get("stage", ""))
        if stage == "deprecated":
            message = f"{name}:{version} is deprecated in the store; not installing it"
            slots.set_state(version, SlotState.FAILED, message)
            self._event(Event.REJECTED, name, version, message)
            return False
        slots.install_verified(version, downloaded.model, downloaded.golden, downloaded.custom)
        self._event(
            Event.VERIFIED,
            name,
            version,
            f"sha256 and signatures verified ({stage}); fetched {downloaded.fetched_bytes} "
            f"bytes, resumed {downloaded.resumed_bytes} bytes from disk",
        )
        return True

    async def _install(self, slots: ModelSlots, version: int) -> None:
        name = slots.name
        before = self.server.served().get(name)
        self._state["installing"] = {"model": name, "version": version}
        self._save_state()
        try:
            await self.server.install(slots, version)
        except (ModelLoadError, IntegrityError) as exc:
            self._clear_marker(name, version)
            self._self_tests[(name, version)] = False
            self._event(Event.INSTALL_FAILED, name, version, str(exc))
            if before is not None:
                self._event(Event.ROLLED_BACK, name, before, f"version {before} keeps serving")
            return
        has_golden = slots.golden_path(version) is not None
        self._self_tests[(name, version)] = True
        if has_golden:
            self._event(Event.SELF_TEST_PASSED, name, version, "golden vectors match")
        self._event(Event.SWITCHED, name, version, f"was {before if before else 'not served'}")
        asyncio.get_running_loop().call_later(self._probation_s, self._clear_marker, name, version)

    def _clear_marker(self, name: str, version: int) -> None:
        if self._state.get("installing") == {"model": name, "version": version}:
            del self._state["installing"]
            self._save_state()

    # ------------------------------------------------------------------ health and outbox

    def health(self) -> bytes:
        """The Health message as it would be published now."""
        cpu, rss = self._sampler.sample()
        sync = self._sync
        message = build_health(
            device_id=self.device_id,
            now_ms=_now_ms(),
            slots=self._slots.values(),
            latency=self.latency,
            execution_provider=self.server.execution_provider,
            metadata_age_s=sync.metadata_age_s() if sync else None,
            cpu_percent=cpu,
            rss_bytes=rss,
            applied_sequence=self.applied_sequence,
            outbox_pending=len(self.outbox),
            self_tests=self._self_tests,
        )
        return message.SerializeToString()

    async def _health_reporter(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            mqtt = self._mqtt
            if mqtt is None or not mqtt.connected:
                continue
            try:
                mqtt.publish(topics.device_health(self.device_id), self.health(), qos=0)
            except TransportError as exc:
                log.info("health not sent: %s", exc)

    async def _outbox_sender(self) -> None:
        while True:
            await self._wake_outbox.wait()
            self._wake_outbox.clear()
            mqtt = self._mqtt
            if mqtt is None or not mqtt.connected:
                continue
            for item in self.outbox.pending():
                try:
                    await asyncio.to_thread(
                        mqtt.publish, item.topic, item.payload, qos=1, wait=True, timeout_s=10
                    )
                except (TransportError, EdgefabricError) as exc:
                    log.info("outbox paused: %s", exc)
                    break
                self.outbox.ack(item.seq)
            else:
                if len(self.outbox):
                    self._wake_outbox.set()


def data_dir_layout(data_dir: Path) -> dict[str, Path]:
    """Where the agent keeps things (for operators and tests)."""
    return {
        "models": data_dir / "models",
        "serving": data_dir / "serving",
        "metadata": data_dir / "metadata",
        "partial": data_dir / "partial",
        "outbox": data_dir / "outbox.sqlite3",
        "state": data_dir / "agent.json",
    }
