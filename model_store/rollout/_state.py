"""The state of a rollout and the vocabulary around it: what the engine reads and writes.

:class:`DeviceView` is what the fleet reports, :class:`Rollout` what is persisted (its JSON form
is all of it), :class:`Assign` and :class:`Revert` what the I/O layer is asked to do. The
phases' legal moves are in :data:`TRANSITIONS`; see :mod:`.core` for what drives them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from model_store.rollout.spec import RolloutSpec

__all__ = [
    "ACTIVE_PHASES",
    "TRANSITIONS",
    "Action",
    "Assign",
    "DeviceProgress",
    "DeviceStep",
    "DeviceView",
    "Revert",
    "Rollout",
    "RolloutPhase",
]

_FORMAT = 1


@dataclass(frozen=True)
class DeviceView:
    """What the fleet last reported about one device.

    ``last_seen_s``: when the controller last heard from it, on the ``now_s`` clock (reports
    older than an assignment are not taken as failures of it). ``active``: the version of each
    model serving now. ``failed``: versions whose slot is FAILED or that had INSTALL_FAILED.
    Metrics are by (model, version). ``self_test``: only versions whose self-test ran.
    """

    device_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    online: bool = False
    last_seen_s: float = 0.0
    active: Mapping[str, int] = field(default_factory=dict)
    failed: Mapping[str, frozenset[int]] = field(default_factory=dict)
    requests: Mapping[tuple[str, int], int] = field(default_factory=dict)
    errors: Mapping[tuple[str, int], int] = field(default_factory=dict)
    p99_ms: Mapping[tuple[str, int], float] = field(default_factory=dict)
    self_test: Mapping[tuple[str, int], bool] = field(default_factory=dict)


class RolloutPhase(StrEnum):
    """Where a rollout is in its life."""

    RUNNING = "RUNNING"
    BAKING = "BAKING"
    PAUSED = "PAUSED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"
    SUPERSEDED = "SUPERSEDED"


_P = RolloutPhase
TRANSITIONS: Mapping[RolloutPhase, frozenset[RolloutPhase]] = {
    _P.RUNNING: frozenset({_P.BAKING, _P.PAUSED, _P.ROLLING_BACK, _P.ABORTED}),
    _P.BAKING: frozenset({_P.RUNNING, _P.COMPLETED, _P.PAUSED, _P.ROLLING_BACK, _P.ABORTED}),
    _P.PAUSED: frozenset({_P.RUNNING, _P.BAKING, _P.ROLLING_BACK, _P.ABORTED}),
    _P.ROLLING_BACK: frozenset({_P.ROLLED_BACK, _P.ABORTED}),
    _P.ROLLED_BACK: frozenset(),
    _P.COMPLETED: frozenset({_P.ROLLING_BACK, _P.SUPERSEDED}),
    _P.ABORTED: frozenset(),
    _P.SUPERSEDED: frozenset(),
}
ACTIVE_PHASES = frozenset({_P.RUNNING, _P.BAKING, _P.PAUSED, _P.ROLLING_BACK})
"""Phases in which a rollout owns its devices: another of the same model must not overlap."""


class DeviceStep(StrEnum):
    """Where one touched device is in a rollout."""

    ASSIGNED = "ASSIGNED"  # desired state sent, not yet reported serving
    INSTALLED = "INSTALLED"  # reports the version active
    FAILED = "FAILED"  # reported the version FAILED, or failed a gate while baking
    REVERTING = "REVERTING"  # sent back to its previous version, not yet reported there
    ROLLED_BACK = "ROLLED_BACK"  # reports its previous version (or none) again


@dataclass
class DeviceProgress:
    """One touched device: its step, and what it ran before the rollout reached it."""

    step: DeviceStep
    previous_version: int | None
    assigned_s: float
    stage: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Assign:
    """Make ``version`` of ``model`` part of the device's desired state."""

    device_id: str
    model: str
    version: int


@dataclass(frozen=True)
class Revert:
    """Put the device back on ``version`` of ``model`` (``None``: remove the model)."""

    device_id: str
    model: str
    version: int | None


Action = Assign | Revert


@dataclass
class Rollout:
    """The persisted state of one rollout; :meth:`to_json` holds all of it."""

    id: str
    spec: RolloutSpec
    phase: RolloutPhase
    stage: int
    stage_started_s: float
    bake_started_s: float | None
    devices: dict[str, DeviceProgress]
    reason: str
    history: list[tuple[float, str]]
    created_s: float = 0.0
    resume_phase: RolloutPhase | None = None

    @property
    def active(self) -> bool:
        """Whether the rollout still owns its devices (see :data:`ACTIVE_PHASES`)."""
        return self.phase in ACTIVE_PHASES

    def counts(self, stage: int | None = None) -> dict[DeviceStep, int]:
        """How many touched devices (of one stage) are at each step."""
        found = Counter(p.step for p in self.devices.values() if stage is None or p.stage == stage)
        return {step: found[step] for step in DeviceStep}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "format": _FORMAT,
            "id": self.id,
            "spec": self.spec.to_dict(),
            "phase": self.phase.value,
            "stage": self.stage,
            "stage_started_s": self.stage_started_s,
            "bake_started_s": self.bake_started_s,
            "devices": {
                device_id: [p.step.value, p.previous_version, p.assigned_s, p.stage, p.reason]
                for device_id, p in self.devices.items()  # in assignment order
            },
            "reason": self.reason,
            "history": [list(entry) for entry in self.history],
            "created_s": self.created_s,
            "resume_phase": None if self.resume_phase is None else self.resume_phase.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        """The inverse of :meth:`to_dict`; ``ValueError`` for anything else."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"rollout state has format {data.get('format')!r}, not {_FORMAT}")
        try:
            resume = data["resume_phase"]
            bake = data["bake_started_s"]
            return cls(
                id=str(data["id"]),
                spec=RolloutSpec.from_dict(data["spec"]),
                phase=RolloutPhase(data["phase"]),
                stage=int(data["stage"]),
                stage_started_s=float(data["stage_started_s"]),
                bake_started_s=None if bake is None else float(bake),
                devices={
                    str(device_id): DeviceProgress(
                        DeviceStep(step),
                        None if prev is None else int(prev),
                        float(at),
                        int(stage),
                        str(reason),
                    )
                    for device_id, (step, prev, at, stage, reason) in data["devices"].items()
                },
                reason=str(data["reason"]),
                history=[(float(at), str(text)) for at, text in data["history"]],
                created_s=float(data["created_s"]),
                resume_phase=None if resume is None else RolloutPhase(resume),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"rollout state is incomplete or malformed: {exc!r}") from None

    def to_json(self) -> str:
        """The whole state as JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        """The inverse of :meth:`to_json`; ``ValueError`` when the text is not one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"rollout state is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("rollout state is not a JSON object")
        return cls.from_dict(data)
