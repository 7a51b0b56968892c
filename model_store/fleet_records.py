"""What the controller knows about each device, folded from what devices publish (sans-I/O).

:func:`decode` turns one MQTT message from ``ef/v1/dev/{device}/status|health|events`` into a
typed report, or raises ``ValueError`` saying why it is garbage. :meth:`DeviceRecord.apply`
folds a report into the device's record; the receive time is passed in, nothing here reads a
clock or a socket. A record becomes a rollout :class:`DeviceView`, a :class:`DeviceRow` for
``fleet status``, or JSON for the device table.

Rules, in the order reports can arrive:

- ``last_seen_s`` is when the controller last received a live message from the device. A
  retained status (replayed by the broker when the controller subscribes) only sets it when
  nothing better is known, from the status's own ``at_ms``.
- ``online`` follows the status (birth, clean goodbye, Last Will); any live health or event
  also means the device is connected.
- A health report is a snapshot, but an event newer than it (by the device's own ``at_ms``)
  wins: a ``SWITCHED`` sets the active version and a passed self-test at once, before the next
  health report confirms them.
- ``reconciled_sequence`` is the newest desired-state sequence reported RECONCILED, or as
  ``applied_sequence`` by a health report (which makes up for a lost event).
- ``failed`` is sticky: a version is failed once its slot was reported FAILED or it had an
  ``INSTALL_FAILED`` event. ``self_test`` holds only versions whose self-test ran: events, a
  health report's True, or its False for a FAILED slot (the wire's False also means "never ran").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from edgefabric import topics
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Event, Health
from model_store.rollout.core import DeviceView

__all__ = ["DeviceRecord", "DeviceRow", "ModelRow", "Report", "decode", "selects"]

Report = DeviceStatus | Health | Event
_KINDS: dict[str, type[Report]] = {"status": DeviceStatus, "health": Health, "events": Event}
_DEVICE_PREFIX = f"{topics.PREFIX}/dev/"
_KEPT_STATES = frozenset({"READY", "DRAINING", "UNLOADED", "VERIFIED"})
_FORMAT = 1
Key = tuple[str, int]


def decode(topic: str, payload: bytes) -> tuple[str, Report]:
    """``(device_id, report)`` from a device topic; ``ValueError`` says what is wrong."""
    rest = topic[len(_DEVICE_PREFIX) :] if topic.startswith(_DEVICE_PREFIX) else ""
    device_id, _, kind = rest.partition("/")
    message_type = _KINDS.get(kind)
    if not device_id or message_type is None:
        raise ValueError(f"{topic!r} is not a device status, health or events topic")
    if not payload:
        raise ValueError(f"empty payload on {topic!r}")
    try:
        report = message_type.FromString(payload)
    except DecodeError as error:
        raise ValueError(f"{topic!r}: not a {message_type.__name__} ({error})") from None
    if report.device_id != device_id:
        raise ValueError(
            f"{topic!r}: the {message_type.__name__} names device {report.device_id!r}, "
            f"expected {device_id!r}"
        )
    return device_id, report


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether every ``key=value`` of ``selector`` is among ``labels`` (``{}``: every device)."""
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class ModelRow:
    """One model on one device, for ``fleet status``."""

    model: str
    active: int | None
    previous: int | None
    requests: int
    errors: int
    p99_ms: float | None
    self_test: bool | None
    failed: tuple[int, ...]

    @property
    def error_rate(self) -> float | None:
        """Errors per request of the active version; None before its first request."""
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class DeviceRow:
    """One device, for ``fleet status``: ``last_seen_s`` is Unix time (0.0: never)."""

    device_id: str
    online: bool
    last_seen_s: float
    labels: Mapping[str, str]
    agent_version: str
    reconciled_sequence: int
    last_event: str
    missed_events: int
    models: tuple[ModelRow, ...]


@dataclass(slots=True)
class _Metrics:
    requests: int
    errors: int
    p99_ms: float


@dataclass(slots=True)
class DeviceRecord:
    """One device as last reported; mutable, owned by one thread at a time."""

    device_id: str
    labels: dict[str, str] = field(default_factory=dict)
    online: bool = False
    last_seen_s: float = 0.0
    agent_version: str = ""
    active: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (version, at_ms)
    previous: dict[str, int] = field(default_factory=dict)
    failed: dict[str, set[int]] = field(default_factory=dict)
    metrics: dict[Key, _Metrics] = field(default_factory=dict)
    self_test: dict[Key, tuple[bool, int]] = field(default_factory=dict)  # (passed, at_ms)
    health_at_ms: int = 0
    reconciled_sequence: int = 0
    last_event: str = ""
    last_event_id: int = 0
    missed_events: int = 0  # gaps in the device's event ids (lost on the way)

    # -- folding reports in --------------------------------------------------------------

    def apply(self, report: Report, *, received_s: float, retained: bool) -> int:
        """Fold one decoded report in; ``retained``: replayed by the broker, not sent now.

        Returns how many events this one shows were lost before it (a gap in event ids).
        """
        if isinstance(report, DeviceStatus):
            self._apply_status(report, received_s, retained)
            return 0
        if not retained:
            self.online = True
            self.last_seen_s = max(self.last_seen_s, received_s)
        if isinstance(report, Health):
            self._apply_health(report)
            return 0
        return self._apply_event(report)

    def _apply_status(self, status: DeviceStatus, received_s: float, retained: bool) -> None:
        self.online = status.online
        if status.online or status.labels:  # a Last Will carries no labels: keep the known ones
            self.labels = dict(status.labels)
        if status.agent_version:
            self.agent_version = status.agent_version
        if status.online and not retained:
            self.last_seen_s = max(self.last_seen_s, received_s)
        elif not self.last_seen_s and status.at_ms > 0:
            self.last_seen_s = status.at_ms / 1000.0

    def _apply_health(self, health: Health) -> None:
        at = health.at_ms
        if at < self.health_at_ms:
            return  # an older report overtaken by a newer one
        self.health_at_ms = at
        # The sequence fully acted on: stands in for a RECONCILED event lost on the way.
        self.reconciled_sequence = max(self.reconciled_sequence, int(health.applied_sequence))
        reported = {slot.model: int(slot.version) for slot in health.slots if slot.active}
        for model in set(self.active) | set(reported):
            known = self.active.get(model)
            if known is not None and known[1] > at:
                continue  # an event newer than this report wins
            version = reported.get(model)
            if version is None:
                self.active.pop(model, None)
            else:
                self._activate(model, version, at)
        failed_slots = set()
        for slot in health.slots:
            if slot.state == "FAILED":
                failed_slots.add((slot.model, int(slot.version)))
                self.failed.setdefault(slot.model, set()).add(int(slot.version))
        self._guess_previous(health)
        self.metrics = {
            (m.model, int(m.version)): _Metrics(int(m.requests), int(m.errors), m.p99_ms)
            for m in health.models
        }
        for m in health.models:
            key = (m.model, int(m.version))
            if m.self_test_passed or key in failed_slots:
                self._self_test(key, m.self_test_passed, at)

    def _guess_previous(self, health: Health) -> None:
        """Before a switch was seen, the newest other version kept on disk is the previous."""
        for model, (version, _) in self.active.items():
            if model in self.previous:
                continue
            kept = [
                int(slot.version)
                for slot in health.slots
                if slot.model == model and slot.version != version and slot.state in _KEPT_STATES
            ]
            if kept:
                self.previous[model] = max(kept)

    def _apply_event(self, event: Event) -> int:
        missed = 0
        if self.last_event_id and event.event_id > self.last_event_id + 1:
            missed = int(event.event_id) - self.last_event_id - 1
            self.missed_events += missed
        self.last_event_id = max(self.last_event_id, int(event.event_id))
        kind, key, at = event.kind, (event.model, int(event.version)), event.at_ms
        name = Event.Kind.Name(kind) if kind in Event.Kind.values() else f"KIND_{kind}"
        self.last_event = f"{name} {key[0]}:{key[1]}" if key[0] else name
        if kind == Event.SWITCHED and key[0]:
            known = self.active.get(key[0])
            if known is None or known[1] <= at:
                self._activate(key[0], key[1], at)
            self._self_test(key, True, at)
        elif kind == Event.SELF_TEST_PASSED and key[0]:
            self._self_test(key, True, at)
        elif kind == Event.INSTALL_FAILED and key[0]:
            self.failed.setdefault(key[0], set()).add(key[1])
            self._self_test(key, False, at)
        elif kind == Event.RECONCILED:
            self.reconciled_sequence = max(self.reconciled_sequence, int(event.sequence))
        return missed

    def _activate(self, model: str, version: int, at_ms: int) -> None:
        known = self.active.get(model)
        if known is not None and known[0] != version:
            self.previous[model] = known[0]
        self.active[model] = (version, at_ms)

    def _self_test(self, key: Key, passed: bool, at_ms: int) -> None:
        known = self.self_test.get(key)
        if known is None or known[1] <= at_ms:
            self.self_test[key] = (passed, at_ms)

    # -- views -----------------------------------------------------------------------------

    def view(self, *, online: bool | None = None) -> DeviceView:
        """The rollout engine's view (``online`` overrides the reported one, e.g. when stale)."""
        return DeviceView(
            device_id=self.device_id,
            labels=dict(self.labels),
            online=self.online if online is None else online,
            last_seen_s=self.last_seen_s,
            active={model: version for model, (version, _) in self.active.items()},
            failed={model: frozenset(versions) for model, versions in self.failed.items()},
            requests={key: m.requests for key, m in self.metrics.items()},
            errors={key: m.errors for key, m in self.metrics.items()},
            p99_ms={key: m.p99_ms for key, m in self.metrics.items()},
            self_test={key: passed for key, (passed, _) in self.self_test.items()},
        )

    def row(self) -> DeviceRow:
        """The ``fleet status`` row: per model its active and previous version and health."""
        models = []
        for model in sorted(set(self.active) | set(self.failed)):
            version = self.active[model][0] if model in self.active else None
            metrics = self.metrics.get((model, version)) if version is not None else None
            passed = self.self_test.get((model, version)) if version is not None else None
            models.append(
                ModelRow(
                    model=model,
                    active=version,
                    previous=self.previous.get(model),
                    requests=metrics.requests if metrics else 0,
                    errors=metrics.errors if metrics else 0,
                    p99_ms=metrics.p99_ms if metrics and metrics.requests else None,
                    self_test=passed[0] if passed else None,
                    failed=tuple(sorted(self.failed.get(model, ()))),
                )
            )
        return DeviceRow(
            device_id=self.device_id,
            online=self.online,
            last_seen_s=self.last_seen_s,
            labels=dict(self.labels),
            agent_version=self.agent_version,
            reconciled_sequence=self.reconciled_sequence,
            last_event=self.last_event,
            missed_events=self.missed_events,
            models=tuple(models),
        )

    # -- the device table ------------------------------------------------------------------

    def to_json(self) -> str:
        """The whole record, for the device table."""
        return json.dumps(
            {
                "format": _FORMAT,
                "labels": self.labels,
                "online": self.online,
                "last_seen_s": self.last_seen_s,
                "agent_version": self.agent_version,
                "active": [[m, v, at] for m, (v, at) in sorted(self.active.items())],
                "previous": self.previous,
                "failed": {m: sorted(vs) for m, vs in sorted(self.failed.items())},
                "metrics": [
                    [m, v, x.requests, x.errors, x.p99_ms]
                    for (m, v), x in sorted(self.metrics.items())
                ],
                "self_test": [[m, v, p, at] for (m, v), (p, at) in sorted(self.self_test.items())],
                "health_at_ms": self.health_at_ms,
                "reconciled_sequence": self.reconciled_sequence,
                "last_event": self.last_event,
                "last_event_id": self.last_event_id,
                "missed_events": self.missed_events,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, device_id: str, text: str) -> DeviceRecord:
        """A record saved by :meth:`to_json`; ``ValueError`` when it is not one."""
        try:
            data: dict[str, Any] = json.loads(text)
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT}")
            return cls(
                device_id=device_id,
                labels={str(k): str(v) for k, v in data["labels"].items()},
                online=bool(data["online"]),
                last_seen_s=float(data["last_seen_s"]),
                agent_version=str(data["agent_version"]),
                active={str(m): (int(v), int(at)) for m, v, at in data["active"]},
                previous={str(m): int(v) for m, v in data["previous"].items()},
                failed={str(m): {int(v) for v in vs} for m, vs in data["failed"].items()},
                metrics={
                    (str(m), int(v)): _Metrics(int(r), int(e), float(p))
                    for m, v, r, e, p in data["metrics"]
                },
                self_test={
                    (str(m), int(v)): (bool(p), int(at)) for m, v, p, at in data["self_test"]
                },
                health_at_ms=int(data["health_at_ms"]),
                reconciled_sequence=int(data["reconciled_sequence"]),
                last_event=str(data["last_event"]),
                last_event_id=int(data["last_event_id"]),
                missed_events=int(data["missed_events"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"device {device_id!r}: unreadable record ({error})") from None
