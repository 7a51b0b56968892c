"""The dashboard's JSON documents, built from the store's own objects (pure functions).

Every value a device reported travels as JSON data; the page sets it as text, never as markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from edgefabric.errors import InvalidInputError
from model_store.audit import AuditEntry
from model_store.dashboard.history import DeviceHealth, Series, TimelineEvent
from model_store.fleet_records import DeviceRow
from model_store.registry import ModelVersion
from model_store.rollout import DeviceStep, Rollout, RolloutPhase, cohorts

__all__ = [
    "audit_events",
    "device_json",
    "model_json",
    "parse_positive",
    "rollout_events",
    "rollout_json",
    "series_json",
]

_REVERTED = (DeviceStep.REVERTING, DeviceStep.ROLLED_BACK)
_FAILED_PHASES = frozenset({RolloutPhase.ROLLING_BACK, RolloutPhase.ROLLED_BACK})
_WARNING_PHASES = frozenset({RolloutPhase.PAUSED, RolloutPhase.ABORTED})


def parse_positive(name: str, text: str | None, *, default: float, maximum: float) -> float:
    """A query parameter that must be a number in (0, maximum]; InvalidInputError if not."""
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= maximum:  # also refuses nan and inf
        raise InvalidInputError(
            f"query parameter {name}={text!r}: expected a number of seconds or items in "
            f"(0, {maximum:g}], e.g. {name}={default:g}"
        )
    return value


def device_json(row: DeviceRow, health: DeviceHealth | None) -> dict[str, object]:
    """One device for ``/api/devices``: online state, versions per model and per slot."""
    return {
        "id": row.device_id,
        "online": row.online,
        "last_seen_s": row.last_seen_s or None,
        "labels": dict(sorted(row.labels.items())),
        "agent_version": row.agent_version,
        "reconciled_sequence": row.reconciled_sequence,
        "last_event": row.last_event,
        "missed_events": row.missed_events,
        "models": [
            {
                "model": m.model,
                "active": m.active,
                "previous": m.previous,
                "failed": list(m.failed),
                "requests": m.requests,
                "errors": m.errors,
                "error_rate": m.error_rate,
                "p99_ms": m.p99_ms,
                "self_test": m.self_test,
            }
            for m in row.models
        ],
        "slots": [dict(slot) for slot in health.slots] if health else [],
        "execution_provider": health.execution_provider if health else None,
        "cpu_percent": health.cpu_percent if health else None,
        "rss_bytes": health.rss_bytes if health else None,
        "outbox_pending": health.outbox_pending if health else None,
        "health_received_s": health.received_s if health else None,
    }


def rollout_json(
    rollout: Rollout, selected: Sequence[str], *, history: int = 8
) -> dict[str, object]:
    """One rollout for ``/api/rollouts``: phase, and per stage its planned and reached devices.

    ``selected``: the known devices the rollout's selector matches now (cohort sizes are
    counted on the fleet as it is, as the engine does).
    """
    spec = rollout.spec
    reached = cohorts(rollout.id, selected, spec.stages)
    stages = []
    before = 0
    for index, fraction in enumerate(spec.stages):
        devices = [p for p in rollout.devices.values() if p.stage == index]
        planned = len(reached[index]) - before
        before = len(reached[index])
        stages.append(
            {
                "stage": index + 1,
                "fraction": fraction,
                "planned": max(planned, len(devices)),
                "assigned": len(devices),
                "installed": sum(p.step is DeviceStep.INSTALLED for p in devices),
                "failed": sum(p.step is DeviceStep.FAILED for p in devices),
                "reverted": sum(p.step in _REVERTED for p in devices),
                "state": (
                    "done" if index < rollout.stage else "current" if index == rollout.stage
                    else "pending"
                ),
            }
        )  # fmt: skip
    return {
        "id": rollout.id,
        "model": spec.model,
        "version": spec.version,
        "target": spec.ref,
        "phase": rollout.phase.value,
        "active": rollout.active,
        "stage": rollout.stage + 1,
        "stages": stages,
        "selector": dict(sorted(spec.selector.items())),
        "selected": len(selected),
        "gates": [str(gate) for gate in spec.gates],
        "bake_s": spec.bake_s,
        "reason": rollout.reason,
        "created_s": rollout.created_s,
        "devices": {step.value: count for step, count in rollout.counts().items()},
        "history": [{"at_s": at, "text": text} for at, text in rollout.history[-history:]],
    }


def rollout_events(rollouts: Iterable[Rollout]) -> list[TimelineEvent]:
    """Every rollout's history as timeline events."""
    events = []
    for rollout in rollouts:
        level = (
            "error"
            if rollout.phase in _FAILED_PHASES
            else "warning"
            if rollout.phase in _WARNING_PHASES
            else "info"
        )
        last = len(rollout.history) - 1
        for index, (at, text) in enumerate(rollout.history):
            events.append(
                TimelineEvent(
                    at,
                    "rollout",
                    rollout.phase.value if index == last else "PROGRESS",
                    rollout.id,
                    f"{rollout.spec.ref}: {text}",
                    level if index == last else "info",
                )
            )
    return events


def audit_events(entries: Iterable[AuditEntry]) -> list[TimelineEvent]:
    """Audit log entries as timeline events (entries with an unreadable time are skipped)."""
    events = []
    for entry in entries:
        try:
            at = datetime.fromisoformat(entry.at).timestamp()
        except (TypeError, ValueError):
            continue
        text = f"{entry.action} {entry.subject} by {entry.actor}"
        events.append(TimelineEvent(at, "audit", entry.action, entry.subject, text))
    return events


def model_json(version: ModelVersion, serving: Mapping[tuple[str, int], int]) -> dict[str, object]:
    """One registry version for ``/api/models``, with how many devices serve it now."""
    return {
        "name": version.name,
        "version": version.version,
        "ref": version.ref,
        "stage": version.stage.value,
        "sha256": version.sha256,
        "size": version.size,
        "created_at": version.created_at,
        "created_by": version.created_by,
        "labels": dict(sorted(version.labels.items())),
        "golden": version.golden is not None,
        "serving_devices": serving.get((version.name, version.version), 0),
    }


def series_json(series: Series) -> dict[str, object]:
    """One chart's data for ``/api/metrics``."""
    return {
        "model": series.model,
        "pool": series.pool,
        "gateway": series.gateway or None,  # None: reported by edge devices
        "points": [
            {
                "t_s": p.t_s,
                "requests": p.requests,
                "errors": p.errors,
                "p50_ms": p.p50_ms,
                "p99_ms": p.p99_ms,
            }
            for p in series.points
        ],
    }
