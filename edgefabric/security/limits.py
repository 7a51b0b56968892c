"""Per-tenant admission: a token bucket for the rate and a quota of calls in progress.

Sans-I/O: every method takes ``now_s`` from the caller's monotonic clock, so the logic is
tested without sleeps. One tenant's refusals cost it a dictionary lookup and some arithmetic,
and never touch another tenant's bucket or quota.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgefabric.errors import OverloadedError

__all__ = ["TenantLimiter", "TenantLimits", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """One tenant's allowance. ``rate_per_s`` 0: no rate limit; ``max_concurrent`` 0: no quota.

    ``burst``: requests the bucket holds when full (at least 1 when a rate is set).
    """

    rate_per_s: float = 0.0
    burst: int = 0
    max_concurrent: int = 0

    def __post_init__(self) -> None:
        if self.rate_per_s < 0 or self.burst < 0 or self.max_concurrent < 0:
            raise ValueError(
                f"tenant limits must not be negative, got rate_per_s={self.rate_per_s}, "
                f"burst={self.burst}, max_concurrent={self.max_concurrent}"
            )

    @property
    def unlimited(self) -> bool:
        """Neither a rate nor a concurrency limit."""
        return self.rate_per_s == 0 and self.max_concurrent == 0


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``capacity`` stored; starts full."""

    def __init__(self, rate_per_s: float, capacity: float, now_s: float) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError(
                f"a token bucket needs a positive rate and a capacity of at least 1, "
                f"got rate {rate_per_s}/s and capacity {capacity}"
            )
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._tokens = capacity
        self._at_s = now_s

    def take(self, now_s: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is there."""
        elapsed = max(0.0, now_s - self._at_s)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
        self._at_s = max(self._at_s, now_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


def _bucket(limits: TenantLimits, now_s: float) -> TokenBucket | None:
    if limits.rate_per_s == 0:
        return None
    return TokenBucket(limits.rate_per_s, max(1, limits.burst), now_s)


@dataclass(slots=True)
class _Tenant:
    limits: TenantLimits
    bucket: TokenBucket | None
    in_flight: int = 0
    hold_ewma_s: float = 0.0
    started: dict[int, float] = field(default_factory=dict)


class TenantLimiter:
    """Admission for every tenant; ``limits_for`` gives each tenant's :class:`TenantLimits`.

    :meth:`acquire` returns a lease id to hand back to :meth:`release`, or raises
    :class:`OverloadedError` whose ``retry_after_ms`` says when trying again can succeed: the
    time to the next token, or the expected time until one of the tenant's calls ends.
    """

    _EWMA_WEIGHT = 0.2

    def __init__(self, limits_for: dict[str, TenantLimits], default: TenantLimits) -> None:
        self._limits_for = dict(limits_for)
        self._default = default
        self._tenants: dict[str, _Tenant] = {}
        self._next_lease = 0

    def configure(
        self, limits_for: dict[str, TenantLimits], default: TenantLimits, now_s: float
    ) -> None:
        """Apply new limits (a reloaded token store); calls in progress stay counted."""
        self._limits_for, self._default = dict(limits_for), default
        for name, state in self._tenants.items():
            limits = self.limits(name)
            if limits != state.limits:
                state.limits, state.bucket = limits, _bucket(limits, now_s)

    def limits(self, tenant: str) -> TenantLimits:
        """The limits that apply to ``tenant``."""
        return self._limits_for.get(tenant, self._default)

    def in_flight(self, tenant: str) -> int:
        """Calls of ``tenant`` in progress."""
        state = self._tenants.get(tenant)
        return 0 if state is None else state.in_flight

    def _state(self, tenant: str, now_s: float) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            limits = self.limits(tenant)
            state = self._tenants[tenant] = _Tenant(limits, _bucket(limits, now_s))
        return state

    def acquire(self, tenant: str, now_s: float) -> int:
        """Admit one call of ``tenant`` now, or raise :class:`OverloadedError`."""
        lease = self.try_acquire(tenant, now_s)
        if isinstance(lease, OverloadedError):
            raise lease
        return lease

    def try_acquire(self, tenant: str, now_s: float) -> int | OverloadedError:
        """:meth:`acquire` without raising: the lease, or the (unraised) refusal, so a hot
        path can answer a refused call without exception handling."""
        state = self._state(tenant, now_s)
        limits = state.limits
        if limits.max_concurrent and state.in_flight >= limits.max_concurrent:
            expected_s = state.hold_ewma_s / limits.max_concurrent
            retry_ms = max(1, math.ceil(expected_s * 1e3))
            return OverloadedError(
                f"tenant {tenant!r} has {state.in_flight} requests in progress, its quota is "
                f"{limits.max_concurrent}; retry after {retry_ms} ms",
                retry_after_ms=retry_ms,
            )
        if state.bucket is not None:
            wait_s = state.bucket.take(now_s)
            if wait_s > 0:
                retry_ms = max(1, math.ceil(wait_s * 1e3))
                return OverloadedError(
                    f"tenant {tenant!r} is over its rate limit of {limits.rate_per_s:g} "
                    f"requests/s (burst {max(1, limits.burst)}); retry after {retry_ms} ms",
                    retry_after_ms=retry_ms,
                )
        self._next_lease += 1
        state.in_flight += 1
        state.started[self._next_lease] = now_s
        return self._next_lease

    def release(self, tenant: str, lease: int, now_s: float) -> None:
        """End the call admitted as ``lease``."""
        state = self._tenants.get(tenant)
        if state is None or lease not in state.started:
            raise ValueError(f"lease {lease} of tenant {tenant!r} is not held")
        held_s = max(0.0, now_s - state.started.pop(lease))
        state.in_flight -= 1
        weight = self._EWMA_WEIGHT
        state.hold_ewma_s = (
            held_s if state.hold_ewma_s == 0 else (1 - weight) * state.hold_ewma_s + weight * held_s
        )
