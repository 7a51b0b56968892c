"""The rollout state machine: sans-I/O, fed the fleet as reported and the time as ``now_s``.

Phases; :data:`TRANSITIONS` is the only place that says what is legal::

    RUNNING --cohort settled--> BAKING --baked--> RUNNING (next stage) ... --> COMPLETED
    RUNNING | BAKING --pause--> PAUSED --resume--> where it was (a bake starts over)
    RUNNING | BAKING | PAUSED | COMPLETED --failures over budget, or rollback--> ROLLING_BACK
    ROLLING_BACK --every online touched device back on its previous version--> ROLLED_BACK
    RUNNING | BAKING | PAUSED | ROLLING_BACK --abort (stop, keep versions)--> ABORTED
    COMPLETED --a newer rollout of the model takes its devices (supersede)--> SUPERSEDED

A stage's cohort is a deterministic share of the selected devices (a hash of rollout id and
device id orders them; see :func:`cohorts`), counted on the fleet as it is at each tick. Offline
devices are assigned too, since desired state is retained, and are not waited for. A cohort is
settled when every online touched device has INSTALLED or FAILED the version; it then bakes for
``bake_s`` while the gates are judged (:mod:`._gates`). A device fails when it reports the
version FAILED, or fails a gate while baking; failures are sticky. When the failed devices are
more than ``max_failures`` of those touched (the whole current stage counting as touched, so a
rate limit does not change the verdict), every touched device is reverted to its own previous
version. A COMPLETED rollout keeps handing its version to devices that join the selector.

Contract with the I/O layer: actions are *changes*. An :class:`Assign` is returned once, when a
device is first assigned, and a :class:`Revert` once, when a rollback reaches it; ticking again
with the same fleet returns nothing. Save the rollout *before* performing the actions of a tick
(write-ahead), and after a restart send :meth:`RolloutEngine.desired_actions` of every rollout
once, oldest rollout first so that a newer one's word on a device wins: agents apply the same
models again as a no-op, so a crash anywhere leaves nothing unsent. Nothing else is lost in a
restart: a rollout is exactly its :meth:`Rollout.to_json`.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edgefabric.errors import ConflictError
from model_store.rollout._gates import GatePolicy, baseline, judge
from model_store.rollout._state import (
    ACTIVE_PHASES,
    TRANSITIONS,
    Action,
    Assign,
    DeviceProgress,
    DeviceStep,
    DeviceView,
    Revert,
    Rollout,
    RolloutPhase,
)
from model_store.rollout.spec import GateKind, RolloutSpec, format_percent, format_selector

__all__ = [
    "ACTIVE_PHASES",
    "TRANSITIONS",
    "Action",
    "Assign",
    "DeviceProgress",
    "DeviceStep",
    "DeviceView",
    "GatePolicy",
    "Revert",
    "Rollout",
    "RolloutEngine",
    "RolloutPhase",
    "cohorts",
]

_RATE_WINDOW_S = 60.0
_P = RolloutPhase
_BUDGETED = frozenset({_P.RUNNING, _P.BAKING, _P.PAUSED})


def _rank(rollout_id: str, device_id: str) -> tuple[bytes, str]:
    digest = hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).digest()
    return digest, device_id


def _size(fraction: float, total: int) -> int:
    """``ceil(fraction * total)``, without float noise turning 7.000000000000001 into 8."""
    return min(total, math.ceil(round(fraction * total, 9)))


def cohorts(
    rollout_id: str, device_ids: Iterable[str], stages: Iterable[float]
) -> list[frozenset[str]]:
    """The devices each stage has reached: cumulative, ``ceil(fraction * N)`` devices each."""
    ordered = sorted(set(device_ids), key=lambda d: _rank(rollout_id, d))
    return [frozenset(ordered[: _size(stage, len(ordered))]) for stage in stages]


@dataclass(frozen=True)
class RolloutEngine:
    """Decides what a rollout does next; holds no state of its own (see the module doc)."""

    policy: GatePolicy = field(default_factory=GatePolicy)

    # -- starting and refusing ------------------------------------------------------------

    def start(
        self, rollout_id: str, spec: RolloutSpec, fleet: Mapping[str, DeviceView], now_s: float
    ) -> Rollout:
        """A RUNNING rollout at its first stage; ``tick`` it to assign the first cohort."""
        if not any(spec.selects(view.labels) for view in fleet.values()):
            selector = format_selector(spec.selector) or "(every device)"
            raise ConflictError(
                f"selector {selector} matches none of the {len(fleet)} known devices; check "
                "their labels with `edgefabric fleet status`"
            )
        rollout = Rollout(
            id=rollout_id,
            spec=spec,
            phase=RolloutPhase.RUNNING,
            stage=0,
            stage_started_s=now_s,
            bake_started_s=None,
            devices={},
            reason="",
            history=[],
            created_s=now_s,
        )
        _log(rollout, now_s, f"started: {spec.ref}, stage 1 of {len(spec.stages)}")
        return rollout

    def overlapping(
        self, existing: Iterable[Rollout], spec: RolloutSpec, fleet: Mapping[str, DeviceView]
    ) -> list[Rollout]:
        """Rollouts of the same model, in any phase, that could reach a device ``spec`` selects.

        Selectors overlap when no label has two different values in them (a device could match
        both, even one that joins later), or when a device the other touched now matches
        ``spec``. Call :meth:`supersede` on the COMPLETED ones when starting ``spec``.
        """
        return [
            other
            for other in existing
            if other.spec.model == spec.model and _overlap(other, spec, fleet) is not None
        ]

    def conflicts(
        self, existing: Iterable[Rollout], spec: RolloutSpec, fleet: Mapping[str, DeviceView]
    ) -> str | None:
        """Why ``spec`` must not start next to an active rollout of the same model, if so."""
        for other in self.overlapping(existing, spec, fleet):
            if not other.active:
                continue
            example = _overlap(other, spec, fleet)
            mine = format_selector(spec.selector) or "(every device)"
            theirs = format_selector(other.spec.selector) or "(every device)"
            return (
                f"rollout {other.id} ({other.spec.ref}, {other.phase}, selector {theirs}) is "
                f"already rolling out {spec.model} to devices that selector {mine} also "
                f"matches{f' (e.g. {example})' if example else ''}; wait until it completes, "
                f"or abort or roll back {other.id} first"
            )
        return None

    # -- operator commands ----------------------------------------------------------------

    def pause(self, rollout: Rollout, now_s: float, *, reason: str = "") -> list[Action]:
        """Stop assigning and advancing; reports are still watched and the budget still holds."""
        resume = rollout.phase
        _move(rollout, RolloutPhase.PAUSED, now_s, "pause", reason or "paused by an operator")
        rollout.resume_phase = resume
        return []

    def resume(self, rollout: Rollout, now_s: float) -> list[Action]:
        """Carry on where it paused; a bake that was under way starts over from ``now_s``."""
        if rollout.phase is not RolloutPhase.PAUSED:
            _refuse(rollout, "resume", RolloutPhase.RUNNING)
        back = rollout.resume_phase or RolloutPhase.RUNNING
        _move(rollout, back, now_s, "resume", "resumed")
        rollout.resume_phase = None
        if back is RolloutPhase.BAKING:
            rollout.bake_started_s = now_s
        return []

    def abort(self, rollout: Rollout, now_s: float, *, reason: str = "") -> list[Action]:
        """Stop for good; every device keeps the version it was given."""
        _move(rollout, RolloutPhase.ABORTED, now_s, "abort", reason or "aborted by an operator")
        rollout.resume_phase = None
        return []

    def rollback(self, rollout: Rollout, now_s: float, *, reason: str = "") -> list[Action]:
        """Send every touched device back to its previous version."""
        return self._roll_back(rollout, now_s, reason or "rollback asked by an operator")

    def supersede(self, rollout: Rollout, now_s: float, *, by: str) -> list[Action]:
        """A COMPLETED rollout stops handing its version to new devices: ``by`` took over."""
        _move(rollout, RolloutPhase.SUPERSEDED, now_s, "supersede", f"superseded by {by}")
        return []

    # -- the reconcile step ---------------------------------------------------------------

    def tick(self, rollout: Rollout, fleet: Mapping[str, DeviceView], now_s: float) -> list[Action]:
        """Take in the reports, then go as far as they allow; returns the new actions."""
        actions: list[Action] = []
        for _ in range(2 * len(rollout.spec.stages) + 4):
            before = (rollout.phase, rollout.stage)
            self._observe(rollout, fleet, now_s)
            actions += self._step(rollout, fleet, now_s)
            if (rollout.phase, rollout.stage) == before:
                break
        return actions

    def desired_actions(self, rollout: Rollout) -> list[Action]:
        """What every touched device should have been sent, to re-send after a restart.

        Re-send for every rollout, oldest first: where two touched the same device, the newer
        rollout's action comes last and wins.
        """
        model, version = rollout.spec.model, rollout.spec.version
        reverting = (DeviceStep.REVERTING, DeviceStep.ROLLED_BACK)
        return [
            Revert(device_id, model, p.previous_version)
            if p.step in reverting
            else Assign(device_id, model, version)
            for device_id, p in sorted(rollout.devices.items())
        ]

    def _step(
        self, rollout: Rollout, fleet: Mapping[str, DeviceView], now_s: float
    ) -> list[Action]:
        phase = rollout.phase
        over = self._over_budget(rollout, fleet) if phase in _BUDGETED else ""
        if over:
            return self._roll_back(rollout, now_s, over)
        if phase is _P.RUNNING:
            actions, all_sent = self._assign(rollout, fleet, now_s)
            if all_sent and _settled(rollout, fleet):
                rollout.bake_started_s = now_s
                _move(rollout, _P.BAKING, now_s, "bake", f"stage {rollout.stage + 1} settled")
            return actions
        if phase is _P.BAKING:
            self._judge(rollout, fleet, now_s)
            if over := self._over_budget(rollout, fleet):
                return self._roll_back(rollout, now_s, over)
            started = rollout.bake_started_s if rollout.bake_started_s is not None else now_s
            if now_s - started >= rollout.spec.bake_s:
                self._advance(rollout, now_s)
            return []
        if phase is _P.ROLLING_BACK and not any(
            p.step is DeviceStep.REVERTING and _online(fleet, d) for d, p in rollout.devices.items()
        ):
            _move(rollout, _P.ROLLED_BACK, now_s, "finish", "every online device is back")
        if phase is _P.COMPLETED:
            return self._assign(rollout, fleet, now_s)[0]
        return []

    def _observe(self, rollout: Rollout, fleet: Mapping[str, DeviceView], now_s: float) -> None:
        model, version = rollout.spec.model, rollout.spec.version
        selftest = rollout.spec.gate(GateKind.SELFTEST) is not None
        for device_id, progress in rollout.devices.items():
            view = fleet.get(device_id)
            if view is None:
                continue
            if progress.step in (DeviceStep.ASSIGNED, DeviceStep.INSTALLED):
                # A report older than the assignment may be about an earlier attempt.
                fresh = view.last_seen_s > progress.assigned_s
                if fresh and version in view.failed.get(model, frozenset()):
                    _fail(rollout, device_id, now_s, f"reported {rollout.spec.ref} FAILED")
                elif view.active.get(model) == version:
                    progress.step = DeviceStep.INSTALLED
                elif fresh and selftest and view.self_test.get((model, version)) is False:
                    _fail(rollout, device_id, now_s, f"self-test of {rollout.spec.ref} failed")
            elif progress.step is DeviceStep.REVERTING and (
                view.active.get(model) == progress.previous_version
            ):
                progress.step = DeviceStep.ROLLED_BACK

    def _judge(self, rollout: Rollout, fleet: Mapping[str, DeviceView], now_s: float) -> None:
        spec = rollout.spec
        base = baseline(spec, fleet, rollout.devices, self.policy) if spec.canary else None
        for device_id, progress in rollout.devices.items():
            view = fleet.get(device_id)
            if progress.step is DeviceStep.INSTALLED and view is not None:
                reason = judge(spec, view, base, self.policy)
                if reason:
                    _fail(rollout, device_id, now_s, reason)

    def _over_budget(self, rollout: Rollout, fleet: Mapping[str, DeviceView]) -> str:
        failed = sum(p.step is DeviceStep.FAILED for p in rollout.devices.values())
        if not failed:
            return ""
        stage_size = _size(rollout.spec.stages[rollout.stage], len(_selected(rollout, fleet)))
        touched = max(len(rollout.devices), stage_size)
        allowed = math.floor(rollout.spec.max_failures * touched + 1e-9)
        if failed <= allowed:
            return ""
        return (
            f"{failed} of {touched} devices failed, more than the {allowed} allowed "
            f"(max failures {format_percent(rollout.spec.max_failures)})"
        )

    def _assign(
        self, rollout: Rollout, fleet: Mapping[str, DeviceView], now_s: float
    ) -> tuple[list[Action], bool]:
        """Assign the devices the stage still needs; ``True`` when the rate held none back."""
        selected = _selected(rollout, fleet)
        target = _size(rollout.spec.stages[rollout.stage], len(selected))
        if rollout.phase is _P.COMPLETED:
            target = len(selected)
        fresh = [d for d in selected if d not in rollout.devices]
        need = max(0, target - (len(selected) - len(fresh)))
        room = need
        if rollout.spec.rate_per_min is not None:
            recent = sum(p.assigned_s > now_s - _RATE_WINDOW_S for p in rollout.devices.values())
            room = min(need, max(0, rollout.spec.rate_per_min - recent))
        chosen = heapq.nsmallest(room, fresh, key=lambda d: _rank(rollout.id, d))
        model, version = rollout.spec.model, rollout.spec.version
        for device_id in chosen:
            rollout.devices[device_id] = DeviceProgress(
                DeviceStep.ASSIGNED, fleet[device_id].active.get(model), now_s, rollout.stage
            )
        if chosen and rollout.phase is _P.COMPLETED:
            _log(rollout, now_s, f"{len(chosen)} devices joined the selector: assigned")
        return [Assign(d, model, version) for d in chosen], room == need

    def _advance(self, rollout: Rollout, now_s: float) -> None:
        done = f"stage {rollout.stage + 1} baked"
        rollout.bake_started_s = None
        if rollout.stage + 1 == len(rollout.spec.stages):
            _move(rollout, _P.COMPLETED, now_s, "complete", f"{done}: completed")
            return
        _move(rollout, _P.RUNNING, now_s, "advance", f"{done}: stage {rollout.stage + 2} starts")
        rollout.stage += 1
        rollout.stage_started_s = now_s

    def _roll_back(self, rollout: Rollout, now_s: float, reason: str) -> list[Action]:
        _move(rollout, _P.ROLLING_BACK, now_s, "rollback", f"rolling back: {reason}")
        rollout.resume_phase = None
        rollout.bake_started_s = None
        actions: list[Action] = []
        for device_id, progress in sorted(rollout.devices.items()):
            progress.step = DeviceStep.REVERTING
            actions.append(Revert(device_id, rollout.spec.model, progress.previous_version))
        return actions


def _selected(rollout: Rollout, fleet: Mapping[str, DeviceView]) -> list[str]:
    return [d for d, view in fleet.items() if rollout.spec.selects(view.labels)]


def _online(fleet: Mapping[str, DeviceView], device_id: str) -> bool:
    view = fleet.get(device_id)
    return view is not None and view.online


def _settled(rollout: Rollout, fleet: Mapping[str, DeviceView]) -> bool:
    return not any(
        p.step is DeviceStep.ASSIGNED and _online(fleet, d) for d, p in rollout.devices.items()
    )


def _overlap(other: Rollout, spec: RolloutSpec, fleet: Mapping[str, DeviceView]) -> str | None:
    """A device both could reach (``""`` when only a future one could); ``None``: disjoint."""
    both = [
        d
        for d, view in fleet.items()
        if spec.selects(view.labels) and (other.spec.selects(view.labels) or d in other.devices)
    ]
    if both:
        return min(both)
    mine, theirs = spec.selector, other.spec.selector
    compatible = all(theirs.get(key, value) == value for key, value in mine.items())
    return "" if compatible else None


def _fail(rollout: Rollout, device_id: str, now_s: float, reason: str) -> None:
    progress = rollout.devices[device_id]
    progress.step, progress.reason = DeviceStep.FAILED, reason
    _log(rollout, now_s, f"{device_id} failed: {reason}")


def _log(rollout: Rollout, now_s: float, text: str) -> None:
    rollout.history.append((now_s, text))


def _refuse(rollout: Rollout, verb: str, to: RolloutPhase) -> None:
    allowed = [p for p in RolloutPhase if to in TRANSITIONS[p]]
    if verb == "resume":
        allowed = [_P.PAUSED]
    listed = " or ".join([", ".join(allowed[:-1]), allowed[-1]] if len(allowed) > 1 else allowed)
    raise ConflictError(
        f"cannot {verb} rollout {rollout.id}: it is {rollout.phase}; {verb} applies while it "
        f"is {listed}"
    )


def _move(rollout: Rollout, to: RolloutPhase, now_s: float, verb: str, reason: str) -> None:
    if to not in TRANSITIONS[rollout.phase]:
        _refuse(rollout, verb, to)
    rollout.phase, rollout.reason = to, reason
    _log(rollout, now_s, f"{to}: {reason}")
