"""One simulated edge device, without I/O: what it answers to desired state, what health it reports.

It follows the edge agent's protocol (``edge_agent/agent.py``) without downloading or running
models: a desired state is accepted only when ``open_desired`` accepts it (signature, device id,
newer sequence), and each model is "installed" at once with the agent's events::

    DESIRED_RECEIVED, then per model not yet served:
        DOWNLOAD_STARTED, VERIFIED          (a version not on the device yet)
        SELF_TEST_PASSED, SWITCHED          (or INSTALL_FAILED [+ ROLLED_BACK] when told to fail)
    RECONCILED

A version already FAILED here is refused again with INSTALL_FAILED, as the agent does. Slots keep
``keep_previous`` earlier versions (UNLOADED) and remember FAILED ones. Health counts requests on
the active versions at ``requests_per_s``, with errors at the configured rate and a p99 latency
per version. Time comes in as ``now_ms``; nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefabric.desired import open_desired
from edgefabric.errors import InvalidInputError
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Event, Health

__all__ = ["AGENT_VERSION", "Behaviour", "Key", "SimulatedDevice"]

AGENT_VERSION = "sim-0.1.0"
Key = tuple[str, int]


@dataclass(frozen=True)
class Behaviour:
    """How the simulated models behave, fleet-wide: per (model, version) error rates and p99
    latencies; ``base_p99_ms`` (spread by +-10 % per device) where none is given."""

    error_rates: Mapping[Key, float] = field(default_factory=dict)
    p99_ms: Mapping[Key, float] = field(default_factory=dict)
    base_p99_ms: float = 20.0
    requests_per_s: float = 20.0
    keep_previous: int = 2
    execution_provider: str = "CPUExecutionProvider"


class SimulatedDevice:
    """One device's state. Not thread-safe: its owner serialises calls."""

    def __init__(
        self,
        device_id: str,
        *,
        labels: Mapping[str, str],
        serving: Mapping[str, int],
        behaviour: Behaviour,
        public_key: Ed25519PublicKey | None,
        fails: frozenset[Key] = frozenset(),
        now_ms: int = 0,
    ) -> None:
        self.device_id = device_id
        self.labels = dict(labels)
        self.behaviour = behaviour
        self.fails = fails
        self.applied_sequence = 0
        self._key = public_key
        self._slots: dict[str, dict[int, str]] = {m: {v: "READY"} for m, v in serving.items()}
        self._reasons: dict[Key, str] = {}
        self._active: dict[str, int] = dict(serving)
        self._previous: dict[str, list[int]] = {}
        self._self_tests: dict[Key, bool] = {}
        self._requests: dict[Key, float] = {}
        self._accrued_ms = now_ms
        self._event_id = 0
        digest = hashlib.sha256(device_id.encode()).digest()
        self._jitter = 0.9 + 0.2 * digest[0] / 255  # the device's own latency, stable

    @property
    def active(self) -> dict[str, int]:
        """The version of each model served now."""
        return dict(self._active)

    # -- status ------------------------------------------------------------------------------

    def status(self, *, online: bool, now_ms: int) -> bytes:
        """The retained status: birth (``online``) or the goodbye of a clean stop."""
        return DeviceStatus(
            device_id=self.device_id,
            online=online,
            at_ms=now_ms,
            agent_version=AGENT_VERSION,
            labels=self.labels,
        ).SerializeToString()

    def will(self) -> bytes:
        """The Last Will, as the agent sets it: offline, no time, no labels."""
        return DeviceStatus(
            device_id=self.device_id, online=False, agent_version=AGENT_VERSION
        ).SerializeToString()

    # -- desired state -------------------------------------------------------------------------

    def on_desired(self, payload: bytes, now_ms: int) -> list[bytes]:
        """The events (serialised, in order) answering one message on the desired topic."""
        if not payload:
            return []  # a cleared retained message: nothing desired
        self._accrue(now_ms)
        try:
            state = open_desired(
                payload,
                device_id=self.device_id,
                public_key=self._key,
                applied_sequence=self.applied_sequence,
            )
        except InvalidInputError as error:
            return [self._event(Event.REJECTED, now_ms, self.applied_sequence, message=str(error))]
        sequence = int(state.sequence)
        wanted = ", ".join(f"{m.name}:{m.version}" for m in state.models)
        events = [
            self._event(
                Event.DESIRED_RECEIVED, now_ms, sequence, message=f"sequence {sequence}: {wanted}"
            )
        ]
        for ref in state.models:
            events += self._install(ref.name, int(ref.version), now_ms, sequence)
        self.applied_sequence = sequence
        served = ", ".join(f"{m}:{v}" for m, v in sorted(self._active.items()))
        events.append(
            self._event(
                Event.RECONCILED, now_ms, sequence, message=f"serving {served or 'nothing'}"
            )
        )
        return events

    def _install(self, name: str, version: int, now_ms: int, sequence: int) -> list[bytes]:
        if self._active.get(name) == version:
            return []
        slots = self._slots.setdefault(name, {})
        key = (name, version)

        def event(kind: int, message: str = "", at_version: int = version) -> bytes:
            return self._event(
                kind, now_ms, sequence, model=name, version=at_version, message=message
            )

        if slots.get(version) == "FAILED":
            return [event(Event.INSTALL_FAILED, f"failed before: {self._reasons.get(key, '')}")]
        events = []
        if version not in slots:
            events += [event(Event.DOWNLOAD_STARTED), event(Event.VERIFIED, "simulated")]
        before = self._active.get(name)
        if key in self.fails:
            reason = "golden vectors do not match (simulated failure)"
            slots[version], self._reasons[key], self._self_tests[key] = "FAILED", reason, False
            events.append(event(Event.INSTALL_FAILED, reason))
            if before is not None:
                events.append(
                    event(Event.ROLLED_BACK, f"version {before} keeps serving", at_version=before)
                )
            return events
        self._self_tests[key] = True
        self._switch(name, version)
        events += [
            event(Event.SELF_TEST_PASSED, "golden vectors match"),
            event(Event.SWITCHED, f"was {before if before else 'not served'}"),
        ]
        return events

    def _switch(self, name: str, version: int) -> None:
        slots = self._slots[name]
        before = self._active.get(name)
        order = [before] if before is not None else []
        order += [v for v in self._previous.get(name, []) if v not in order]
        kept = [v for v in order if v != version and slots.get(v) != "FAILED"]
        self._previous[name] = kept[: self.behaviour.keep_previous]
        for old in order:
            if old != version and old not in self._previous[name] and slots.get(old) != "FAILED":
                slots.pop(old, None)
        for old in self._previous[name]:
            slots[old] = "UNLOADED"
        slots[version] = "READY"
        self._active[name] = version

    def _event(
        self,
        kind: int,
        now_ms: int,
        sequence: int,
        *,
        model: str = "",
        version: int = 0,
        message: str = "",
    ) -> bytes:
        self._event_id += 1
        return Event(
            device_id=self.device_id,
            at_ms=now_ms,
            kind=kind,  # type: ignore[arg-type]  # protobuf stubs want the enum type
            model=model,
            version=version,
            message=message,
            sequence=sequence,
            event_id=self._event_id,
        ).SerializeToString()

    # -- health --------------------------------------------------------------------------------

    def health(self, now_ms: int) -> bytes:
        """The health report at ``now_ms``: slots, and per version requests, errors, latency."""
        self._accrue(now_ms)
        report = Health(
            device_id=self.device_id,
            at_ms=now_ms,
            execution_provider=self.behaviour.execution_provider,
            metadata_age_s=0.0,
            applied_sequence=self.applied_sequence,
        )
        for name in sorted(self._slots):
            for version, state in sorted(self._slots[name].items()):
                report.slots.add(
                    model=name,
                    version=version,
                    state=state,
                    reason=self._reasons.get((name, version), ""),
                    active=self._active.get(name) == version,
                )
        on_device = {(m, v) for m, versions in self._slots.items() for v in versions}
        reported = on_device & (
            set(self._active.items()) | set(self._requests) | set(self._self_tests)
        )
        for name, version in sorted(reported):
            requests = math.floor(self._requests.get((name, version), 0.0))
            rate = self.behaviour.error_rates.get((name, version), 0.0)
            p99 = self.behaviour.p99_ms.get(
                (name, version), self.behaviour.base_p99_ms * self._jitter
            )
            report.models.add(
                model=name,
                version=version,
                requests=requests,
                errors=math.floor(requests * rate),
                p50_ms=p99 / 2 if requests else 0.0,
                p99_ms=p99 if requests else 0.0,
                self_test_passed=self._self_tests.get((name, version), False),
            )
        return report.SerializeToString()

    def _accrue(self, now_ms: int) -> None:
        """Count the requests the active versions served since the last count."""
        elapsed_s = max(0, now_ms - self._accrued_ms) / 1000.0
        self._accrued_ms = max(self._accrued_ms, now_ms)
        for key in self._active.items():
            self._requests[key] = (
                self._requests.get(key, 0.0) + self.behaviour.requests_per_s * elapsed_s
            )
