"""``edgefabric fleet simulate``: a fleet of simulated devices on a real broker.

Each device speaks the fleet protocol over its own MQTT connection, as the edge agent does: its
own client id and Last Will, a retained birth status with its labels (again after every
reconnect), a subscription to its desired topic, signed desired state checked with the
controller's public key, events on QoS 1 and periodic health. What a device does with a desired
state is :class:`~model_store.sim_device.SimulatedDevice`; no model is downloaded or run.

Differences from the agent: events are published at once (no on-disk outbox: an event raised
while disconnected is lost), and by default a health report follows every reconcile so gates
need not wait a whole interval.

All connections share one :class:`~edgefabric.mqtt.MqttLoop` thread (paho's thread per client
stops at about 340 clients per process); desired states are answered on it, and one scheduler
thread sends health reports spread evenly over the interval.

TLS (``mqtts://`` with ``--mqtt-ca/--mqtt-cert/--mqtt-key``): every simulated device presents
the same client certificate, so against the fleet's per-device ACL (the CN is the username)
only a device named like the certificate gets its topics; a load test of the ACL broker needs
one enrolled identity per simulated device, which this command does not issue.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefabric import topics
from edgefabric.desired import load_public_key
from edgefabric.errors import EdgefabricError, TransportError
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttLoop, MqttTls, Will
from edgefabric.security.flags import add_mqtt_tls_arguments
from model_store.enroll import mqtt_tls_from
from model_store.sim_device import Behaviour, Key, SimulatedDevice

__all__ = [
    "FleetSimulator",
    "SimulationSettings",
    "device_ids",
    "expand_labels",
    "failing_devices",
    "register_simulate",
]

logger = logging.getLogger(__name__)

_LABEL_INDEX = re.compile(r"\{i(?:(%|//)(\d+))?\}")
_REF = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*):(\d+)")


@dataclass(frozen=True)
class SimulationSettings:
    """What to simulate. ``labels`` values are templates: ``{i}``, ``{i%N}``, ``{i//N}`` are
    replaced by the device's index (e.g. ``site=plant-{i%10}``). ``failures``: the fraction
    of devices (chosen by a hash of ``seed``, exact in count) whose install of that version
    fails its self-test. ``serving``: what every device runs at birth."""

    broker: str
    devices: int
    prefix: str = "sim"
    labels: Mapping[str, str] = field(default_factory=dict)
    serving: Mapping[str, int] = field(default_factory=dict)
    failures: Mapping[Key, float] = field(default_factory=dict)
    behaviour: Behaviour = field(default_factory=Behaviour)
    health_interval_s: float = 5.0
    health_after_reconcile: bool = True
    keepalive_s: int = 30
    seed: str = "0"
    tls: MqttTls | None = None
    """CA and client certificate for an ``mqtts://`` broker; every device presents the same."""

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"devices must be 1 or more, got {self.devices}")
        if not self.health_interval_s > 0:
            raise ValueError(f"health_interval_s must be positive, got {self.health_interval_s}")
        for (name, version), fraction in self.failures.items():
            if not 0 <= fraction <= 1:
                raise ValueError(f"failure fraction for {name}:{version} must be in [0, 1]")
        BrokerAddress.parse(self.broker)


def device_ids(prefix: str, count: int) -> list[str]:
    """``prefix-0000`` ... (zero-padded to at least four digits)."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}-{index:0{width}d}" for index in range(count)]


def expand_labels(templates: Mapping[str, str], index: int) -> dict[str, str]:
    """The labels of device ``index``: ``{i}``, ``{i%N}`` and ``{i//N}`` filled in."""

    def fill(found: re.Match[str]) -> str:
        operator, operand = found[1], found[2]
        if operator is None:
            return str(index)
        if int(operand) == 0:
            raise ValueError(f"label template {found[0]!r} divides by zero")
        return str(index % int(operand) if operator == "%" else index // int(operand))

    return {key: _LABEL_INDEX.sub(fill, value) for key, value in templates.items()}


def failing_devices(ids: Sequence[str], key: Key, fraction: float, seed: str) -> set[str]:
    """Exactly ``round(fraction * len(ids))`` of ``ids``, picked by a hash of seed and version."""
    count = round(fraction * len(ids))

    def rank(device_id: str) -> bytes:
        return hashlib.sha256(f"{seed}/{key[0]}:{key[1]}/{device_id}".encode()).digest()

    return set(sorted(ids, key=rank)[:count])


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Device:
    """A simulated device with its connection; ``lock`` serialises the device's state."""

    def __init__(self, device: SimulatedDevice, client: MqttClient) -> None:
        self.device = device
        self.client = client
        self.lock = threading.Lock()
        self.status_topic = topics.device_status(device.device_id)
        self.health_topic = topics.device_health(device.device_id)
        self.events_topic = topics.device_events(device.device_id)


class FleetSimulator:
    """``start()`` connects every device (blocking until all are online); ``stop()`` says
    goodbye (retained offline status) and disconnects them."""

    def __init__(
        self,
        settings: SimulationSettings,
        *,
        public_key: Ed25519PublicKey | None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.settings = settings
        self._key = public_key
        self._clock_ms = clock_ms
        self._address = BrokerAddress.parse(settings.broker)
        self._tls_context = settings.tls.context() if settings.tls is not None else None
        self._loop = MqttLoop(name="fleet-simulator")
        self._devices: dict[str, _Device] = {}
        self._stopping = threading.Event()
        self._health_thread: threading.Thread | None = None

    @property
    def device_ids(self) -> list[str]:
        """Every simulated device's id, in index order."""
        return list(self._devices) or device_ids(self.settings.prefix, self.settings.devices)

    def device(self, device_id: str) -> SimulatedDevice:
        """One device's simulated state (read it under no lock only when the fleet is idle)."""
        return self._devices[device_id].device

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect every device, publish its birth status and subscribe it to its desired
        state; ``timeout_s`` applies to each connection. TransportError when one fails."""
        settings = self.settings
        ids = device_ids(settings.prefix, settings.devices)
        fails: dict[str, set[Key]] = {}
        for key, fraction in settings.failures.items():
            for device_id in failing_devices(ids, key, fraction, settings.seed):
                fails.setdefault(device_id, set()).add(key)
        self._loop.start()
        now_ms = self._clock_ms()
        try:
            for index, device_id in enumerate(ids):
                device = SimulatedDevice(
                    device_id,
                    labels=expand_labels(settings.labels, index),
                    serving=settings.serving,
                    behaviour=settings.behaviour,
                    public_key=self._key,
                    fails=frozenset(fails.get(device_id, ())),
                    now_ms=now_ms,
                )
                self._connect(device, timeout_s)
        except BaseException:
            self.stop()
            raise
        self._health_thread = threading.Thread(
            target=self._report_health, name="fleet-simulator-health", daemon=True
        )
        self._health_thread.start()

    def stop(self) -> None:
        """Publish each device's offline status, disconnect it, stop the threads."""
        self._stopping.set()
        if self._health_thread is not None:
            self._health_thread.join()
        for sim in self._devices.values():
            try:
                offline = sim.device.status(online=False, now_ms=self._clock_ms())
                sim.client.publish(sim.status_topic, offline, qos=1, retain=True)
            except (TransportError, RuntimeError) as error:
                logger.info("%s: no goodbye sent: %s", sim.device.device_id, error)
            sim.client.close()
        self._loop.close()

    def __enter__(self) -> FleetSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- one device --------------------------------------------------------------------------

    def _connect(self, device: SimulatedDevice, timeout_s: float) -> None:
        status_topic = topics.device_status(device.device_id)
        client = MqttClient(
            self._address,
            device.device_id,
            will=Will(status_topic, device.will()),
            keepalive_s=self.settings.keepalive_s,
            loop=self._loop,
            tls_context=self._tls_context,
        )
        sim = _Device(device, client)
        self._devices[device.device_id] = sim
        client.on_connection_change(lambda up: self._announce(sim) if up else None)
        client.connect(timeout_s)
        client.subscribe(
            topics.device_desired(device.device_id),
            lambda message: self._desired(sim, message),
            timeout_s=timeout_s,
        )

    def _announce(self, sim: _Device) -> None:
        """On the loop thread, at every (re)connection: the retained birth status."""
        with sim.lock:
            birth = sim.device.status(online=True, now_ms=self._clock_ms())
        sim.client.publish(sim.status_topic, birth, qos=1, retain=True)

    def _desired(self, sim: _Device, message: Message) -> None:
        """On the loop thread: answer a desired state with events (and a health report)."""
        now_ms = self._clock_ms()
        with sim.lock:
            events = sim.device.on_desired(message.payload, now_ms)
            health = (
                sim.device.health(now_ms)
                if len(events) > 1 and self.settings.health_after_reconcile
                else None
            )
        for event in events:
            sim.client.publish(sim.events_topic, event, qos=1)
        if health is not None:
            sim.client.publish(sim.health_topic, health, qos=0)

    def _report_health(self) -> None:
        """Each device reports every interval, the fleet's reports spread evenly across it."""
        sims = list(self._devices.values())
        interval_s = self.settings.health_interval_s
        started = time.monotonic()
        for sent in range(sys.maxsize):
            delay = started + interval_s * sent / len(sims) - time.monotonic()
            if (delay > 0 and self._stopping.wait(delay)) or self._stopping.is_set():
                return
            sim = sims[sent % len(sims)]
            if not sim.client.connected:
                continue
            with sim.lock:
                health = sim.device.health(self._clock_ms())
            try:
                sim.client.publish(sim.health_topic, health, qos=0)
            except TransportError as error:
                logger.debug("%s: health not sent: %s", sim.device.device_id, error)


# ---------------------------------------------------------------------- fleet simulate (CLI)


def register_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fleet simulate`` to the ``fleet`` command group."""
    sim = sub.add_parser(
        "simulate", help="simulated devices speaking the fleet protocol (for tests and benches)"
    )
    sim.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    add_mqtt_tls_arguments(sim)
    sim.add_argument("--devices", type=int, default=10, help="how many devices (default 10)")
    sim.add_argument("--prefix", default="sim", help="device ids are PREFIX-0000, PREFIX-0001...")
    sim.add_argument(
        "--labels",
        action="append",
        metavar="K=V[,K=V]",
        help="labels of every device; {i}, {i%%N}, {i//N} are its index (site=plant-{i%%10})",
    )
    sim.add_argument(
        "--serving", action="append", metavar="NAME:VERSION", help="what devices run at birth"
    )
    sim.add_argument(
        "--fail-version",
        action="append",
        metavar="NAME:VERSION@FRACTION",
        help="that share of devices (0.1 or 10%%) fails installing that version",
    )
    sim.add_argument(
        "--error-rate",
        action="append",
        metavar="NAME:VERSION=RATE",
        help="errors per request that version reports",
    )
    sim.add_argument(
        "--p99-ms", action="append", metavar="NAME:VERSION=MS", help="that version's p99 latency"
    )
    sim.add_argument("--health-interval-s", type=float, default=5.0, help="seconds (default 5)")
    sim.add_argument(
        "--requests-per-s", type=float, default=20.0, help="traffic per device (default 20)"
    )
    sim.add_argument(
        "--health-after-reconcile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="report health right after each reconcile (default on)",
    )
    sim.add_argument("--seed", default="0", help="picks which devices fail (default 0)")
    sim.add_argument(
        "--desired-key",
        type=Path,
        help="controller public key (PEM); without it unsigned desired state is accepted",
    )
    sim.set_defaults(handler=_simulate)


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """SimulationSettings from ``fleet simulate`` arguments; ValueError says what is wrong."""
    behaviour = Behaviour(
        error_rates=_ref_values(args.error_rate, "=", "--error-rate", "NAME:VERSION=RATE"),
        p99_ms=_ref_values(args.p99_ms, "=", "--p99-ms", "NAME:VERSION=MS"),
        requests_per_s=args.requests_per_s,
    )
    labels: dict[str, str] = {}
    for item in args.labels or ():
        for pair in filter(None, item.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"--labels {pair!r}: expected KEY=VALUE")
            labels[key.strip()] = value.strip()
    return SimulationSettings(
        broker=args.broker,
        devices=args.devices,
        prefix=args.prefix,
        labels=labels,
        serving=dict(_ref(text, "--serving") for text in args.serving or ()),
        failures=_ref_values(args.fail_version, "@", "--fail-version", "NAME:VERSION@FRACTION"),
        behaviour=behaviour,
        health_interval_s=args.health_interval_s,
        health_after_reconcile=args.health_after_reconcile,
        seed=args.seed,
        tls=mqtt_tls_from(args),
    )


def _ref(text: str, flag: str) -> Key:
    found = _REF.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{flag} {text!r}: expected NAME:VERSION, e.g. mlp:2")
    return found[1], int(found[2])


def _ref_values(items: Sequence[str] | None, sep: str, flag: str, shape: str) -> dict[Key, float]:
    values = {}
    for item in items or ():
        ref, found, number = item.rpartition(sep)
        try:
            if not found:
                raise ValueError
            value = float(number[:-1]) / 100 if number.endswith("%") else float(number)
        except ValueError:
            raise ValueError(f"{flag} {item!r}: expected {shape}") from None
        values[_ref(ref, flag)] = value
    return values


def _simulate(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        key = load_public_key(args.desired_key.read_bytes()) if args.desired_key else None
    except (ValueError, OSError, EdgefabricError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if key is None:
        logger.warning("no --desired-key: the simulated devices accept unsigned desired state")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    simulator = FleetSimulator(settings, public_key=key)
    started = time.monotonic()
    try:
        simulator.start()
    except (TransportError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"simulating {settings.devices} devices on {settings.broker} "
        f"(online in {time.monotonic() - started:.2f} s)",
        flush=True,
    )
    stop.wait()
    simulator.stop()
    return 0
