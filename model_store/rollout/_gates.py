"""Health gates judged on one device's report, against fixed thresholds and the old version.

Absolute gates: ``error_rate<X`` fails at a rate of X or more, ``p99_ms<X`` at X ms or more.
Both need ``min_requests`` requests on the version before they judge it: one error in two
requests, or the p99 of an idle model, says nothing. (``install`` and ``selftest`` are judged
from the device's reports as they arrive, in :mod:`.core`.)

Canary gates (``canary=True``) also compare the device with the baseline: the selected, online
devices that the rollout has not touched and that still serve another version of the model.
Their error rate is pooled (errors / requests over all of them) and their p99 is the median of
theirs. A device fails when its error rate is above ``max(2 x baseline, baseline + 0.005)``
(the slack keeps a near-zero baseline from failing on noise), or its p99 is above 1.5 x the
baseline. Each canary check runs only for a metric that has an absolute gate, so an operator
who named no latency gate is not stopped by latency. Without a baseline (the last stage reaches
every device) only the absolute gates apply.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model_store.rollout.spec import GateKind, RolloutSpec

if TYPE_CHECKING:
    from model_store.rollout._state import DeviceView

__all__ = ["Baseline", "GatePolicy", "baseline", "judge"]


@dataclass(frozen=True)
class GatePolicy:
    """How strictly reports are judged."""

    min_requests: int = 20
    canary_error_factor: float = 2.0
    canary_error_slack: float = 0.005
    canary_p99_factor: float = 1.5


@dataclass(frozen=True)
class Baseline:
    """How the devices still on the old version behave (``None``: too little to compare)."""

    error_rate: float | None
    p99_ms: float | None
    devices: int


def baseline(
    spec: RolloutSpec,
    fleet: Mapping[str, DeviceView],
    touched: Collection[str],
    policy: GatePolicy,
) -> Baseline:
    """The pooled health of the untouched devices serving another version of the model."""
    requests = errors = devices = 0
    p99s: list[float] = []
    for device_id, view in fleet.items():
        version = view.active.get(spec.model)
        if (
            device_id in touched
            or not view.online
            or version is None
            or version == spec.version
            or not spec.selects(view.labels)
        ):
            continue
        devices += 1
        key = (spec.model, version)
        served = view.requests.get(key, 0)
        requests += served
        errors += view.errors.get(key, 0)
        if key in view.p99_ms and served >= policy.min_requests:
            p99s.append(view.p99_ms[key])
    return Baseline(
        error_rate=errors / requests if requests >= policy.min_requests else None,
        p99_ms=statistics.median(p99s) if p99s else None,
        devices=devices,
    )


def judge(spec: RolloutSpec, view: DeviceView, base: Baseline | None, policy: GatePolicy) -> str:
    """Why the device fails the metric gates on the new version, or ``""`` when it passes."""
    return _error_rate(spec, view, base, policy) or _latency(spec, view, base, policy)


def _error_rate(
    spec: RolloutSpec, view: DeviceView, base: Baseline | None, policy: GatePolicy
) -> str:
    gate = spec.gate(GateKind.ERROR_RATE)
    key = (spec.model, spec.version)
    requests = view.requests.get(key, 0)
    if gate is None or gate.threshold is None or requests < max(policy.min_requests, 1):
        return ""
    rate = view.errors.get(key, 0) / requests
    if rate >= gate.threshold:
        return f"error rate {rate:.4g} over {requests} requests is not below {gate.threshold:g}"
    if base is not None and base.error_rate is not None:
        old = base.error_rate
        limit = max(policy.canary_error_factor * old, old + policy.canary_error_slack)
        if rate > limit:
            return (
                f"error rate {rate:.4g} is above {limit:.4g}, the canary limit for an error rate "
                f"of {old:.4g} on the {base.devices} devices still on the old version"
            )
    return ""


def _latency(spec: RolloutSpec, view: DeviceView, base: Baseline | None, policy: GatePolicy) -> str:
    gate = spec.gate(GateKind.P99_MS)
    key = (spec.model, spec.version)
    p99 = view.p99_ms.get(key)
    if gate is None or gate.threshold is None or p99 is None:
        return ""
    if view.requests.get(key, 0) < max(policy.min_requests, 1):
        return ""
    if p99 >= gate.threshold:
        return f"p99 latency {p99:g} ms is not below {gate.threshold:g} ms"
    if base is not None and base.p99_ms is not None:
        limit = policy.canary_p99_factor * base.p99_ms
        if p99 > limit:
            return (
                f"p99 latency {p99:g} ms is above {limit:g} ms, {policy.canary_p99_factor:g}x "
                f"the {base.p99_ms:g} ms of the {base.devices} devices still on the old version"
            )
    return ""
